//! The recorded order of a server's connections, kept during replay: the replayer sends a
//! recorded request once the program has written, on every connection, what it had written
//! before it read that request, and sends requests in the order the program read them. A
//! stateful server (a counter, a list, a database) then ends in the recorded state, while
//! connections that did not wait on each other when recorded run concurrently.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread::Thread,
    time::{Duration, Instant},
};

use super::script::OrderEvent;

/// How long the program may leave a request unread before the next is sent anyway.
const SETTLE: Duration = Duration::from_millis(200);
/// How long nothing may happen while an event is awaited before the replayer stops waiting for
/// it: a program that wrote less than recorded, or wrote in another order, is slowed down, not
/// stuck (the comparison still reports what it did).
const STALL: Duration = Duration::from_secs(2);

/// Told the recorded time of the next awaited event (None: after the last one).
type OnNext = Box<dyn Fn(Option<u64>) + Send + Sync>;

pub struct Order {
    events: Vec<OrderEvent>,
    on_next: OnNext,
    /// Events before this index have happened.
    reached: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    /// Per connection: bytes sent to the program, bytes read from it; a connection that ended
    /// holds nothing up.
    sent: Vec<u64>,
    read: Vec<u64>,
    ended: Vec<bool>,
    /// Sent to the program and maybe not read by it yet.
    unread: Vec<bool>,
    /// The program's end of each open connection: its address, and ours.
    ends: Vec<Option<(SocketAddr, SocketAddr)>>,
    waiters: Vec<(usize, Thread)>,
    last_progress: Instant,
}

impl Order {
    pub fn new(events: Vec<OrderEvent>, connections: usize, on_next: OnNext) -> Order {
        on_next(events.get(1).map(|e| e.ts_ns));
        Order {
            reached: AtomicUsize::new(1.min(events.len())),
            events,
            on_next,
            state: Mutex::new(State {
                sent: vec![0; connections],
                read: vec![0; connections],
                ended: vec![false; connections],
                unread: vec![false; connections],
                ends: vec![None; connections],
                waiters: Vec::new(),
                last_progress: Instant::now(),
            }),
        }
    }

    /// Waits until every event before `at` has happened (or nothing happened for `STALL`).
    /// (It sleeps at once: a waiter that polled would take a core from the program and the
    /// other connections, which is what it waits for; nginx under wrk replays twice as fast.)
    pub fn wait(&self, at: usize) {
        while self.reached.load(Ordering::Acquire) < at {
            {
                let mut state = self.state.lock().expect("order");
                self.advance(&mut state);
                if self.reached.load(Ordering::Acquire) >= at {
                    return;
                }
                if state.last_progress.elapsed() >= STALL {
                    // Give up on the oldest awaited event.
                    let skipped = self.reached.fetch_add(1, Ordering::AcqRel);
                    (self.on_next)(self.events.get(skipped + 1).map(|e| e.ts_ns));
                    state.last_progress = Instant::now();
                    self.advance(&mut state);
                    continue;
                }
                state.waiters.push((at, std::thread::current()));
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }

    /// `connection` is open: the program's end is `program`, ours `replayer`.
    pub fn opened(&self, connection: usize, program: SocketAddr, replayer: SocketAddr) {
        self.state.lock().expect("order").ends[connection] = Some((program, replayer));
    }

    /// `n` more bytes sent to the program on `connection`.
    pub fn sent(&self, connection: usize, n: u64) {
        self.update(|s| {
            s.sent[connection] += n;
            s.unread[connection] = true;
        });
    }

    /// Waits until the program has read what was sent to it on the other connections: a
    /// request it read after those when recorded is sent only then. (Sent in order is not
    /// enough: the kernel may deliver two connections' bytes to the program in either order.)
    pub fn settle(&self, except: usize) {
        let pending: Vec<(usize, (SocketAddr, SocketAddr))> = {
            let state = self.state.lock().expect("order");
            (0..state.unread.len())
                .filter(|&c| c != except && state.unread[c] && !state.ended[c])
                .filter_map(|c| state.ends[c].map(|e| (c, e)))
                .collect()
        };
        for (c, (program, replayer)) in pending {
            let start = Instant::now();
            while super::diag::unread(program, replayer).is_some_and(|n| n > 0) && start.elapsed() < SETTLE {
                std::thread::yield_now();
            }
            self.state.lock().expect("order").unread[c] = false;
        }
    }

    /// The program's bytes on `connection` read up to `total` (a step compared whole counts
    /// as its recorded length, whatever the program's length was).
    pub fn read(&self, connection: usize, total: u64) {
        self.update(|s| s.read[connection] = s.read[connection].max(total));
    }

    /// `connection` is over: nothing more happens on it.
    pub fn ended(&self, connection: usize) {
        self.update(|s| s.ended[connection] = true);
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().expect("order");
        change(&mut state);
        let before = self.reached.load(Ordering::Acquire);
        self.advance(&mut state);
        if self.reached.load(Ordering::Acquire) != before {
            state.last_progress = Instant::now();
        }
    }

    fn advance(&self, state: &mut State) {
        let mut at = self.reached.load(Ordering::Acquire);
        while let Some(e) = self.events.get(at) {
            let done = if e.to_program { state.sent[e.connection] } else { state.read[e.connection] };
            if !(state.ended[e.connection] || done >= e.end) {
                break;
            }
            at += 1;
        }
        if self.reached.swap(at, Ordering::AcqRel) != at {
            (self.on_next)(self.events.get(at).map(|e| e.ts_ns));
        }
        state.waiters.retain(|(wanted, thread)| {
            let ready = *wanted <= at;
            if ready {
                thread.unpark();
            }
            !ready
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_waits_for_what_the_program_wrote_before_reading_it() {
        // Recorded: read c0 (4 bytes), write c0 (2 bytes), read c1 (4 bytes).
        let e = |connection, to_program, end| OrderEvent { connection, to_program, end, ts_ns: 0 };
        let order = Order::new(vec![e(0, false, 0), e(0, true, 4), e(0, false, 2), e(1, true, 4)], 2, Box::new(|_| {}));
        order.wait(1); // c0's request: at once
        assert_eq!(order.reached.load(Ordering::Relaxed), 1);
        order.sent(0, 4);
        order.read(0, 1);
        assert_eq!(order.reached.load(Ordering::Relaxed), 2, "c0's answer is not read whole yet");
        order.read(0, 2);
        assert_eq!(order.reached.load(Ordering::Relaxed), 3);
        order.wait(3); // c1's request may go now
                       // A connection that ended holds nothing up.
        let order = Order::new(vec![e(0, false, 0), e(0, false, 9), e(1, true, 1)], 2, Box::new(|_| {}));
        order.ended(0);
        assert_eq!(order.reached.load(Ordering::Relaxed), 2);
    }
}
