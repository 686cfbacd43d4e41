//! The replayed program's stdout and stderr, compared with the recorded command's: each goes
//! through a pipe to a thread that passes it on to the replayer's own fd unchanged and compares
//! it, line by line, with what was recorded: redacted spans match anything, and a line may
//! differ in its times (the replayed clock runs at the replay's pace between recorded events)
//! and where the noise rules say. A program whose
//! only effects are its output and its files (sqlite3, a compiler) diverges here.

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    thread::JoinHandle,
};

use regex::bytes::Regex;

use super::{
    http::{Ignored, Noise},
    report::{Difference, OutputCheck},
    script::{first_difference, RecordedOutput},
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
    pub fn start(recorded: RecordedOutput, noise: &Noise) -> Option<Tee> {
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
        let noise = noise.clone();
        let handle = std::thread::spawn(move || compare(read_end, recorded, noise));
        Some(Tee { fd, write_end, handle })
    }

    /// The comparison, once every writer of the pipe is gone.
    pub fn finish(self) -> OutputCheck {
        drop(self.write_end);
        self.handle.join().unwrap_or_default()
    }
}

/// How much more than was recorded is kept for the comparison: past that, the program wrote
/// more, whatever it was.
const EXTRA_MAX: usize = 64 * 1024;

fn compare(read_end: OwnedFd, recorded: RecordedOutput, noise: Noise) -> OutputCheck {
    // SAFETY: the replayer's own stdout or stderr, borrowed (never closed here).
    let mut passed_on = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(recorded.fd) });
    let mut actual = Vec::new();
    let mut written = 0u64;
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
        written += got.len() as u64;
        if actual.len() <= recorded.bytes.len() + EXTRA_MAX {
            actual.extend_from_slice(got);
        }
    }
    let mut check = lines(&recorded, &actual, &noise);
    check.bytes = written;
    check
}

/// Line by line: a line may differ only in its times (the replayed clock runs at the replay's
/// pace between recorded events) or where the noise rules' patterns match; each such difference is reported as ignored.
fn lines(recorded: &RecordedOutput, actual: &[u8], noise: &Noise) -> OutputCheck {
    let mut check = OutputCheck { fd: recorded.fd, status: "matched".into(), ..Default::default() };
    let expected = &recorded.bytes;
    let (mut e_at, mut a_at, mut line) = (0usize, 0usize, 0usize);
    while e_at < expected.len() || a_at < actual.len() {
        line += 1;
        let e_end = expected[e_at..].iter().position(|&b| b == b'\n').map_or(expected.len(), |p| e_at + p + 1);
        let a_end = actual[a_at..].iter().position(|&b| b == b'\n').map_or(actual.len(), |p| a_at + p + 1);
        let (e, a) = (&expected[e_at..e_end], &actual[a_at..a_end]);
        let same = e.len() == a.len() && first_difference(e, a, &recorded.wildcards, e_at).is_none();
        if !same {
            let both = !e.is_empty() && !a.is_empty();
            let why = if both && blank(e, times(), &[]) == blank(a, times(), &[]) {
                Some("times")
            } else if both && blank(e, times(), &noise.patterns) == blank(a, times(), &noise.patterns) {
                Some("noise rule (pattern)")
            } else {
                None
            };
            match why {
                Some(why) => check.ignored.push(Ignored {
                    field: format!("line {line}"),
                    expected: String::from_utf8_lossy(e).trim_end().to_owned(),
                    actual: String::from_utf8_lossy(a).trim_end().to_owned(),
                    why: why.into(),
                }),
                None => {
                    let at = e.iter().zip(a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
                    let what = match (e.len(), a.len()) {
                        (0, _) => "the program wrote more",
                        (_, 0) => "the program wrote less",
                        _ => "different bytes",
                    };
                    check.status = "diverged".into();
                    check.difference = Some(Difference {
                        offset: (a_at + at) as u64,
                        what: what.into(),
                        expected: super::peer::context(&expected[e_at + at.min(e.len())..]),
                        actual: super::peer::context(&actual[a_at + at.min(a.len())..]),
                        learn: (!e.is_empty() && !a.is_empty())
                            .then(|| super::report::Learn::Text { expected: e.to_vec(), actual: a.to_vec() }),
                    });
                    return check;
                }
            }
        }
        (e_at, a_at) = (e_end, a_end);
    }
    check
}

/// The forms a clock reading takes in output: ISO 8601, the common log format, HTTP dates,
/// ctime (`date`), times of day, and Unix times of this era in seconds or milliseconds
/// (2017–2033: `1[5-9]` and 8 or 11 more digits, such as redis's `signal-handler (1796534523)`).
fn times() -> &'static [Regex] {
    static TIMES: std::sync::OnceLock<Vec<Regex>> = std::sync::OnceLock::new();
    TIMES.get_or_init(|| {
        [
            r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?",
            r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}",
            r"\d{2}/[A-Z][a-z]{2}/\d{4}[: ]\d{2}:\d{2}:\d{2}( [+-]\d{4})?",
            r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT",
            r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}( [A-Z]{3,5})? \d{4}",
            r"\b\d{2}:\d{2}:\d{2}(\.\d+)?\b",
            r"\b1[5-9]\d{8}(\d{3}|\.\d+)?\b",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("a valid time pattern"))
        .collect()
    })
}

