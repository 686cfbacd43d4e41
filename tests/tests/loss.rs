//! No silent loss: a flood into a tiny ring buffer, and a per-call payload cap, both leave
//! explicit gaps such that recorded + lost = what the process moved, exactly.

use retrace_agent::{store::proto::Direction, view::gap_reason_name};
use retrace_tests::{assert_bytes_eq, python, record, retrace, scratch};

const FLOOD: &str = r#"
import os, sys, time
buf = bytes(range(256)) * 256
# Let the agent drain the interpreter's start-up first: this test floods payload, and the open
# must get through (a dropped open is the next test's subject).
time.sleep(0.3)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
total = 0
for i in range(1500):
    total += os.write(fd, buf[: 1 + (i * 4099) % len(buf)])
os.close(fd)
print(total)
"#;

/// The byte count the Python scripts print when done.
fn printed_total(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("python printed the total")
}

#[test]
fn flood_into_a_tiny_ring_buffer_is_accounted_exactly() {
    let dir = scratch("flood");
    let sink = dir.join("sink.bin");
    let (rec, out) = record(&dir, &["--ring-buffer", "64K"], &[python(), "-c", FLOOD, sink.to_str().unwrap()]);
    let written = printed_total(&out);
    let content = std::fs::read(&sink).unwrap();
    assert_eq!(content.len() as u64, written);

    let s = rec.by_path(&sink);
    assert_eq!(
        s.bytes_out + s.lost_bytes_out,
        written,
        "recorded + lost = written, exactly: {s:?}; counters {:?}",
        rec.counters()
    );
    assert!(s.lost_bytes_out > 0, "a 64 KiB ring cannot keep up with {written} bytes; nothing was lost? {s:?}");
    assert!(s.bytes_out > 0, "nothing recorded at all");
    // Every byte that was recorded is the right byte at the right offset.
    for d in rec.data(s.id) {
        let at = d.offset as usize;
        assert_bytes_eq(&d.payload, &content[at..at + d.payload.len()], &format!("chunk at offset {at}"));
    }
    // Gaps and data tile the stream: no overlap, no hole.
    let mut spans: Vec<(u64, u64)> = rec.data(s.id).iter().map(|d| (d.offset, d.payload.len() as u64)).collect();
    spans.extend(rec.gaps(s.id).iter().filter(|g| g.direction() == Direction::Out).map(|g| (g.offset, g.length)));
    spans.sort();
    let mut end = 0;
    for (offset, len) in spans {
        assert_eq!(offset, end, "stream tiling broken at {offset}");
        end += len;
    }
    assert_eq!(end, written);
    let counters = rec.counters();
    assert!(counters.chunk_bytes_dropped > 0, "kernel counters: {counters:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("larger --ring-buffer (now 64K)"), "record says what to do about the loss: {stderr}");
}

#[test]
fn max_payload_truncation_is_an_explicit_gap() {
    let dir = scratch("max-payload");
    let file = dir.join("out.bin");
    let script = "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT,0o644)\nfor i in range(10): os.write(fd, bytes([48+i])*5000)";
    let (rec, _) = record(&dir, &["--max-payload", "1000"], &[python(), "-c", script, file.to_str().unwrap()]);
    let s = rec.by_path(&file);
    assert_eq!((s.bytes_out, s.lost_bytes_out), (10_000, 40_000), "{s:?}");
    let recorded = rec.bytes(s.id, Direction::Out);
    let want: Vec<u8> = (0..10u8).flat_map(|i| vec![48 + i; 1000]).collect();
    assert_eq!(recorded, want);
    let gaps = rec.gaps(s.id);
    assert_eq!(gaps.len(), 10);
    for (i, g) in gaps.iter().enumerate() {
        assert_eq!(gap_reason_name(g.reason()), "max_payload");
        assert_eq!((g.offset, g.length), (i as u64 * 5000 + 1000, 4000));
    }
}

const REOPEN: &str = r#"
import os, sys
d = sys.argv[1]
total = 0
for i in range(1000):
    fd = os.open(f"{d}/f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total += os.write(fd, (f"{i:04d}," * 1000).encode()[: 3000 + i])
    os.close(fd)
print(total)
"#;

#[test]
fn an_fd_reopened_in_dropped_records_never_lends_its_old_name() {
    // A 4 KiB ring drops opens and closes too: fd 3 is reopened 1000 times, often unseen.
    let dir = scratch("reopen");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (rec, out) = record(&dir, &["--ring-buffer", "4K"], &[python(), "-c", REOPEN, files.to_str().unwrap()]);
    let written = printed_total(&out);

    let prefix = format!("{}/f", files.display());
    let mut accounted = 0;
    for s in &rec.streams {
        if s.path.starts_with(&prefix) {
            // A stream named after a file holds that file's bytes only, at their offsets.
            let content = std::fs::read(&s.path).unwrap();
            for d in rec.data(s.id) {
                let at = d.offset as usize;
                assert!(at + d.payload.len() <= content.len(), "{}: bytes beyond its end at {at}", s.path);
                assert_bytes_eq(&d.payload, &content[at..at + d.payload.len()], &format!("{} at {at}", s.path));
            }
            // Bytes lost around an unseen close go to the unknown stream after it, never here.
            assert!(s.bytes_out + s.lost_bytes_out <= content.len() as u64, "{s:?}");
            accounted += s.bytes_out + s.lost_bytes_out;
        } else if s.path.contains("reopened while records were dropped") {
            accounted += s.bytes_out + s.lost_bytes_out;
        }
    }
    assert_eq!(accounted, written, "every byte written is in a file's stream or an unknown one");
}

/// Each file is closed with close_range and its fd number is taken next by an fd received over a
/// unix socket (a call Retrace does not follow), then by an eventfd (one it does). The agent
/// reads the received fd's first write after the process has moved on: asking /proc then
/// named it after the next file (176 of 1000 streams, with eventfds, in one run).
const UNTRACKED_REUSE: &str = r#"
import os, socket, sys
d = sys.argv[1]
a, b = socket.socketpair()
r, w = os.pipe()
total = 0
for i in range(1000):
    fd = os.open(f"{d}/f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total += os.write(fd, (f"{i:04d}," * 1000).encode()[: 3000 + i])
    os.closerange(fd, fd + 1)
    socket.send_fds(a, [b"x"], [w])
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    assert fds == [fd]
    os.write(fd, b"received")
    os.read(r, 8)
    os.close(fd)
    e = os.eventfd(0)
    assert e == fd
    os.eventfd_write(e, 1)
    os.close(e)
print(total)
"#;

#[test]
fn an_fd_from_a_call_retrace_does_not_follow_is_never_named_after_a_file() {
    let dir = scratch("untracked-fd");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (rec, out) = record(&dir, &[], &[python(), "-c", UNTRACKED_REUSE, files.to_str().unwrap()]);
    let written = printed_total(&out);
    let prefix = format!("{}/f", files.display());
    // A stream's bytes, from the records already in memory (`Rec::bytes` reads the recording
    // again for every stream).
    let written_to = |id: u64| -> Vec<u8> {
        let mut bytes = Vec::new();
        for d in rec.data(id) {
            assert_eq!(d.offset as usize, bytes.len(), "stream {id}: records in order, no gap");
            bytes.extend_from_slice(&d.payload);
        }
        bytes
    };
    let (mut named, mut in_files, mut untracked, mut eventfds) = (0, 0, 0, 0);
    for s in &rec.streams {
        if s.path.starts_with(&prefix) {
            // Exactly the file's bytes: none of what later took its number.
            named += 1;
            let content = std::fs::read(&s.path).unwrap();
            assert_bytes_eq(&written_to(s.id), &content, &s.path);
            in_files += s.bytes_out;
        } else if s.path.contains("opened by a call Retrace does not follow") {
            untracked += 1;
            assert_bytes_eq(&written_to(s.id), b"received", &s.path);
        } else if s.path == "anon_inode:[eventfd]" {
            eventfds += 1;
            assert_bytes_eq(&written_to(s.id), &1u64.to_ne_bytes(), &s.path);
        }
    }
    assert_eq!((named, untracked, eventfds), (1000, 1000, 1000), "a stream per file, received fd and eventfd");
    assert_eq!(in_files, written);
}

const THREADS_AND_CHILD: &str = r#"
import os, sys, threading
d = sys.argv[1]
block = bytes(range(256)) * 256
def flood(name, n):
    fd = os.open(f"{d}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(n):
        os.write(fd, block[: 1 + (i * 7919) % len(block)])
    os.close(fd)
pid = os.fork()
if pid == 0:
    flood("child.bin", 1500)
    os._exit(0)
threads = [threading.Thread(target=flood, args=(f"thread{t}.bin", 1500)) for t in range(2)]
for t in threads: t.start()
for t in threads: t.join()
os.waitpid(pid, 0)
"#;

#[test]
fn backpressure_pauses_the_writers_instead_of_dropping_payload() {
    // Two threads and a child flood a 1 MiB ring: ~150 MB, which loses most of it without
    // backpressure (the test above); with it, every byte is recorded.
    let dir = scratch("backpressure");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let (rec, out) = record(
        &dir,
        &["--ring-buffer", "1M", "--backpressure"],
        &[python(), "-c", THREADS_AND_CHILD, files.to_str().unwrap()],
    );
    for name in ["thread0.bin", "thread1.bin", "child.bin"] {
        let path = files.join(name);
        let content = std::fs::read(&path).unwrap();
        let s = rec.by_path(&path);
        assert_eq!(s.lost_bytes_out, 0, "{name}: {s:?}; counters {:?}", rec.counters());
        assert_bytes_eq(&rec.bytes(s.id, Direction::Out), &content, name);
    }
    let counters = rec.counters();
    assert!(counters.pauses > 0, "a 1 MiB ring must have filled up: {counters:?}");
    assert_eq!(counters.chunk_bytes_dropped + counters.records_dropped, 0, "{counters:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("paused {} times", counters.pauses)), "{stderr}");
}

/// A process that rewrites 64 KiB at offset 0 of `sink` as fast as it can, until killed.
fn flooder(sink: &std::path::Path) -> std::process::Child {
    let script = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\nb = b'x' * 65536\nwhile True: os.pwrite(fd, b, 0)";
    let child = std::process::Command::new(python()).args(["-c", script, sink.to_str().unwrap()]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    child
}

/// The process's state letter (`/proc/PID/stat`), sampled ten times over half a second.
fn states(pid: u32) -> Vec<String> {
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')').next().unwrap().split_whitespace().next().unwrap().to_owned()
    };
    (0..10).map(|_| (std::thread::sleep(std::time::Duration::from_millis(50)), state()).1).collect()
}

fn backpressure_args<'a>(rec: &'a str, pid: &'a str) -> Vec<&'a str> {
    vec!["record", "-o", rec, "--pid", pid, "--ring-buffer", "1M", "--backpressure"]
}

#[test]
fn an_attached_process_is_not_left_paused_when_the_recording_ends() {
    // Paused processes are resumed after the probes are detached, so the last pause of a
    // process that floods on after the recording is answered too.
    let dir = scratch("backpressure-attach");
    let sink = dir.join("sink.bin");
    let mut flooder = flooder(&sink);
    let (rec_dir, pid) = (dir.join("rec"), flooder.id().to_string());
    let mut args = backpressure_args(rec_dir.to_str().unwrap(), &pid);
    args.extend(["--duration", "1"]);
    let out = retrace(&args);
    let states = states(flooder.id());
    flooder.kill().unwrap();
    flooder.wait().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(states.iter().all(|s| s != "T"), "the flooder was left stopped: {states:?}");
    let rec = retrace_tests::Rec::open(&rec_dir);
    assert!(rec.counters().pauses > 0, "{:?}", rec.counters());
    let s = rec.by_path(&sink);
    assert_eq!(s.lost_bytes_out, 0, "{s:?}");
    assert!(s.bytes_out > 1 << 20, "{s:?}");
}

#[test]
fn a_recorder_killed_with_sigkill_leaves_no_process_paused() {
    // Without the resume guard, a flooder paused at that moment stayed stopped (5 runs in 5).
    let dir = scratch("backpressure-kill");
    let mut flooder = flooder(&dir.join("sink.bin"));
    let (rec_dir, pid) = (dir.join("rec"), flooder.id().to_string());
    let mut recorder = retrace_tests::retrace_command()
        .args(backpressure_args(rec_dir.to_str().unwrap(), &pid))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    recorder.kill().unwrap();
    recorder.wait().unwrap();
    let states = states(flooder.id());
    flooder.kill().unwrap();
    flooder.wait().unwrap();
    assert!(states.iter().all(|s| s != "T"), "the flooder was left stopped: {states:?}");
}
