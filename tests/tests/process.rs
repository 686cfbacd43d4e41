//! The process tree: children and grandchildren started after the recording began, and the
//! threads of a multi-threaded writer, are all followed in the kernel.

use std::collections::{HashMap, HashSet};

use retrace_agent::model::proto::Direction;
use retrace_tests::{assert_bytes_eq, pattern, python, record, scratch};

#[test]
fn children_and_grandchildren_are_recorded() {
    let dir = scratch("tree");
    let src = dir.join("source.bin");
    let dst = dir.join("copy.bin");
    let content = pattern(500_000, 2);
    std::fs::write(&src, &content).unwrap();
    // bash forks sh, which forks head: `; true` keeps each shell from exec'ing its last command.
    let script = format!("sh -c 'head -c 300000 {} > {}; true'; true", src.display(), dst.display());
    let (rec, _) = record(&dir, &[], &["bash", "-c", &script]);

    let root = rec.recording.manifest.root_pid;
    let forks: HashMap<u32, u32> =
        rec.processes().iter().filter(|p| p.event == "fork").map(|p| (p.child, p.pid)).collect();
    let head_pid = rec
        .processes()
        .iter()
        .find(|p| p.event == "exec" && p.path.ends_with("/head"))
        .map(|p| p.pid)
        .expect("an exec of head");
    let sh_pid = *forks.get(&head_pid).unwrap_or_else(|| panic!("no fork record for head ({head_pid}): {forks:?}"));
    assert_eq!(forks.get(&sh_pid), Some(&root), "sh ({sh_pid}) is a child of bash ({root}): {forks:?}");
    assert!(rec.processes().iter().any(|p| p.event == "exit" && p.pid == head_pid && p.exit_status == 0));

    // sh opened the redirection target before forking; head, its child, wrote to it.
    let written = rec.by_path(&dst);
    assert!(rec.data(written.id).iter().all(|d| d.pid == head_pid), "writes to copy.bin come from head");
    assert_bytes_eq(&rec.bytes(written.id, Direction::Out), &content[..300_000], "bytes head wrote");
    let read = rec.by_path(&src);
    assert_eq!(read.pid, head_pid, "the grandchild read the source");
    let got = rec.bytes(read.id, Direction::In);
    assert!(got.len() >= 300_000, "head read {} bytes", got.len());
    assert_bytes_eq(&got, &content[..got.len()], "bytes head read");
}

const THREADS: &str = r#"
import os, sys, threading
d = sys.argv[1]
def writer(k):
    fd = os.open(f"{d}/t{k}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for j in range(300):
        os.write(fd, bytes([65 + k]) * (50 + j) + b"|%d|" % j)
    os.close(fd)
ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
"#;

#[test]
fn threads_of_a_multithreaded_writer_are_recorded() {
    let dir = scratch("threads");
    let (rec, _) = record(&dir, &[], &[python(), "-c", THREADS, dir.to_str().unwrap()]);
    let root = rec.recording.manifest.root_pid;
    let mut tids = HashSet::new();
    for k in 0..4 {
        let path = dir.join(format!("t{k}.bin"));
        let stream = rec.by_path(&path);
        assert_eq!(stream.pid, root, "threads belong to the traced process");
        assert_bytes_eq(&rec.bytes(stream.id, Direction::Out), &std::fs::read(&path).unwrap(), &format!("t{k}.bin"));
        assert_eq!(stream.lost_bytes_out, 0);
        let stream_tids: HashSet<u32> = rec.data(stream.id).iter().map(|d| d.tid).collect();
        assert_eq!(stream_tids.len(), 1, "one thread wrote t{k}.bin");
        tids.extend(stream_tids);
    }
    assert_eq!(tids.len(), 4, "four writer threads, each with its own tid: {tids:?}");
    assert!(!tids.contains(&root), "writers are threads, not the main thread");
    assert!(rec.processes().iter().filter(|p| p.event == "thread").count() >= 4);
}

#[test]
fn exit_statuses_of_children_are_recorded() {
    let dir = scratch("exit-status");
    let (rec, _) = record(&dir, &[], &["sh", "-c", "sh -c 'exit 5'; true"]);
    let root = rec.recording.manifest.root_pid;
    let exits: Vec<(u32, i32)> =
        rec.processes().iter().filter(|p| p.event == "exit").map(|p| (p.pid, p.exit_status)).collect();
    assert!(exits.iter().any(|&(pid, status)| pid != root && status == 5), "the inner sh exited with 5: {exits:?}");
    assert!(exits.contains(&(root, 0)), "the outer sh exited with 0: {exits:?}");
}

/// An interactive shell with job control waits for each job with WUNTRACED: a stop there is
/// the user's ^Z, and the shell goes on without the job. `record` holds processes at exec
/// (uprobes, the clock's vDSO patch), but not a job the shell put in a process group of its
/// own: the session's output comes in order, with no job reported stopped.
#[test]
fn an_interactive_shell_sees_no_job_stopped() {
    let dir = scratch("interactive");
    let retrace = retrace_tests::retrace_bin();
    let session = "date +%s; printf 'one\\n' | cat; sh -c 'echo two'; echo three";
    let line =
        format!("{} record -o {} -- bash --norc -ic \"{session}\"", retrace.display(), dir.join("rec").display(),);
    // A terminal of its own (`script`), so bash turns job control on.
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("XDG_CONFIG_HOME", retrace_tests::test_home().join("config"))
        .env("XDG_STATE_HOME", retrace_tests::test_home().join("state"))
        .env_remove("RETRACE_AUDIT_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(!text.contains("Stopped"), "a job was reported stopped:\n{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("retrace:") && !l.contains("job control")).collect();
    assert!(lines.len() >= 4, "{text}");
    assert!(lines[0].trim().parse::<u64>().is_ok(), "{text}");
    assert_eq!(&lines[1..4], ["one", "two", "three"], "{text}");
    assert!(out.status.success(), "{text}");
}
