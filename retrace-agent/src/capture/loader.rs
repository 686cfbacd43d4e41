//! Loads the eBPF object, sizes the ring buffer, sets the run-time knobs and attaches every
//! program. Owns the kernel objects: dropping it detaches everything.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId, uprobe::UProbeScope, RawTracePoint,
        TracePoint, UProbe,
    },
    Btf, Ebpf, EbpfLoader,
};
use retrace_common::{
    config::{stat, TRACED_WORDS},
    FdKey, PendingLoss,
};

use super::CaptureError;

static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/retrace"));

/// Knobs of the kernel side.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// Per-syscall payload cap; `None` captures everything.
    pub max_payload: Option<u64>,
    /// Pause traced processes while the ring buffer is half full instead of dropping payload.
    pub backpressure: bool,
    /// Stop each traced process at exec until its program has been looked at for uprobes
    /// (`Watch` drained, `release_held`), so that its first TLS and random calls are seen.
    pub hold_execs: bool,
    /// With `hold_execs`: hold every exec and patch the new image's vDSO (`vdso::patch`), so
    /// that the program's wall-clock reads (and the vDSO's getrandom) are system calls the
    /// probes record, for replay to return the same times.
    pub record_clock: bool,
}

/// The loaded and attached programs.
pub struct Probes {
    ebpf: Ebpf,
    /// The tail-call table; kept so it lives as long as the programs.
    _exits: ProgramArray<MapData>,
    links: Vec<Link>,
    traced: TracedBits,
    /// Files looked at for TLS and random functions.
    probed_files: super::tls::Seen,
    /// Programs looked at, by the kernel's key (`LOOKED_AT`): their execs are not held.
    looked_at: BpfHashMap<MapData, u64, u8>,
    /// The kernel's list of paused processes (`PAUSED`), shared with `Pauses`: the agent's
    /// own handle, to continue processes held at exec.
    paused: BpfHashMap<MapData, u32, u32>,
    /// Patch each held image's vDSO before continuing it (`ProbeConfig::record_clock`).
    patch_clock: bool,
}

/// The kernel's `TRACED` bitmap (one bit per process id), mapped into the agent so it sets
/// bits with the same atomic or as the kernel's fork hook, which may be changing another bit
/// of the same word at that moment (a map update would write the whole word back).
struct TracedBits {
    words: NonNull<AtomicU64>,
}

// SAFETY: the mapping is shared memory used only through atomics.
unsafe impl Send for TracedBits {}
unsafe impl Sync for TracedBits {}

const TRACED_BYTES: usize = TRACED_WORDS as usize * 8;

impl TracedBits {
    fn map(ebpf: &Ebpf) -> Result<TracedBits, CaptureError> {
        let Some(Map::Array(data)) = ebpf.map("TRACED") else { panic!("the eBPF object's TRACED is an array map") };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: maps the array's pages (it was created BPF_F_MMAPABLE); unmapped on drop.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), TRACED_BYTES, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(CaptureError::Io { source: std::io::Error::last_os_error() });
        }
        Ok(TracedBits { words: NonNull::new(ptr.cast()).expect("mmap succeeded") })
    }

    fn set(&self, tgid: u32) {
        let index = (tgid >> 6) as usize;
        if index < TRACED_WORDS as usize {
            // SAFETY: in bounds of the mapping, which lives as long as self.
            let word = unsafe { &*self.words.as_ptr().add(index) };
            word.fetch_or(1 << (tgid & 63), Ordering::Relaxed);
        }
    }

    fn clear(&self, tgid: u32) {
        let index = (tgid >> 6) as usize;
        if index < TRACED_WORDS as usize {
            // SAFETY: as in `set`.
            let word = unsafe { &*self.words.as_ptr().add(index) };
            word.fetch_and(!(1 << (tgid & 63)), Ordering::Relaxed);
        }
    }
}

impl Drop for TracedBits {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unused after this.
        unsafe { libc::munmap(self.words.as_ptr().cast(), TRACED_BYTES) };
    }
}

