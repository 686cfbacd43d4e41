//! Backpressure (`record --backpressure`): the kernel pauses a traced process (SIGSTOP) when
//! the ring buffer is half full and lists it in `PAUSED`; the agent continues every listed
//! process once it has drained the ring. The kernel's signal is delivered a little later (an
//! irq_work), so a listed process is continued only once all its threads are stopped: a
//! SIGCONT that overtook its SIGSTOP would leave the process stopped for good. When `Pauses`
//! is dropped (the recording ends, or fails), it first tells the kernel to pause no more (key
//! 0 in the map), then continues everything listed: no path leaves a process stopped.

use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use nix::{sys::signal, unistd::Pid};

pub struct Pauses {
    map: BpfHashMap<MapData, u32, u32>,
}

/// The key that tells the kernel to pause no more processes.
const NO_MORE_PAUSES: u32 = 0;

impl Pauses {
    pub(super) fn new(map: BpfHashMap<MapData, u32, u32>) -> Pauses {
        Pauses { map }
    }

    /// Continues every listed process whose threads have all stopped (or that is gone); the
    /// others stay listed for the next call. Returns how many are still listed.
    pub fn resume_stopped(&mut self) -> usize {
        let listed: Vec<u32> = self.map.keys().filter_map(Result::ok).filter(|&tgid| tgid != NO_MORE_PAUSES).collect();
        let mut waiting = 0;
        for tgid in listed {
            if !all_threads_stopped(tgid) {
                waiting += 1;
                continue;
            }
            let _ = self.map.remove(&tgid);
            let _ = signal::kill(Pid::from_raw(tgid as i32), signal::Signal::SIGCONT);
        }
        waiting
    }
}

impl Drop for Pauses {
    fn drop(&mut self) {
        let _ = self.map.insert(NO_MORE_PAUSES, 1, 0);
        // Signals already on their way arrive within microseconds; a thread stuck in the
        // kernel (disk wait) may take longer: wait a while, then continue what is left anyway.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            std::thread::sleep(Duration::from_millis(5));
            if self.resume_stopped() == 0 || Instant::now() > deadline {
                break;
            }
        }
        for tgid in self.map.keys().filter_map(Result::ok).filter(|&tgid| tgid != NO_MORE_PAUSES) {
            let _ = signal::kill(Pid::from_raw(tgid as i32), signal::Signal::SIGCONT);
        }
    }
}

/// Whether every thread of the process is stopped, a zombie, or gone (`/proc/PID/task/*/stat`).
fn all_threads_stopped(tgid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else { return true };
    tasks.flatten().all(|task| {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { return true };
        // The state follows the command name, which is in parentheses and may hold any byte.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, None | Some("T" | "t" | "Z" | "X" | "x"))
    })
}
