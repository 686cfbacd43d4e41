//! The CLI: exit statuses, one-line errors for bad input, the JSON stream table, cat, inspect.

use retrace_tests::{assert_no_panic, record, retrace, scratch};

fn fails_with(args: &[&str], needle: &str) {
    let out = retrace(args);
    assert_no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "retrace {args:?} should fail");
    assert!(stderr.contains(needle), "retrace {args:?}: expected {needle:?} in {stderr:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line of error, got {stderr:?}");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = scratch("cli-errors");
    let rec = dir.join("r");
    let r = rec.to_str().unwrap();
    fails_with(&["record", "-o", r, "--pid", "999999999"], "no process with PID 999999999");
    fails_with(&["record", "-o", r], "nothing to record");
    fails_with(&["record", "-o", r, "--ring-buffer", "3000", "--", "true"], "power of two");
    fails_with(&["record", "-o", r, "--ring-buffer", "12Q", "--", "true"], "not a size");
    fails_with(&["record", "-o", r, "--", "/no/such/program"], "command not found");
    fails_with(&["record", "-o", r, "--cpus", "99999", "--", "true"], "not a CPU list");
    fails_with(&["record", "-o", r, "--cpus", "1-x", "--", "true"], "not a CPU list");
    fails_with(&["streams", "/no/such/recording"], "no recording at");
    fails_with(&["cat", "/no/such/recording", "1", "--in"], "no recording at");
    fails_with(&["inspect", "/no/such/recording"], "no recording at");
    // A failed attempt leaves nothing behind, and a recording is never overwritten.
    assert!(!rec.join("manifest.json").exists());
    let (_, _) = record(&dir, &[], &["true"]);
    fails_with(&["record", "-o", dir.join("rec").to_str().unwrap(), "--", "true"], "already holds a recording");
    fails_with(&["cat", dir.join("rec").to_str().unwrap(), "4242", "--in"], "no stream 4242");
}

/// `--cpus`: every thread of the recorder runs on the CPU given, the launched command keeps the
/// CPUs it would have had, and what it does is recorded as usual.
#[test]
fn cpus_confine_the_recorder_not_the_command() {
    let dir = scratch("cli-cpus");
    let allowed: Vec<usize> = {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned();
        retrace_agent::cpus::parse(&list).expect("our own CPU list parses")
    };
    let agent_cpu = *allowed.last().unwrap();
    // The command reports its own CPUs and those of every thread of its parent, the recorder.
    let script = "import os\n\
        print('command', sorted(os.sched_getaffinity(0)))\n\
        pp = os.getppid()\n\
        for t in sorted(os.listdir(f'/proc/{pp}/task')):\n\
        \x20   st = open(f'/proc/{pp}/task/{t}/status').read()\n\
        \x20   cpus = [l.split(':')[1].strip() for l in st.splitlines() if l.startswith('Cpus_allowed_list')][0]\n\
        \x20   print('recorder', open(f'/proc/{pp}/task/{t}/comm').read().strip(), cpus)\n";
    let (rec, out) = record(&dir, &["--cpus", &agent_cpu.to_string()], &[retrace_tests::python(), "-c", script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(&format!("command {allowed:?}")), "the command kept its CPUs: {stdout}");
    let threads: Vec<&str> = stdout.lines().filter(|l| l.starts_with("recorder ")).collect();
    assert!(threads.len() >= 4, "the recorder's threads were listed: {stdout}");
    for line in &threads {
        assert!(line.ends_with(&format!(" {agent_cpu}")), "a recorder thread runs elsewhere: {line}");
    }
    let row = rec.find("the command's stdout", |s| s.fd == 1 && s.bytes_out > 0);
    retrace_tests::assert_bytes_eq(
        &rec.bytes(row.id, retrace_agent::model::proto::Direction::Out),
        &out.stdout,
        "stdout",
    );
}

#[test]
fn record_exits_with_the_command_status() {
    let dir = scratch("cli-status");
    let out = retrace(&["record", "-o", dir.join("r").to_str().unwrap(), "--", "sh", "-c", "exit 7"]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn streams_json_cat_and_inspect() {
    let dir = scratch("cli-views");
    let file = dir.join("hello.txt");
    std::fs::write(&file, b"hello, retrace\n").unwrap();
    let (rec, _) = record(&dir, &[], &["cat", file.to_str().unwrap()]);
    let r = dir.join("rec");
    let r = r.to_str().unwrap();

    let out = retrace(&["streams", r, "--json"]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), rec.streams.len());
    for key in
        ["id", "kind", "pid", "path", "local", "peer", "bytes_in", "bytes_out", "lost_bytes_in", "lost_bytes_out"]
    {
        assert!(rows.iter().all(|row| row.get(key).is_some()), "every row has {key}");
    }
    let row = rows.iter().find(|row| row["path"] == file.to_str().unwrap()).expect("the file's stream");
    assert_eq!(row["kind"], "file");
    assert_eq!(row["bytes_in"], 15);

    let id = row["id"].as_u64().unwrap().to_string();
    let out = retrace(&["cat", r, &id, "--in"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello, retrace\n");
    // cat's stdout is the recording's stdout stream: what it wrote.
    let stdout_stream = rec.streams.iter().find(|s| s.fd == 1 && s.bytes_out > 0).expect("stdout stream");
    let out = retrace(&["cat", r, &stdout_stream.id.to_string(), "--out"]);
    assert_eq!(out.stdout, b"hello, retrace\n");

    let out = retrace(&["inspect", r]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("counters:"), "drop counters come first: {:?}", &lines[..2]);
    assert!(text.contains("exec"), "process events in the timeline");
    let out = retrace(&["inspect", r, "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "counters");
}

#[test]
fn readers_end_quietly_when_their_output_is_closed() {
    let dir = scratch("cli-pipe");
    let _ = record(&dir, &[], &["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do cat /etc/hostname > /dev/null; done"]);
    let r = dir.join("rec");
    for args in [vec!["streams"], vec!["inspect"], vec!["streams", "--json"]] {
        let mut cmd = retrace_tests::retrace_command();
        cmd.args(&args).arg(&r).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let out = child.wait_with_output().unwrap();
        assert_no_panic(&out);
        assert!(out.stderr.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_launcher_leaves_no_trace_in_the_recording() {
    // The launched command waits for the probes before exec; that wait must not be recorded
    // (it once showed as a one-byte read on a pipe of the recorder's).
    let dir = scratch("launcher");
    let (rec, _) = record(&dir, &[], &["true"]);
    let foreign: Vec<_> = rec.streams.iter().filter(|s| s.bytes_in + s.bytes_out > 0 && s.kind != "file").collect();
    assert!(foreign.is_empty(), "`true` moves bytes only on files it opens itself: {foreign:#?}");
}