enum Link {
    Raw(&'static str, RawTracePointLinkId),
    TracePoint(&'static str, TracePointLinkId),
    UProbe(&'static str, aya::programs::uprobe::UProbeLinkId),
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
    /// Times a traced process was paused by backpressure.
    pub pauses: u64,
    /// Program runs the kernel skipped because the program was already running on that CPU
    /// (`recursion_misses`): events that never reached the ring buffer.
    pub program_misses: u64,
}

/// Classic tracepoints: their record formats carry pids, clone flags and addresses directly.
const TRACEPOINTS: [(&str, &str); 5] = [
    ("task", "task_newtask"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("sock", "inet_sock_set_state"),
    ("syscalls", "sys_enter_exit_group"),
];

/// Raw tracepoints: the syscall dispatcher and the hooks on every socket call.
const RAW_TRACEPOINTS: [&str; 3] = ["sys_exit", "sock_send_length", "sock_recv_length"];

impl Probes {
    pub fn load(config: &ProbeConfig) -> Result<Probes, CaptureError> {
        raise_memlock();
        let btf = Btf::from_sys_fs().map_err(|source| CaptureError::NoBtf { source })?;
        let max_payload = config.max_payload.unwrap_or(0);
        let ring_size = u64::from(config.ring_buffer_bytes);
        let backpressure = u64::from(config.backpressure);
        let hold_execs = u64::from(config.hold_execs);
        let patch_clock = config.hold_execs && config.record_clock;
        let hold_every_exec = u64::from(patch_clock);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .override_global("MAX_PAYLOAD", &max_payload, true)
            .override_global("RING_SIZE", &ring_size, true)
            .override_global("BACKPRESSURE", &backpressure, true)
            .override_global("HOLD_EXECS", &hold_execs, true)
            .override_global("HOLD_EVERY_EXEC", &hold_every_exec, true)
            .load(PROGRAM)
            .map_err(|source| CaptureError::Load { source: Box::new(source) })?;
        let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();

        // Per-syscall programs: loaded, then registered as tail-call targets of `sys_exit`.
        let mut exits = ProgramArray::try_from(ebpf.take_map("SYSCALL_EXITS").expect("SYSCALL_EXITS map"))
            .map_err(CaptureError::map)?;
        for name in names.iter().filter(|n| n.starts_with("sys_exit_")) {
            let syscall = name.trim_start_matches("sys_exit_");
            let nr = syscall_nr(syscall).ok_or_else(|| CaptureError::UnknownSyscall { name: syscall.to_owned() })?;
            let program = raw_program(&mut ebpf, name)?;
            program.load().map_err(attach_err(name))?;
            let fd = program.fd().map_err(attach_err(name))?;
            exits.set(nr, fd, 0).map_err(CaptureError::map)?;
        }

        let mut links = Vec::new();
        for name in RAW_TRACEPOINTS {
            let program = raw_program(&mut ebpf, name)?;
            program.load().map_err(attach_err(name))?;
            links.push(Link::Raw(name, program.attach(name).map_err(attach_err(name))?));
        }
        for (category, name) in TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| CaptureError::MissingProgram { name: name.to_owned() })?
                .try_into()
                .map_err(attach_err(name))?;
            program.load().map_err(attach_err(name))?;
            links.push(Link::TracePoint(name, program.attach(category, name).map_err(attach_err(name))?));
        }
        for name in super::tls::programs() {
            uprobe_program(&mut ebpf, name)?.load().map_err(attach_err(name))?;
        }
        drop(btf);
        // Parsing the kernel's BTF took tens of MB that are not needed again.
        // SAFETY: malloc_trim only returns free heap memory to the kernel.
        unsafe { libc::malloc_trim(0) };
        let traced = TracedBits::map(&ebpf)?;
        let looked_at =
            BpfHashMap::try_from(ebpf.take_map("LOOKED_AT").expect("LOOKED_AT map")).map_err(CaptureError::map)?;
        let paused = {
            let Some(Map::HashMap(data)) = ebpf.map("PAUSED") else { panic!("the eBPF object's PAUSED is a hash map") };
            let id = data.info().map_err(CaptureError::map)?.id();
            let data = MapData::from_id(id).map_err(CaptureError::map)?;
            BpfHashMap::try_from(Map::HashMap(data)).map_err(CaptureError::map)?
        };
        let mut probes = Probes {
            ebpf,
            _exits: exits,
            links,
            traced,
            probed_files: Default::default(),
            looked_at,
            paused,
            patch_clock,
        };
        // Uprobes are set on the file (its inode): they fire in every process that maps it,
        // now or later, and the programs keep only traced ones.
        for library in system_libraries(&["libssl.so", "libgnutls.so", "libcrypto.so"]) {
            probes.attach_uprobes(&library);
        }
        Ok(probes)
    }

    /// Sets the uprobes on an ELF file (a library or a program) that defines TLS or OpenSSL
    /// random functions, once per file; returns how many functions were probed there. Best effort: a file that
    /// cannot be read or probed is skipped (logged).
    pub fn attach_uprobes(&mut self, path: &std::path::Path) -> usize {
        if !self.probed_files.first_look(path) {
            return 0;
        }
        let probes = super::tls::probe_points(path);
        let mut failed: Vec<&str> = Vec::new();
        for probe in &probes {
            let Ok(program) = uprobe_program(&mut self.ebpf, probe.program) else { continue };
            let attached = program.attach(probe.offset, path, UProbeScope::AllProcesses);
            match attached {
                Ok(id) => self.links.push(Link::UProbe(probe.program, id)),
                Err(e) => {
                    log::debug!("uprobe {} on {} in {}: {e}", probe.program, probe.function, path.display());
                    failed.push(probe.function);
                }
            }
        }
        let mut functions: Vec<&str> = probes.iter().map(|p| p.function).collect();
        functions.dedup();
        functions.retain(|f| !failed.contains(f));
        if !functions.is_empty() {
            log::debug!("uprobes on {} ({})", path.display(), functions.join(", "));
        }
        functions.len()
    }

    /// Whether the program (by its `LOOKED_AT` key) has been looked at for uprobes.
    pub fn looked_at(&self, program: u64) -> bool {
        self.looked_at.get(&program, 0).is_ok()
    }

    /// Continues a process the kernel held at exec, now that its program has been looked at
    /// (and its later execs of the same path are not held, unless each new image's vDSO is
    /// patched first). Its SIGSTOP was queued by the exec
    /// itself, in the task's context, before its record was sent: this SIGCONT cannot come
    /// first (a pending stop it finds is simply cancelled).
    pub fn release_held(&mut self, tgid: u32, program: u64) {
        let _ = self.looked_at.insert(program, 1, 0);
        if self.paused.get(&tgid, 0).ok() != Some(retrace_common::PAUSED_FOR_EXEC) {
            return; // continued already (the recording is ending)
        }
        if self.patch_clock {
            // Before its first instruction: the image's every clock read is a system call.
            if let Err(e) = crate::vdso::patch(tgid) {
                log::debug!("cannot patch the vDSO of pid {tgid}: {e}");
            }
        }
        let _ = self.paused.remove(&tgid);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tgid as i32), nix::sys::signal::Signal::SIGCONT);
    }

