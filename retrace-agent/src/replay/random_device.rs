//! The random devices the program read when recorded (/dev/urandom, /dev/random: V8 seeds
//! `Math.random` there, Java's SecureRandom reads it, a shell's `head -c 16 /dev/urandom`):
//! in the sandbox each is a FIFO that a feeder thread fills with the recorded bytes, in the
//! order they were read, then with fresh random bytes for reads past the recording.

use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

/// Fresh bytes are added past the recording a block at a time, while less than a block waits.
const FRESH_BLOCK: usize = 16 * 1024;

/// One device's feeder.
pub struct Feeder {
    thread: JoinHandle<Fed>,
}

/// What a feeder wrote, and what of it the program read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fed {
    /// Recorded bytes the program read again.
    pub replayed: u64,
    /// Bytes it read past the recording (fresh).
    pub unreplayed: u64,
}

impl Feeder {
    /// Feeds `recorded` into `fifo` (our read-write, non-blocking end) until `stop`.
    pub fn start(fifo: OwnedFd, recorded: Vec<u8>, stop: Arc<AtomicBool>) -> Feeder {
        let thread = std::thread::spawn(move || feed(&fifo, &recorded, &stop));
        Feeder { thread }
    }

    /// Waits for the feeder (after `stop`): what the program read.
    pub fn finish(self) -> Fed {
        self.thread.join().unwrap_or_default()
    }
}

fn feed(fifo: &OwnedFd, recorded: &[u8], stop: &AtomicBool) -> Fed {
    let fd = fifo.as_raw_fd();
    let (mut at, mut fresh) = (0usize, 0u64);
    let mut block = vec![0u8; FRESH_BLOCK];
    while !stop.load(Ordering::Relaxed) {
        if at < recorded.len() {
            // Wait for room, then write what fits (the pipe takes up to its size).
            let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
            // SAFETY: poll on our fd; write of our own slice.
            let n = unsafe {
                if libc::poll(&mut pfd, 1, 50) <= 0 {
                    continue;
                }
                libc::write(fd, recorded[at..].as_ptr().cast(), recorded.len() - at)
            };
            if n > 0 {
                at += n as usize;
            }
            continue;
        }
        // Past the recording: keep a block ready; the program reads on without waiting long.
        if waiting(fd) >= FRESH_BLOCK {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        // SAFETY: getrandom into our buffer, then write of it.
        let n = unsafe {
            let got = libc::getrandom(block.as_mut_ptr().cast(), block.len(), 0);
            if got <= 0 {
                continue;
            }
            libc::write(fd, block.as_ptr().cast(), got as usize)
        };
        if n > 0 {
            fresh += n as u64;
        }
    }
    let read = (at as u64 + fresh).saturating_sub(waiting(fd) as u64);
    Fed { replayed: read.min(recorded.len() as u64), unreplayed: read.saturating_sub(recorded.len() as u64) }
}

/// Bytes in the FIFO not read yet.
fn waiting(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n.max(0) as usize
}
