//! Backpressure (`record --backpressure`): the kernel pauses a traced process (SIGSTOP) when
//! the ring buffer is half full, listing it in `PAUSED` first; the agent continues every
//! listed process once it has drained the ring. The kernel's signal is sent a little later (an
//! irq_work), so a listed process is continued only once all its threads are stopped: a
//! SIGCONT that overtook its SIGSTOP would leave the process stopped for good. When `Pauses`
//! is dropped (the recording ends, or fails), it first tells the kernel to pause no more (key
//! 0 in the map), then continues everything listed: no path leaves a process stopped. Not even
//! a SIGKILL of the agent (an OOM kill on a node): a guard process (`retrace resume-guard`,
//! started with the recording) holds the map too and does the same when the agent's end of
//! its stdin closes.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use nix::{sys::signal, unistd::Pid};

use super::CaptureError;

pub struct Pauses {
    map: BpfHashMap<MapData, u32, u32>,
    /// The guard process (none in the guard itself).
    guard: Option<Child>,
}

/// The key that tells the kernel to pause no more processes.
const NO_MORE_PAUSES: u32 = 0;

impl Pauses {
    /// Takes the kernel's list and starts the guard (`retrace resume-guard --map-id ID`, this
    /// same program), waiting until it holds the map.
    pub(super) fn new(map: BpfHashMap<MapData, u32, u32>, map_id: u32) -> Result<Pauses, CaptureError> {
        let io = |source| CaptureError::Guard { source };
        let mut guard = this_program()
            .map_err(io)?
            .args(["resume-guard", "--map-id", &map_id.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its own process group: a Ctrl-C for the recorder does not reach it.
            .process_group(0)
            .spawn()
            .map_err(io)?;
        let mut ready = String::new();
        BufReader::new(guard.stdout.take().expect("piped")).read_line(&mut ready).map_err(io)?;
        if ready.trim() != "ready" {
            let _ = guard.kill();
            let _ = guard.wait();
            return Err(io(std::io::Error::other("the backpressure resume guard did not start")));
        }
        Ok(Pauses { map, guard: Some(guard) })
    }

    /// Continues every listed process whose threads have all stopped (or that is gone); the
    /// others stay listed for the next call. Returns how many are still listed.
    pub fn resume_stopped(&mut self) -> usize {
        // Processes held at exec are the probes' owner's to continue (`Probes::release_held`).
        let listed: Vec<u32> = self
            .map
            .iter()
            .filter_map(Result::ok)
            .filter(|&(tgid, why)| tgid != NO_MORE_PAUSES && why != retrace_common::PAUSED_FOR_EXEC)
            .map(|(tgid, _)| tgid)
            .collect();
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

/// A command that runs this program again. Started through the dynamic loader
/// (`ld-linux-x86-64.so.2 retrace ...`, as a bundle for a machine with an older glibc is run),
/// the executable is the loader, and the program is its first argument; the loader finds
/// the libraries again through LD_LIBRARY_PATH, which the child inherits.
fn this_program() -> std::io::Result<Command> {
    let exe = std::env::current_exe()?;
    let by_loader = exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ld-linux"));
    let mut command = Command::new(&exe);
    if by_loader {
        command.arg(std::env::args_os().next().ok_or_else(|| std::io::Error::other("no argv[0]"))?);
    }
    Ok(command)
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
        if let Some(mut guard) = self.guard.take() {
            drop(guard.stdin.take());
            let _ = guard.wait();
        }
    }
}

/// `retrace resume-guard`: holds the list of paused processes until its stdin closes (the
/// recorder is done, or was killed), then continues whatever is still paused.
pub fn run_guard(map_id: u32) -> Result<(), CaptureError> {
    let data = MapData::from_id(map_id).map_err(CaptureError::map)?;
    let map = BpfHashMap::try_from(Map::HashMap(data)).map_err(CaptureError::map)?;
    // A closed terminal must not end it either.
    // SAFETY: sets a signal disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    println!("ready");
    // Ends with EOF or an error: either way the recorder is gone.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(Pauses { map, guard: None });
    Ok(())
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