    /// Continues every process still held at exec (the recording is ending).
    fn release_all_held(&mut self) {
        let _ = self.paused.insert(0, 1, 0);
        let held: Vec<u32> = self
            .paused
            .iter()
            .filter_map(Result::ok)
            .filter(|&(tgid, why)| tgid != 0 && why == retrace_common::PAUSED_FOR_EXEC)
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in held {
            let _ = self.paused.remove(&tgid);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tgid as i32), nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// Plaintext lost with TLS records the ring had no room for, per session.
    pub fn tls_pending_loss(&self) -> Result<Vec<(retrace_common::TlsKey, PendingLoss)>, CaptureError> {
        let Some(map) = self.ebpf.map("TLS_PENDING") else { return Ok(Vec::new()) };
        let map: aya::maps::HashMap<_, retrace_common::TlsKey, PendingLoss> =
            aya::maps::HashMap::try_from(map).map_err(CaptureError::map)?;
        Ok(map.iter().flatten().collect())
    }

    /// Detaches every program. A perf-event tracepoint detach waits for an RCU grace period,
    /// so those links are dropped concurrently.
    pub fn detach(&mut self) {
        self.release_all_held();
        let mut owned = Vec::new();
        let mut uprobes = Vec::new();
        for link in self.links.drain(..) {
            match link {
                Link::Raw(name, id) => {
                    if let Ok(program) = raw_program(&mut self.ebpf, name) {
                        let _ = program.detach(id);
                    }
                }
                Link::TracePoint(name, id) => {
                    let Some(program) = self.ebpf.program_mut(name) else { continue };
                    let Ok(program) = <&mut TracePoint>::try_from(program) else { continue };
                    if let Ok(link) = program.take_link(id) {
                        owned.push(link);
                    }
                }
                Link::UProbe(name, id) => {
                    let Some(program) = self.ebpf.program_mut(name) else { continue };
                    let Ok(program) = <&mut UProbe>::try_from(program) else { continue };
                    if let Ok(link) = program.take_link(id) {
                        uprobes.push(link);
                    }
                }
            }
        }
        std::thread::scope(|scope| {
            for link in owned {
                scope.spawn(move || drop(link));
            }
            for link in uprobes {
                scope.spawn(move || drop(link));
            }
        });
    }

    /// Starts following a thread group (and, from now on, its children).
    pub fn trace(&mut self, tgid: u32) -> Result<(), CaptureError> {
        self.traced.set(tgid);
        Ok(())
    }

    /// Charges `tgid` (and, from now on, its children) to `capture`'s rate cap.
    pub fn charge_to(&mut self, tgid: u32, capture: u32) -> Result<(), CaptureError> {
        let mut map: BpfHashMap<&mut MapData, u32, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut("CAPTURE_OF").expect("CAPTURE_OF map"))
                .map_err(CaptureError::map)?;
        map.insert(tgid, capture, 0).map_err(CaptureError::map)
    }

