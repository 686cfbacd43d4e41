//! The wall clock the replayed program sees: the recorded time of what is being replayed, plus
//! the time elapsed since, never going backwards. clock_gettime(REALTIME), gettimeofday and
//! time normally never leave the process (the vDSO answers them), so after each exec, before the
//! new image's first system call returns, their vDSO entry points are patched (through
//! /proc/PID/mem) into real system calls, which the seccomp filter hands to the replayer.
//! Monotonic and CPU clocks stay the kernel's.

use std::{fs::File, os::unix::fs::FileExt as _, sync::Mutex, time::Instant};

/// The vDSO's wall-clock entry points, and the system call each becomes.
const PATCHED: &[(&str, i64)] = &[
    ("__vdso_clock_gettime", libc::SYS_clock_gettime),
    ("__vdso_gettimeofday", libc::SYS_gettimeofday),
    ("__vdso_time", libc::SYS_time),
];

/// Recorded time, advancing with real time from the last anchor.
pub struct VirtualClock {
    state: Mutex<State>,
}

struct State {
    /// Virtual ns since the epoch at `at`.
    anchor_ns: i128,
    at: Instant,
    /// The last value handed out: never go below it.
    last_ns: i128,
    /// The recorded time of the next thing the program waits for: the clock does not pass it
    /// (a replay slower than the recording would otherwise show later times).
    limit_ns: Option<i128>,
    reads: u64,
}

impl State {
    /// What the clock reads now: advanced from the anchor, held at the limit, never back.
    fn visible(&self) -> i128 {
        let mut now = self.anchor_ns + self.at.elapsed().as_nanos() as i128;
        if let Some(limit) = self.limit_ns {
            now = now.min(limit);
        }
        now.max(self.last_ns)
    }

    fn rebase(&mut self, now: i128) {
        self.anchor_ns = now;
        self.at = Instant::now();
    }
}

impl Default for VirtualClock {
    /// Today's time (until anchored).
    fn default() -> VirtualClock {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        VirtualClock::new(now.as_nanos() as u64)
    }
}

impl VirtualClock {
    /// Starts at `start_ns` (the recording's start).
    pub fn new(start_ns: u64) -> VirtualClock {
        let state = State { anchor_ns: start_ns as i128, at: Instant::now(), last_ns: 0, limit_ns: None, reads: 0 };
        VirtualClock { state: Mutex::new(state) }
    }

    /// What is being replayed happened at `recorded_ns`: the clock reads that from now on
    /// (unless it already reads later: it never goes backwards).
    pub fn anchor(&self, recorded_ns: u64) {
        let mut s = self.state.lock().expect("clock");
        let now = s.visible().max(recorded_ns as i128);
        s.rebase(now);
    }

    /// The clock may not pass `limit_ns` (None: no limit) until told otherwise. Time held
    /// back by a limit is not made up later: the clock goes on from where it stood.
    pub fn limit(&self, limit_ns: Option<u64>) {
        let mut s = self.state.lock().expect("clock");
        let now = s.visible();
        s.rebase(now);
        s.limit_ns = limit_ns.map(i128::from);
    }

    /// The virtual wall clock, ns since the epoch.
    pub fn now_ns(&self) -> i128 {
        let mut s = self.state.lock().expect("clock");
        let now = s.visible();
        s.last_ns = now;
        s.reads += 1;
        now
    }

    /// How many reads were answered.
    pub fn reads(&self) -> u64 {
        self.state.lock().expect("clock").reads
    }
}

/// The answer to a notified wall-clock call (`nr`, `args`) of `pid`: the value to return, after
/// writing the time where the call asked for it; None for a call that is not the clock's.
pub fn answer(clock: &VirtualClock, pid: u32, nr: i64, args: &[u64; 6]) -> Option<Result<i64, i32>> {
    if !matches!(nr, libc::SYS_clock_gettime | libc::SYS_gettimeofday | libc::SYS_time) {
        return None;
    }
    let ns = clock.now_ns();
    let (sec, nsec) = (ns.div_euclid(1_000_000_000) as i64, ns.rem_euclid(1_000_000_000) as i64);
    let write = |addr: u64, bytes: &[u8]| write_to(pid, addr, bytes);
    let pair = |a: i64, b: i64| [a.to_ne_bytes(), b.to_ne_bytes()].concat();
    Some(match nr {
        libc::SYS_clock_gettime => write(args[1], &pair(sec, nsec)).map(|_| 0),
        libc::SYS_gettimeofday => {
            write(args[0], &pair(sec, nsec / 1000)).and_then(|_| write(args[1], &[0u8; 8])).map(|_| 0)
        }
        _ /* time */ => write(args[0], &sec.to_ne_bytes()).map(|_| sec),
    })
}

