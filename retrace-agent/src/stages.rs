//! Where a recording's pipeline spends its time, stage by stage: each stage's CPU and how long
//! it waited for the next stage to take its work (a full channel, no free file buffer, the
//! seal pool), so one run shows which stage is the limit on a given machine. Printed at the
//! end of `retrace record` with `RETRACE_PIPELINE_STATS=1`; counted always (a clock read per
//! batch, buffer or thread, not per record). Process-wide: the node agent's recordings add up.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

/// One stage: CPU nanoseconds spent in it, nanoseconds it waited on the next one.
pub struct Stage {
    cpu_ns: AtomicU64,
    waited_ns: AtomicU64,
}

impl Stage {
    const fn new() -> Stage {
        Stage { cpu_ns: AtomicU64::new(0), waited_ns: AtomicU64::new(0) }
    }

    /// Adds the calling thread's CPU since `since` (a `thread_cpu_ns` reading).
    pub fn add_cpu_since(&self, since: u64) {
        self.cpu_ns.fetch_add(thread_cpu_ns().saturating_sub(since), Relaxed);
    }

    /// Runs `f` (a hand-off that may block) and counts its wall time as waiting.
    pub fn waiting<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.waited_ns.fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
        out
    }

    /// Counts `ns` of CPU measured by the caller.
    pub fn add_cpu_ns(&self, ns: u64) {
        self.cpu_ns.fetch_add(ns, Relaxed);
    }

    /// Counts `ns` of waiting measured by the caller.
    pub fn add_waited(&self, ns: u64) {
        self.waited_ns.fetch_add(ns, Relaxed);
    }

    fn seconds(&self) -> (f64, f64) {
        (self.cpu_ns.load(Relaxed) as f64 / 1e9, self.waited_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// The ring consumer: decoding records into batches; waits on the streams stage.
pub static CONSUMER: Stage = Stage::new();
/// Stream rebuilding (and redaction, when one thread does both); waits on the next stage.
pub static STREAMS: Stage = Stage::new();
/// Redaction on a thread of its own (`--seal-threads` above 0); waits on the writer.
pub static REDACTION: Stage = Stage::new();
/// Framing and encryption into file buffers; waits for a free buffer and the seal pool.
pub static WRITER: Stage = Stage::new();
/// Writing full buffers to the file, and fsync at each segment's seal.
pub static DISK: Stage = Stage::new();
/// BLAKE3 of what was written (with a seal pool, the pool threads' share is theirs).
pub static HASH: Stage = Stage::new();
/// All the seal pool's threads did: sealing age chunks, their share of hashing (BLAKE3's
/// tree) and of writing buffers. Counted when the recording finishes.
pub static SEAL_POOL: Stage = Stage::new();

/// The calling thread's CPU time so far, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Counts the calling thread's whole CPU time into `stage` when dropped (at the thread's end).
pub struct ThreadCpu(&'static Stage);

impl ThreadCpu {
    pub fn new(stage: &'static Stage) -> ThreadCpu {
        ThreadCpu(stage)
    }
}

impl Drop for ThreadCpu {
    fn drop(&mut self) {
        self.0.add_cpu_since(0);
    }
}

/// One line: each stage's CPU and waiting, in seconds.
pub fn report() -> String {
    let stages = [
        ("consumer", &CONSUMER),
        ("streams", &STREAMS),
        ("redaction", &REDACTION),
        ("writer", &WRITER),
        ("disk", &DISK),
        ("hash", &HASH),
        ("seal pool", &SEAL_POOL),
    ];
    let parts: Vec<String> = stages
        .iter()
        .map(|(name, stage)| {
            let (cpu, waited) = stage.seconds();
            format!("{name} {cpu:.3}/{waited:.3}")
        })
        .collect();
    format!("pipeline stages, CPU s/waited on the next s: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_counts_its_waiting_and_its_thread_cpu() {
        static STAGE: Stage = Stage::new();
        STAGE.waiting(|| std::thread::sleep(std::time::Duration::from_millis(20)));
        std::thread::spawn(|| {
            let _cpu = ThreadCpu::new(&STAGE);
            // Until the thread has had 30 ms of CPU, however busy the machine (a loaded CI
            // machine gave a 30 ms wall-clock spin 15 ms of CPU).
            let start = thread_cpu_ns();
            while thread_cpu_ns() - start < 30_000_000 {
                std::hint::black_box(0u64);
            }
        })
        .join()
        .unwrap();
        let (cpu, waited) = STAGE.seconds();
        assert!(waited >= 0.02, "waited {waited}");
        assert!((0.03..1.0).contains(&cpu), "cpu {cpu}");
    }
}