    /// Caps `capture`'s payload at `bytes_per_second` (bursts up to `burst` bytes) in the
    /// kernel; `None` lifts the cap.
    pub fn set_rate(&mut self, capture: u32, cap: Option<(u64, u64)>) -> Result<(), CaptureError> {
        let mut rates: BpfHashMap<&mut MapData, u32, retrace_common::RateBucket> =
            BpfHashMap::try_from(self.ebpf.map_mut("RATES").expect("RATES map")).map_err(CaptureError::map)?;
        match cap {
            Some((rate, burst)) => {
                let now = crate::clock::monotonic_ns();
                let bucket = retrace_common::RateBucket { tokens: burst, last_ns: now, rate, burst };
                rates.insert(capture, bucket, 0).map_err(CaptureError::map)?;
                let mut any: aya::maps::Array<&mut MapData, u32> =
                    aya::maps::Array::try_from(self.ebpf.map_mut("RATES_ANY").expect("RATES_ANY map"))
                        .map_err(CaptureError::map)?;
                any.set(0, 1, 0).map_err(CaptureError::map)
            }
            None => {
                let _ = rates.remove(&capture);
                Ok(())
            }
        }
    }

    /// Stops following `tgid`.
    pub fn untrace(&mut self, tgid: u32) {
        self.traced.clear(tgid);
    }

