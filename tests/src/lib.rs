//! Support for the capture tests: run the real `retrace` binary against real programs, then
//! read the recording back and compare bytes.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use retrace_agent::{
    store::{
        proto::{self, record::Kind as R, Direction},
        Recording,
    },
    view::{self, StreamRow},
};

/// The `retrace` binary built next to this test (`cargo xtask test` builds it first).
pub fn retrace_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RETRACE_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("retrace");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// Builds a Go program (one `main.go`) as a static binary `dir/name`, without cgo; `flags`
/// go to `go build` (e.g. `-ldflags=-s -w` to strip it). Go's caches stay inside `dir`.
pub fn go_build(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("main.go"), source).unwrap();
    let built = Command::new("go")
        .arg("build")
        .args(flags)
        .args(["-o", name, "main.go"])
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .output()
        .expect("go (cargo xtask setup installs it)");
    assert!(built.status.success(), "go build: {}", String::from_utf8_lossy(&built.stderr));
    dir.join(name)
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("retrace-tests").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The key and audit folders the tests' retrace uses (its XDG config and state homes), shared
/// by the tests of one run.
pub fn test_home() -> PathBuf {
    let home = std::env::temp_dir().join("retrace-tests").join(format!("home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    home
}

/// `retrace` with the tests' own identity and audit log.
pub fn retrace_command() -> Command {
    let home = test_home();
    let mut cmd = Command::new(retrace_bin());
    cmd.env("XDG_CONFIG_HOME", home.join("config")).env("XDG_STATE_HOME", home.join("state"));
    cmd.env_remove("RETRACE_AUDIT_LOG");
    cmd
}

/// The identity `retrace record` made for the tests (on first use).
pub fn test_identity() -> retrace_agent::keys::Identity {
    let path = test_home().join("config/retrace/identity.txt");
    if !path.exists() {
        // Made the way `retrace record` makes it on first use.
        let made = retrace_command()
            .args(["record", "--output", "rec", "--", "true"])
            .current_dir(scratch("identity"))
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    retrace_agent::keys::read_identity(&path).expect("the tests' identity")
}

/// The tests' audit log.
pub fn audit_log() -> PathBuf {
    test_home().join("state/retrace/audit.jsonl")
}

/// Runs `retrace ARGS` and returns its output.
pub fn retrace(args: &[&str]) -> Output {
    retrace_command().args(args).output().expect("run retrace")
}

/// Records `command` into `dir/rec` with extra `record` options; panics if retrace fails.
pub fn record(dir: &Path, options: &[&str], command: &[&str]) -> (Rec, Output) {
    let out = record_from(None, dir, options, command);
    (Rec::open(&dir.join("rec")), out)
}

/// `retrace record -o DIR/rec -- COMMAND` run in `cwd`, which must succeed.
pub fn record_in(cwd: &Path, dir: &Path, command: &[&str]) -> Output {
    record_from(Some(cwd), dir, &[], command)
}

fn record_from(cwd: Option<&Path>, dir: &Path, options: &[&str], command: &[&str]) -> Output {
    let rec = dir.join("rec");
    let mut cmd = retrace_command();
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = cmd
        .args(["record", "-o", rec.to_str().unwrap()])
        .args(options)
        .arg("--")
        .args(command)
        .output()
        .expect("run retrace record");
    assert_no_panic(&out);
    assert!(
        out.status.success(),
        "retrace record {command:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn assert_no_panic(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "retrace panicked:\n{stderr}");
}

/// A recording opened for checks.
pub struct Rec {
    pub recording: Recording,
    pub streams: Vec<StreamRow>,
    pub records: Vec<proto::Record>,
}

impl Rec {
    pub fn open(dir: &Path) -> Rec {
        let recording = Recording::open(dir, test_identity()).expect("open recording");
        let (streams, _) = view::stream_table(&recording).expect("read streams");
        let mut records = Vec::new();
        recording.for_each(|r| records.push(r)).expect("read records");
        Rec { recording, streams, records }
    }

    /// The one stream whose path is `path` (panics if none or several).
    pub fn by_path(&self, path: &Path) -> &StreamRow {
        let path = path.to_str().unwrap();
        let found: Vec<&StreamRow> = self.streams.iter().filter(|s| s.path == path).collect();
        assert_eq!(found.len(), 1, "expected one stream for {path}, found {}: {:#?}", found.len(), self.streams);
        found[0]
    }

    pub fn find(&self, what: &str, pred: impl Fn(&StreamRow) -> bool) -> &StreamRow {
        let found: Vec<&StreamRow> = self.streams.iter().filter(|s| pred(s)).collect();
        assert_eq!(found.len(), 1, "expected one stream that is {what}, found {}: {:#?}", found.len(), self.streams);
        found[0]
    }

    /// Recorded bytes of one direction of a stream, in order (through `view::cat`).
    pub fn bytes(&self, stream: u64, dir: Direction) -> Vec<u8> {
        let mut out = Vec::new();
        view::cat(&self.recording, stream, dir, &mut out).expect("cat");
        out
    }

    pub fn data(&self, stream: u64) -> Vec<&proto::Data> {
        self.records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(R::Data(d)) if d.stream_id == stream => Some(d),
                _ => None,
            })
            .collect()
    }

    pub fn gaps(&self, stream: u64) -> Vec<&proto::Gap> {
        self.records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(R::Gap(g)) if g.stream_id == stream => Some(g),
                _ => None,
            })
            .collect()
    }

    pub fn syscalls(&self) -> Vec<&proto::Syscall> {
        self.records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(R::Syscall(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn processes(&self) -> Vec<&proto::Process> {
        self.records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(R::Process(p)) => Some(p),
                _ => None,
            })
            .collect()
    }

    pub fn counters(&self) -> &proto::Counters {
        self.records
            .iter()
            .find_map(|r| match &r.kind {
                Some(R::Counters(c)) => Some(c),
                _ => None,
            })
            .expect("a recording ends with counters")
    }
}

/// Asserts two byte strings are equal, naming the first difference instead of dumping them.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    let ctx = |b: &[u8]| String::from_utf8_lossy(&b[first.saturating_sub(8)..(first + 24).min(b.len())]).into_owned();
    panic!(
        "{what}: recorded {} bytes, expected {}; first difference at byte {first}: recorded {:?} expected {:?}",
        got.len(),
        want.len(),
        ctx(got),
        ctx(want)
    );
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The Python interpreter itself, not a launcher in front of it: `python3` on PATH may be a
/// version manager's shell shim (pyenv's runs ~35 processes first), whose records would crowd
/// the tests' tiny ring buffers.
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs (cargo xtask setup installs it)");
        String::from_utf8(out.stdout).expect("a UTF-8 path").trim().to_owned()
    })
}

