//! Attach by PID: a process that already holds a connection and a file when Retrace attaches.
//! Both are known by peer/path, marked as joined mid-stream, and what moves after the attach
//! is recorded exactly.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use retrace_agent::model::proto::Direction;
use retrace_tests::{assert_bytes_eq, assert_no_panic, retrace_command, scratch, Rec};

const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = open(sys.argv[2], "wb", buffering=0)
f.write(b"before-attach;")
print("ready", flush=True)
sys.stdin.readline()
c.sendall(b"hello-after-attach\n")
data = b""
while not data.endswith(b"\n"):
    data += c.recv(100)
f.write(b"after:" + data)
c.close()
f.close()
"#;

#[test]
fn attach_to_a_process_with_an_open_connection_and_file() {
    let dir = scratch("attach");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "client closed early");
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"reply-from-server\n").unwrap();
        (got, peer)
    });
    let file = dir.join("out.txt");
    let mut client = Command::new("python3")
        .args(["-c", CLIENT, &server_addr.port().to_string(), file.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(client.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");

    let rec_dir = dir.join("rec");
    let recorder = retrace_command()
        .args(["record", "-o", rec_dir.to_str().unwrap(), "--pid", &client.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The manifest is written right before the target is added to the kernel filter.
    let start = Instant::now();
    while !rec_dir.join("manifest.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "recorder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(client.wait().unwrap().success());
    let out = recorder.wait_with_output().unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "recorder: {}", String::from_utf8_lossy(&out.stderr));
    let (server_got, client_addr) = server.join().unwrap();
    assert_eq!(server_got, b"hello-after-attach\n");

    let rec = Rec::open(&rec_dir);
    assert_eq!(rec.recording.manifest.mode, "attach");
    let conn = rec.find("the pre-existing connection", |s| s.kind == "tcp" && s.peer == server_addr.to_string());
    assert!(conn.joined_mid_stream, "{conn:?}");
    assert_eq!(conn.origin, "attach");
    assert_eq!(conn.local, client_addr.to_string(), "local address of the joined connection");
    assert_bytes_eq(&rec.bytes(conn.id, Direction::Out), b"hello-after-attach\n", "sent after attach");
    assert_bytes_eq(&rec.bytes(conn.id, Direction::In), b"reply-from-server\n", "received after attach");

    let f = rec.by_path(&file);
    assert!(f.joined_mid_stream && f.origin == "attach", "{f:?}");
    assert_bytes_eq(&rec.bytes(f.id, Direction::Out), b"after:reply-from-server\n", "file bytes after attach");
    // The file was joined at its position: the new bytes sit at their true file offset.
    let first = rec.data(f.id)[0].offset;
    assert_eq!(first, "before-attach;".len() as u64, "offset of the first write after attach");
    assert_eq!(std::fs::read(&file).unwrap(), b"before-attach;after:reply-from-server\n");
}

const PREFORK: &str = r#"
import os, sys, time
path = sys.argv[1]
pid = os.fork()
if pid == 0:
    time.sleep(1.5)                      # the recorder attaches to the parent meanwhile
    with open(path, "wb") as f:
        f.write(b"written by the worker after attach")
    os._exit(0)
print(pid, flush=True)
os.waitpid(pid, 0)
"#;

#[test]
fn attach_follows_children_started_before_the_attach() {
    let dir = scratch("attach-prefork");
    let file = dir.join("worker.txt");
    let mut parent =
        Command::new("python3").args(["-c", PREFORK, file.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap();
    let mut worker = String::new();
    BufReader::new(parent.stdout.take().unwrap()).read_line(&mut worker).unwrap();
    let worker: u32 = worker.trim().parse().unwrap();
    let rec_dir = dir.join("rec");
    let out = retrace_command()
        .args(["record", "-o", rec_dir.to_str().unwrap(), "--pid", &parent.id().to_string()])
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(parent.wait().unwrap().success());
    let rec = Rec::open(&rec_dir);
    let f = rec.by_path(&file);
    assert_eq!(f.pid, worker, "the worker forked before the attach wrote it");
    assert_bytes_eq(&rec.bytes(f.id, Direction::Out), b"written by the worker after attach", "worker's write");
}

#[test]
fn a_cgroup_is_recorded_with_the_processes_that_exec_in_it_later_and_nothing_else() {
    let dir = scratch("attach-cgroup");
    let cgroup = retrace_tests::cgroup2_mount().join(format!("retrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let inside = dir.join("inside.bin");
    let outside = dir.join("outside.bin");
    std::fs::write(&inside, retrace_tests::pattern(100_000, 3)).unwrap();
    std::fs::write(&outside, retrace_tests::pattern(1000, 4)).unwrap();
    let procs = cgroup.join("cgroup.procs");
    // Already in the cgroup when recording starts; its child reads later.
    let early = dir.join("early.bin");
    std::fs::write(&early, retrace_tests::pattern(5000, 5)).unwrap();
    let mut resident = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}; sleep 1.5; cat {} > /dev/null", procs.display(), early.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let rec = dir.join("rec");
    let recorder = retrace_command()
        .args(["record", "--duration", "3", "-o", rec.to_str().unwrap(), "--cgroup", cgroup.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rec.join("manifest.json").exists() {
        assert!(Instant::now() < deadline, "the recorder did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Moves itself into the cgroup, then execs: recorded from the exec on.
    let joined = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec cat {}", procs.display(), inside.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(joined.success());
    // Outside the cgroup: not recorded.
    Command::new("cat").arg(&outside).stdout(Stdio::null()).status().unwrap();
    resident.wait().unwrap();
    let out = recorder.wait_with_output().unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir(&cgroup);

    let rec = Rec::open(&rec);
    let joined = rec.by_path(&inside);
    assert_bytes_eq(&rec.bytes(joined.id, Direction::In), &std::fs::read(&inside).unwrap(), "the joined cat's read");
    let early_stream = rec.by_path(&early);
    assert_bytes_eq(
        &rec.bytes(early_stream.id, Direction::In),
        &std::fs::read(&early).unwrap(),
        "the resident's child",
    );
    assert!(
        !rec.streams.iter().any(|s| s.path == outside.to_str().unwrap()),
        "a process outside the cgroup was recorded"
    );
}