    /// Records the cgroup (v2) `id` and every cgroup below it: a process that execs there joins,
    /// and its exec record carries `capture` (nonzero), which says which recording it joins.
    pub fn trace_cgroup(&mut self, id: u64, capture: u32) -> Result<(), CaptureError> {
        let mut cgroups: BpfHashMap<&mut MapData, u64, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut("CGROUPS").expect("CGROUPS map")).map_err(CaptureError::map)?;
        cgroups.insert(id, capture.max(1), 0).map_err(CaptureError::map)?;
        let mut any: aya::maps::Array<&mut MapData, u32> =
            aya::maps::Array::try_from(self.ebpf.map_mut("CGROUPS_ANY").expect("CGROUPS_ANY map"))
                .map_err(CaptureError::map)?;
        any.set(0, 1, 0).map_err(CaptureError::map)?;
        Ok(())
    }

    /// Stops recording the cgroup `id` (processes that joined through it stay followed until
    /// `untrace`).
    pub fn untrace_cgroup(&mut self, id: u64) -> Result<(), CaptureError> {
        let mut cgroups: BpfHashMap<&mut MapData, u64, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut("CGROUPS").expect("CGROUPS map")).map_err(CaptureError::map)?;
        let _ = cgroups.remove(&id);
        Ok(())
    }

    /// The list of processes paused by backpressure, moved out to the consumer.
    pub fn take_pauses(&mut self) -> Result<super::Pauses, CaptureError> {
        let map = self.ebpf.take_map("PAUSED").expect("PAUSED map");
        let Map::HashMap(data) = &map else { panic!("the eBPF object's PAUSED is a hash map") };
        let id = data.info().map_err(CaptureError::map)?.id();
        super::Pauses::new(BpfHashMap::try_from(map).map_err(CaptureError::map)?, id)
    }

    /// The ring buffer, moved out to the consumer.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self.ebpf.take_map("EVENTS").expect("EVENTS map");
        RingBuf::try_from(map).map_err(CaptureError::map)
    }

    pub fn stats(&self) -> Result<KernelStats, CaptureError> {
        let stats: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("STATS map")).map_err(CaptureError::map)?;
        let sum =
            |i: u32| -> Result<u64, CaptureError> { Ok(stats.get(&i, 0).map_err(CaptureError::map)?.iter().sum()) };
        Ok(KernelStats {
            chunks_dropped: sum(stat::CHUNKS_DROPPED)?,
            chunk_bytes_dropped: sum(stat::CHUNK_BYTES_DROPPED)?,
            records_dropped: sum(stat::RECORDS_DROPPED)?,
            task_records_dropped: sum(stat::TASK_RECORDS_DROPPED)?,
            fault_bytes: sum(stat::FAULT_BYTES)?,
            truncated_bytes: sum(stat::TRUNCATED_BYTES)?,
            captured_bytes: sum(stat::CAPTURED_BYTES)?,
            pauses: sum(stat::PAUSES)?,
            program_misses: self.program_misses(),
        })
    }

    /// Sum of `recursion_misses` over the attached programs (tail-called programs count on
    /// the dispatcher that runs them).
    fn program_misses(&self) -> u64 {
        let mut total = 0;
        for name in RAW_TRACEPOINTS.into_iter().chain(TRACEPOINTS.iter().map(|(_, n)| *n)) {
            let Some(program) = self.ebpf.program(name) else { continue };
            if let Ok(fd) = program.fd() {
                total += recursion_misses(std::os::fd::AsFd::as_fd(fd));
            }
        }
        total
    }

    /// Loss whose syscall records were dropped and that no later record has carried yet.
    pub fn pending_loss(&self) -> Result<Vec<(FdKey, PendingLoss)>, CaptureError> {
        let map: BpfHashMap<&MapData, FdKey, PendingLoss> =
            BpfHashMap::try_from(self.ebpf.map("PENDING_LOSS").expect("PENDING_LOSS map"))
                .map_err(CaptureError::map)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }
}

/// Folders where the system's shared libraries are.
const LIBRARY_DIRS: [&str; 6] =
    ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/usr/lib", "/usr/local/lib"];

/// The system's libraries whose file names start with one of `prefixes`, once each (by inode).
fn system_libraries(prefixes: &[&str]) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = std::collections::HashSet::new();
    let mut files = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !prefixes.iter().any(|p| name.to_string_lossy().starts_with(p)) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
            if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

fn attach_err(program: &str) -> impl Fn(aya::programs::ProgramError) -> CaptureError + '_ {
    move |source| CaptureError::Attach { program: program.to_owned(), source: Box::new(source) }
}