/// `retrace replay REC [EXTRA...] -- COMMAND` run in `cwd`; its output and its JSON report
/// (empty if none was written).
pub fn replay_in(cwd: &Path, rec: &Path, extra: &[&str], command: &[&str]) -> (Output, serde_json::Value) {
    static N: AtomicU32 = AtomicU32::new(0);
    let report = rec.with_file_name(format!("report-{}.json", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_file(&report);
    let out = retrace_command()
        .current_dir(cwd)
        .arg("replay")
        .arg(rec)
        .arg("--report")
        .arg(&report)
        .args(extra)
        .arg("--")
        .args(command)
        .output()
        .expect("run retrace replay");
    assert_no_panic(&out);
    let report = std::fs::read(&report).map(|r| serde_json::from_slice(&r).expect("a JSON report")).unwrap_or_default();
    (out, report)
}

/// moto's S3 server on a free port, killed when dropped.
pub struct S3 {
    child: std::process::Child,
    pub endpoint: String,
}

impl S3 {
    pub fn start() -> S3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (cargo xtask setup installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        S3 { child, endpoint }
    }

    /// `curl -X METHOD` on a bucket or object path, signed; the HTTP status.
    pub fn curl(&self, method: &str, path: &str) -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                "test:test",
            ])
            .args(["-X", method, &format!("{}/{path}", self.endpoint)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn retrace(&self, args: &[&str]) -> Output {
        let out = self.env(&mut retrace_command()).args(args).output().unwrap();
        assert_no_panic(&out);
        out
    }

    /// The objects under `prefix` in `bucket`: (key, size), by key.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let out = std::process::Command::new("curl")
            .args(["-s", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"])
            .arg(format!("{}/{bucket}?list-type=2&max-keys=1000&prefix={prefix}", self.endpoint))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let tag = |item: &str, name: &str| -> Option<String> {
            let from = item.find(&format!("<{name}>"))? + name.len() + 2;
            Some(item[from..from + item[from..].find("</")?].to_owned())
        };
        let mut objects: Vec<(String, u64)> = text
            .split("<Contents>")
            .skip(1)
            .filter_map(|item| Some((tag(item, "Key")?, tag(item, "Size")?.parse().ok()?)))
            .collect();
        objects.sort();
        objects
    }

    /// `cmd` with the AWS environment that reaches this server.
    pub fn env<'a>(&self, cmd: &'a mut std::process::Command) -> &'a mut std::process::Command {
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_mount() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts.lines().find(|l| l.split(" - ").nth(1).is_some_and(|fs| fs.starts_with("cgroup2 ")));
    std::path::PathBuf::from(line.expect("a cgroup2 mount").split(' ').nth(4).unwrap())
}

/// Records `server` (launched by `retrace record`) into `rec` while `clients` talk to it on
/// `port`, then stops it (SIGINT to the recorder) and checks that nothing was lost; what
/// `clients` returned.
pub fn record_server<T>(rec: &Path, server: &[&str], port: u16, clients: impl FnOnce() -> T) -> T {
    let mut recorder = retrace_command()
        .arg("record")
        .arg("-o")
        .arg(rec)
        .arg("--")
        .args(server)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not listen on port {port}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = clients();
    // SAFETY: SIGINT to the recorder we started.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut recorder.stderr.take().unwrap(), &mut err).unwrap();
    // `record` exits with the server's own status once stopped (143 for python, 0 for nginx).
    recorder.wait().unwrap();
    assert!(err.contains("0 bytes lost"), "{err}");
    result
}

/// A TCP relay in front of a server that the test can close (every connection through it is
/// cut, and new ones are refused until it opens again) and slow down: an outage, or a slow
/// link, between a client and a real server.
pub struct Gate {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Microseconds to wait after each 16 KiB relayed (0: full speed).
    pub delay_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Gate {
    pub fn new(upstream: u16) -> Gate {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let delay_us = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, d, st) = (open.clone(), delay_us.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Relaxed) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                st.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                            let us = d.load(Relaxed);
                            if us > 0 {
                                std::thread::sleep(std::time::Duration::from_micros(us));
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Gate { port, open, delay_us, streams }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
