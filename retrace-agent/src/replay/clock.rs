//! The wall clock the replayed program sees: each thread's recorded reads, in order, where the
//! recording has them (`record` patched the program's vDSO); past them, or without them, the
//! recorded time of what is being replayed plus the time elapsed since, never going backwards.
//! clock_gettime(REALTIME), gettimeofday and time normally never leave the process (the vDSO
//! answers them), so after each exec, before the new image's first system call returns, their
//! vDSO entry points are patched (`crate::vdso`) into real system calls, which the seccomp
//! filter hands to the replayer.
//! Monotonic and CPU clocks stay the kernel's.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long before a delivered event a recorded read still belongs to it.
const STALE_MARGIN_NS: i128 = 1_000_000;

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
    /// Recorded reads from before this are past: an event came while the program was idle,
    /// sooner than it had, and what the program did while it waited it does not do again.
    stale_before: i128,
    /// Reads answered with the time the recorded thread read.
    recorded_reads: u64,
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
        let state = State {
            anchor_ns: start_ns as i128,
            at: Instant::now(),
            last_ns: 0,
            limit_ns: None,
            reads: 0,
            stale_before: 0,
            recorded_reads: 0,
        };
        VirtualClock { state: Mutex::new(state) }
    }

    /// What is being replayed happened at `recorded_ns`: the clock reads that from now on
    /// (unless it already reads later: it never goes backwards).
    pub fn anchor(&self, recorded_ns: u64) {
        let mut s = self.state.lock().expect("clock");
        let now = s.visible().max(recorded_ns as i128);
        s.rebase(now);
    }

    /// Whether the program's clock stands more than `gap` before `recorded_ns`: the replay is
    /// about to deliver something sooner than it came when recorded.
    pub fn ahead_of_program(&self, recorded_ns: u64, gap: Duration) -> bool {
        let s = self.state.lock().expect("clock");
        s.visible() + (gap.as_nanos() as i128) < recorded_ns as i128
    }

    /// Something recorded at `recorded_ns` is delivered to a program that is `idle`
    /// (everything it does sleeps): the recorded clock reads from before it (less a
    /// millisecond: an event loop reads the clock between its poll and its read) were made
    /// while it waited, and are past.
    pub fn deliver(&self, recorded_ns: u64, idle: bool) {
        if idle {
            let mut s = self.state.lock().expect("clock");
            s.stale_before = s.stale_before.max(recorded_ns as i128 - STALE_MARGIN_NS);
        }
        self.anchor(recorded_ns);
    }

    /// Whether a recorded clock read made at `recorded_ns` is past (`deliver`).
    pub fn stale(&self, recorded_ns: u64) -> bool {
        (recorded_ns as i128) < self.state.lock().expect("clock").stale_before
    }

    /// The recorded time of the next event the replay waits for, if it holds the clock at it.
    pub fn next_event(&self) -> Option<i128> {
        self.state.lock().expect("clock").limit_ns
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

    /// A read answered with `recorded_ns`, what the recorded thread read at this point: it is
    /// returned as it was, and the clock goes on from there (unless it reads later already).
    pub fn recorded(&self, recorded_ns: i128) -> i128 {
        let mut s = self.state.lock().expect("clock");
        let now = s.visible().max(recorded_ns);
        s.rebase(now);
        s.last_ns = now;
        s.reads += 1;
        s.recorded_reads += 1;
        recorded_ns
    }

    /// What the clock reads now, without it counting as a read.
    pub fn peek(&self) -> i128 {
        self.state.lock().expect("clock").visible()
    }

    /// How many reads were answered, and how many of them with a recorded read's time.
    pub fn reads(&self) -> (u64, u64) {
        let s = self.state.lock().expect("clock");
        (s.reads, s.recorded_reads)
    }
}

/// The answer to a notified wall-clock call (`nr`, `args`) of `pid`: the value to return, after
/// writing the time where the call asked for it (`recorded`, what the recorded thread read
/// here, if the recording has it; else the virtual clock's); None for a call that is not the
/// clock's.
pub fn answer(
    clock: &VirtualClock,
    recorded: Option<i128>,
    pid: u32,
    nr: i64,
    args: &[u64; 6],
) -> Option<Result<i64, i32>> {
    if !matches!(nr, libc::SYS_clock_gettime | libc::SYS_gettimeofday | libc::SYS_time) {
        return None;
    }
    let ns = match recorded {
        Some(ns) => clock.recorded(ns),
        None => clock.now_ns(),
    };
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
        assert_eq!(clock.reads(), (3, 0));
        // Held at a limit, and going on from there (not jumping) once it is lifted.
        clock.limit(Some(2_000_000_000_000));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let held = clock.now_ns();
        assert!((2_000_000_000_000..2_000_000_000_000 + 20_000_000).contains(&held), "{held}");
        clock.limit(None);
        assert!(clock.now_ns() - held < 15_000_000);
    }

    #[test]
    fn a_recorded_read_is_returned_as_it_was_and_the_clock_goes_on_from_it() {
        let clock = VirtualClock::new(1_000_000_000_000);
        // Earlier than the clock reads: still returned exactly.
        assert_eq!(clock.recorded(999_000_000_000), 999_000_000_000);
        assert_eq!(clock.recorded(3_000_000_000_123), 3_000_000_000_123);
        let next = clock.now_ns();
        assert!((3_000_000_000_123..3_000_100_000_000).contains(&next), "{next}");
        assert_eq!(clock.reads(), (3, 2));
    }

    #[test]
    fn reads_from_before_an_event_delivered_to_an_idle_program_are_past() {
        let s = 1_000_000_000u64;
        let clock = VirtualClock::new(100 * s);
        clock.recorded(100 * s as i128);
        assert!(clock.ahead_of_program(105 * s, Duration::from_millis(10)));
        assert!(!clock.ahead_of_program(100 * s + 1_000, Duration::from_millis(10)));
        // Delivered to a busy program: nothing is past.
        clock.deliver(103 * s, false);
        assert!(!clock.stale(101 * s));
        // To an idle one: what it read while it waited is.
        clock.deliver(105 * s, true);
        assert!(clock.stale(102 * s));
        assert!(!clock.stale(105 * s - 500_000), "its poll's read, just before");
        assert!(!clock.stale(106 * s));
    }
}