fn uprobe_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, CaptureError> {
    ebpf.program_mut(name)
        .ok_or_else(|| CaptureError::MissingProgram { name: name.to_owned() })?
        .try_into()
        .map_err(attach_err(name))
}

fn raw_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut RawTracePoint, CaptureError> {
    ebpf.program_mut(name)
        .ok_or_else(|| CaptureError::MissingProgram { name: name.to_owned() })?
        .try_into()
        .map_err(attach_err(name))
}

/// x86_64 syscall numbers of the syscalls that have a `sys_exit_*` program.
fn syscall_nr(name: &str) -> Option<u32> {
    Some(match name {
        "read" => 0,
        "write" => 1,
        "open" => 2,
        "close" => 3,
        "pread64" => 17,
        "pwrite64" => 18,
        "readv" => 19,
        "writev" => 20,
        "pipe" => 22,
        "dup" => 32,
        "dup2" => 33,
        "sendfile64" => 40,
        "socket" => 41,
        "connect" => 42,
        "accept" => 43,
        "sendto" => 44,
        "recvfrom" => 45,
        "sendmsg" => 46,
        "recvmsg" => 47,
        "shutdown" => 48,
        "bind" => 49,
        "listen" => 50,
        "socketpair" => 53,
        "fcntl" => 72,
        "lseek" => 8,
        "chdir" => 80,
        "fchdir" => 81,
        "creat" => 85,
        "openat" => 257,
        "splice" => 275,
        "accept4" => 288,
        "dup3" => 292,
        "pipe2" => 293,
        "preadv" => 295,
        "pwritev" => 296,
        "recvmmsg" => 299,
        "sendmmsg" => 307,
        "copy_file_range" => 326,
        "preadv2" => 327,
        "pwritev2" => 328,
        "close_range" => 436,
        "eventfd" => 284,
        "eventfd2" => 290,
        "memfd_create" => 319,
        "epoll_create" => 213,
        "epoll_create1" => 291,
        "timerfd_create" => 283,
        "signalfd" => 282,
        "signalfd4" => 289,
        "inotify_init" => 253,
        "inotify_init1" => 294,
        "pidfd_open" => 434,
        "openat2" => 437,
        "fstat" => 5,
        "newfstatat" => 262,
        "statx" => 332,
        "mkdir" => 83,
        "mkdirat" => 258,
        "rename" => 82,
        "renameat" => 264,
        "renameat2" => 316,
        "link" => 86,
        "linkat" => 265,
        "getrandom" => 318,
        "sysinfo" => 99,
        "setpgid" => 109,
        "clock_gettime" => 228,
        "gettimeofday" => 96,
        "time" => 201,
        "getdents64" => 217,
        _ => return None,
    })
}

/// `bpf_prog_info.recursion_misses` of a program (aya does not expose it).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    prog_info(fd).map(|i| i.recursion_misses).unwrap_or(0)
}

/// Per-program run counts and average nanoseconds (needs `sysctl kernel.bpf_stats_enabled=1`),
/// most expensive first: where a traced syscall's kernel time goes.
pub fn program_costs(probes: &Probes) -> Vec<(String, u64, u64)> {
    let mut costs: Vec<(String, u64, u64)> = probes
        .ebpf
        .programs()
        .filter_map(|(name, program)| {
            let info = prog_info(std::os::fd::AsFd::as_fd(program.fd().ok()?))?;
            (info.run_cnt > 0).then(|| (name.to_owned(), info.run_cnt, info.run_time_ns / info.run_cnt))
        })
        .collect();
    costs.sort_by_key(|(_, count, avg)| std::cmp::Reverse(count * avg));
    costs
}

fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<aya_obj::generated::bpf_prog_info> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: attr and info are valid for the call and sized as declared.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, std::mem::size_of::<InfoAttr>())
    };
    (rc == 0).then_some(info)
}

/// Older kernels charge BPF maps to RLIMIT_MEMLOCK; newer ones (and this one) use memcg. Failing
/// to raise it is only worth a debug line.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach();
    }
}