/// Writes `bytes` at `addr` in `pid`'s memory (nothing for a null address): one system call.
pub fn write_to(pid: u32, addr: u64, bytes: &[u8]) -> Result<(), i32> {
    if addr == 0 {
        return Ok(());
    }
    let local = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let remote = libc::iovec { iov_base: addr as *mut _, iov_len: bytes.len() };
    // SAFETY: one write of `bytes` into the caller's memory (the replayer may, as root).
    let n = unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n == bytes.len() as isize {
        Ok(())
    } else {
        Err(libc::EFAULT)
    }
}

/// Patches the wall-clock entry points of `pid`'s vDSO into system calls (`mov eax, NR;
/// syscall; ret`); how many were patched.
pub fn patch_vdso(pid: u32) -> std::io::Result<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
        return Ok(0); // no vDSO: the calls are system calls already
    };
    let (lo, hi) = range.split_once('-').unwrap_or_default();
    let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap_or(0), u64::from_str_radix(hi, 16).unwrap_or(0));
    let mem = File::options().read(true).write(true).open(format!("/proc/{pid}/mem"))?;
    let mut image = vec![0u8; hi.saturating_sub(lo) as usize];
    mem.read_exact_at(&mut image, lo)?;
    let mut patched = 0;
    for (name, offset) in vdso_symbols(&image) {
        let code = if name == "__vdso_getrandom" {
            // `mov rax, -ENOSYS; ret`: libc falls back to the system call, answered like the
            // clock (the vDSO's own getrandom keeps state the replayer cannot give).
            [0x48, 0xc7, 0xc0, 0xda, 0xff, 0xff, 0xff, 0xc3]
        } else if let Some(&(_, nr)) = PATCHED.iter().find(|(n, _)| *n == name) {
            let mut code = [0xb8, 0, 0, 0, 0, 0x0f, 0x05, 0xc3];
            code[1..5].copy_from_slice(&(nr as u32).to_le_bytes());
            code
        } else {
            continue;
        };
        mem.write_all_at(&code, lo + offset)?;
        patched += 1;
    }
    Ok(patched)
}

/// The dynamic symbols of a vDSO image (an ELF64 shared object linked at 0): (name, offset).
fn vdso_symbols(image: &[u8]) -> Vec<(String, u64)> {
    let u16_at = |at: usize| image.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| image.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |at: usize| image.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let mut out = Vec::new();
    if !image.starts_with(b"\x7fELF\x02") {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum)) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c)) else { return out };
    let section = |i: usize| {
        let at = shoff as usize + i * shentsize;
        Some((u32_at(at + 4)?, u64_at(at + 0x18)? as usize, u64_at(at + 0x20)? as usize, u32_at(at + 0x28)?))
    };
    const SHT_DYNSYM: usize = 11;
    for i in 0..shnum {
        let Some((kind, offset, size, link)) = section(i) else { continue };
        if kind != SHT_DYNSYM {
            continue;
        }
        let Some((_, strings, _, _)) = section(link) else { continue };
        for sym in (offset..offset + size).step_by(24) {
            let (Some(name), Some(value)) = (u32_at(sym), u64_at(sym + 8)) else { break };
            let start = strings + name;
            let Some(end) = image.get(start..).and_then(|s| s.iter().position(|&b| b == 0)) else { continue };
            if value != 0 {
                out.push((String::from_utf8_lossy(&image[start..start + end]).into_owned(), value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_at_the_recording_follows_anchors_and_never_goes_back() {
        let clock = VirtualClock::new(1_000_000_000_000);
        let first = clock.now_ns();
        assert!((1_000_000_000_000..1_000_100_000_000).contains(&first));
        clock.anchor(2_000_000_000_000);
        assert!(clock.now_ns() >= 2_000_000_000_000);
        clock.anchor(1_500_000_000_000); // earlier than now: ignored
        assert!(clock.now_ns() >= 2_000_000_000_000);
        assert_eq!(clock.reads(), 3);
        // Held at a limit, and going on from there (not jumping) once it is lifted.
        clock.limit(Some(2_000_000_000_000));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let held = clock.now_ns();
        assert!((2_000_000_000_000..2_000_000_000_000 + 20_000_000).contains(&held), "{held}");
        clock.limit(None);
        assert!(clock.now_ns() - held < 15_000_000);
    }

    #[test]
    fn this_process_vdso_has_the_wall_clock_entry_points() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
            return; // a kernel without a vDSO
        };
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        // SAFETY: our own vDSO mapping, readable for its whole length.
        let image = unsafe { std::slice::from_raw_parts(lo as *const u8, hi - lo) };
        let names: Vec<String> = vdso_symbols(image).into_iter().map(|(n, _)| n).collect();
        for (name, _) in PATCHED {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
}