/// `line` with every match of `patterns` and `more` blanked out.
fn blank(line: &[u8], patterns: &[Regex], more: &[Regex]) -> Vec<u8> {
    let mut out = line.to_vec();
    for pattern in patterns.iter().chain(more) {
        out = pattern.replace_all(&out, &b"\x00"[..]).into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(text: &str) -> RecordedOutput {
        RecordedOutput { fd: 1, bytes: text.as_bytes().to_vec(), wildcards: Vec::new() }
    }

    #[test]
    fn lines_may_differ_in_their_times_only() {
        let r = recorded(
            "127.0.0.1 - - [04/Dec/2026 16:35:34] \"GET / HTTP/1.1\" 200 -\nstarted at 2026-12-04T16:35:34Z\ndone\n",
        );
        let a = b"127.0.0.1 - - [05/Dec/2026 09:01:02] \"GET / HTTP/1.1\" 200 -\nstarted at 2026-12-05T09:01:02.123Z\ndone\n";
        let check = lines(&r, a, &Noise::default());
        assert_eq!(check.status, "matched", "{:?}", check.difference);
        assert_eq!(check.ignored.len(), 2);
        let a =
            b"127.0.0.1 - - [05/Dec/2026 09:01:02] \"GET / HTTP/1.1\" 404 -\nstarted at 2026-12-05T09:01:02Z\ndone\n";
        let check = lines(&r, a, &Noise::default());
        assert_eq!(check.status, "diverged");
        let check = lines(&r, &a[..a.len() - 5], &Noise::default());
        assert_eq!(check.status, "diverged");
        // Unix times; a number that is not one still counts.
        let check = lines(
            &recorded("x:signal-handler (1796534523) Received\n"),
            b"x:signal-handler (1796534524) Received\n",
            &Noise::default(),
        );
        assert_eq!(check.status, "matched");
        let check = lines(&recorded("ts=1796534523123 ok\n"), b"ts=1796534524001 ok\n", &Noise::default());
        assert_eq!(check.status, "matched");
        let check = lines(&recorded("count 1234567890\n"), b"count 1234567891\n", &Noise::default());
        assert_eq!(check.status, "diverged");
        let noise = Noise { headers: Vec::new(), patterns: vec![Regex::new("pid=\\d+").unwrap()] };
        let check = lines(&recorded("pid=12 up\n"), b"pid=3456 up\n", &noise);
        assert_eq!(check.status, "matched");
    }
}
