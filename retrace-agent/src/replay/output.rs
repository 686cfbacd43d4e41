//! The replayed program's stdout and stderr, compared with the recorded command's: each goes
//! through a pipe to a thread that passes it on to the replayer's own fd unchanged and compares
//! it, byte for byte (redacted spans match anything), with what was recorded. A program whose
//! only effects are its output and its files (sqlite3, a compiler) diverges here.

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    thread::JoinHandle,
};

use super::{
    report::{Difference, OutputCheck},
    script::RecordedOutput,
};

/// A recorded output being compared: the pipe's write end goes to the program as `fd`.
pub struct Tee {
    pub fd: i32,
    pub write_end: OwnedFd,
    handle: JoinHandle<OutputCheck>,
}

impl Tee {
    /// Starts comparing `recorded` if the replayer's own `fd` is no terminal (a program that
    /// sees a terminal behaves otherwise: line buffering, colours, columns). None when it is,
    /// or when the pipe cannot be made.
    pub fn start(recorded: RecordedOutput) -> Option<Tee> {
        let fd = recorded.fd;
        // SAFETY: isatty and pipe2 on fds we own.
        if unsafe { libc::isatty(fd) } == 1 {
            return None;
        }
        let mut pipe = [0 as RawFd; 2];
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: the pipe's two new fds, owned from here.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let handle = std::thread::spawn(move || compare(read_end, recorded));
        Some(Tee { fd, write_end, handle })
    }

    /// The comparison, once every writer of the pipe is gone.
    pub fn finish(self) -> OutputCheck {
        drop(self.write_end);
        self.handle.join().unwrap_or_default()
    }
}

fn compare(read_end: OwnedFd, recorded: RecordedOutput) -> OutputCheck {
    let mut check = OutputCheck { fd: recorded.fd, status: "matched".into(), ..Default::default() };
    // SAFETY: the replayer's own stdout or stderr, borrowed (never closed here).
    let mut passed_on = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(recorded.fd) });
    let expected = &recorded.bytes;
    let wild = |i: usize| recorded.wildcards.iter().any(|&(o, l)| i >= o && i < o + l);
    let mut at = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: read into our buffer, of its length.
        let n = unsafe { libc::read(read_end.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        let got = &buf[..n as usize];
        let _ = passed_on.write_all(got);
        if check.difference.is_none() {
            let differs =
                got.iter().enumerate().find(|&(i, &b)| expected.get(at + i).is_none_or(|&e| e != b && !wild(at + i)));
            if let Some((i, _)) = differs {
                let offset = at + i;
                let what = if offset >= expected.len() { "the program wrote more" } else { "different bytes" };
                check.status = "diverged".into();
                check.difference = Some(Difference {
                    offset: offset as u64,
                    what: what.into(),
                    expected: super::peer::context(expected.get(offset..).unwrap_or_default()),
                    actual: super::peer::context(&got[i..]),
                });
            }
        }
        at += got.len();
    }
    check.bytes = at as u64;
    if check.difference.is_none() && at < expected.len() {
        check.status = "diverged".into();
        check.difference = Some(Difference {
            offset: at as u64,
            what: "the program wrote less".into(),
            expected: super::peer::context(&expected[at..]),
            actual: String::new(),
        });
    }
    check
}
