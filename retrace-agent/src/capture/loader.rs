//! Loads the eBPF object, sizes the ring buffer, sets the run-time knobs and attaches every
//! program. Owns the kernel objects: dropping it detaches everything.

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Btf, Ebpf, EbpfLoader,
};
use retrace_common::{config::stat, FdKey, PendingLoss};

use super::CaptureError;

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/retrace"));

/// Knobs of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Per-syscall payload cap; `None` captures everything.
    pub max_payload: Option<u64>,
}

/// The loaded and attached programs.
pub struct Probes {
    ebpf: Ebpf,
}

/// Kernel counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct KernelStats {
    pub chunks_dropped: u64,
    pub chunk_bytes_dropped: u64,
    pub records_dropped: u64,
    pub task_records_dropped: u64,
    pub fault_bytes: u64,
    pub truncated_bytes: u64,
    pub captured_bytes: u64,
}

impl Probes {
    pub fn load(config: &ProbeConfig) -> Result<Probes, CaptureError> {
        raise_memlock();
        let btf = Btf::from_sys_fs().map_err(|source| CaptureError::NoBtf { source })?;
        let max_payload = config.max_payload.unwrap_or(0);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .override_global("MAX_PAYLOAD", &max_payload, true)
            .load(PROGRAM)
            .map_err(|source| CaptureError::Load { source: Box::new(source) })?;
        let mut names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
        names.sort();
        let exits: Vec<String> = names.iter().filter(|n| n.starts_with("sys_exit_")).cloned().collect();
        for name in &names {
            Self::attach_one(&mut ebpf, &exits, name)?;
        }
        Ok(Probes { ebpf })
    }

    fn attach_one(ebpf: &mut Ebpf, exits: &[String], name: &str) -> Result<(), CaptureError> {
        let attach_err =
            |e: aya::programs::ProgramError| CaptureError::Attach { program: name.to_owned(), source: Box::new(e) };
        let program: &mut TracePoint = ebpf
            .program_mut(name)
            .expect("program listed by name")
            .try_into()
            .map_err(attach_err)?;
        program.load().map_err(attach_err)?;
        if name == "sys_enter" {
            // The shared entry program: once for every syscall that has an exit program.
            for exit in exits {
                let syscall = exit.trim_start_matches("sys_exit_");
                program.attach("syscalls", &format!("sys_enter_{syscall}")).map_err(attach_err)?;
            }
            return Ok(());
        }
        let category = match name {
            n if n.starts_with("sys_") => "syscalls",
            n if n.starts_with("task_") => "task",
            n if n.starts_with("inet_sock_") => "sock",
            _ => "sched",
        };
        program.attach(category, name).map_err(attach_err)?;
        Ok(())
    }

    /// Starts following a thread group (and, from now on, its children).
    pub fn trace(&mut self, tgid: u32) -> Result<(), CaptureError> {
        let mut traced: BpfHashMap<&mut MapData, u32, u8> =
            BpfHashMap::try_from(self.ebpf.map_mut("TRACED").expect("TRACED map")).map_err(CaptureError::map)?;
        traced.insert(tgid, 1, 0).map_err(CaptureError::map)
    }

    /// The ring buffer, moved out to the consumer.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").expect("EVENTS map");
        RingBuf::try_from(map).map_err(CaptureError::map)
    }

    pub fn stats(&self) -> Result<KernelStats, CaptureError> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("STATS map")).map_err(CaptureError::map)?;
        let sum = |i: u32| -> Result<u64, CaptureError> {
            Ok(stats.get(&i, 0).map_err(CaptureError::map)?.iter().sum())
        };
        Ok(KernelStats {
            chunks_dropped: sum(stat::CHUNKS_DROPPED)?,
            chunk_bytes_dropped: sum(stat::CHUNK_BYTES_DROPPED)?,
            records_dropped: sum(stat::RECORDS_DROPPED)?,
            task_records_dropped: sum(stat::TASK_RECORDS_DROPPED)?,
            fault_bytes: sum(stat::FAULT_BYTES)?,
            truncated_bytes: sum(stat::TRUNCATED_BYTES)?,
            captured_bytes: sum(stat::CAPTURED_BYTES)?,
        })
    }

    /// Loss whose syscall records were dropped and that no later record has carried yet.
    pub fn pending_loss(&self) -> Result<Vec<(FdKey, PendingLoss)>, CaptureError> {
        let map: BpfHashMap<&MapData, FdKey, PendingLoss> =
            BpfHashMap::try_from(self.ebpf.map("PENDING_LOSS").expect("PENDING_LOSS map")).map_err(CaptureError::map)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }
}

/// Older kernels charge BPF maps to RLIMIT_MEMLOCK; newer ones (and this one) use memcg. Failing
/// to raise it is only worth a debug line.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
