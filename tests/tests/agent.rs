//! The node agent against real parts: capture requests in a folder, a real cgroup v2, a real S3
//! API on loopback (moto), promtool on its metrics; SIGTERM seals and uploads; what an earlier
//! run left in the spool is uploaded at start; a storage outage, a full spool and a kill -9
//! lose nothing that is not counted.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use retrace_tests::{assert_bytes_eq, record, scratch, test_identity, Gate, S3};

fn http_get(port: u16, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_owned(), body.to_owned())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(spool: &Path, namespace: &str, name: &str) -> serde_json::Value {
    std::fs::read(spool.join("status").join(format!("{namespace}.{name}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn capture(dir: &Path, file: &str, namespace: &str, name: &str, selector: &str, duration: &str) {
    std::fs::write(
        dir.join(file),
        format!(
            "apiVersion: retrace.dev/v1alpha1\nkind: RetraceCapture\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  selector: {{{selector}}}\n  duration: {duration}\n"
        ),
    )
    .unwrap();
}

/// The stream id of `path` in the recording at `url`.
fn stream_of(s3: &S3, url: &str, path: &Path) -> String {
    let out = s3.retrace(&["streams", url, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|s| s["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no stream for {} in {url}", path.display()))["id"]
        .to_string()
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_records_requested_cgroups_uploads_them_and_drains_on_sigterm() {
    let dir = scratch("agent");
    let s3 = S3::start();
    assert_eq!(s3.curl("PUT", "retrace-cluster"), "200");
    let (captures, spool) = (dir.join("captures"), dir.join("spool"));
    std::fs::create_dir_all(&captures).unwrap();
    // A recording an earlier run finished but did not upload.
    let leftover_file = dir.join("leftover.txt");
    std::fs::write(&leftover_file, "left in the spool\n").unwrap();
    let (_, out) = record(&dir, &[], &["cat", leftover_file.to_str().unwrap()]);
    assert!(out.status.success());
    let leftover = spool.join("shop/old/node-a-1");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::rename(dir.join("rec"), &leftover).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let recipient = test_identity().to_public().to_string();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_name = \"node-a\"\ncaptures_dir = \"{}\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{recipient}\"]\nseal_threads = 2\n[upload]\nurl = \"s3://retrace-cluster/recordings\"\n",
            captures.display(),
            spool.display()
        ),
    )
    .unwrap();
    let mut cmd = retrace_tests::retrace_command();
    let agent = Agent(
        s3.env(&mut cmd).args(["agent", "--config", config.to_str().unwrap()]).stderr(Stdio::piped()).spawn().unwrap(),
    );
    wait_for("/healthz", Duration::from_secs(20), || http_get(port, "/healthz").0 == "200");
    assert_eq!(http_get(port, "/readyz").0, "200");
    // The leftover went up, then left the spool.
    wait_for("the leftover's upload", Duration::from_secs(20), || !leftover.exists());
    let url = "s3://retrace-cluster/recordings/shop/old/node-a-1";
    let cat = s3.retrace(&["cat", url, &stream_of(&s3, url, &leftover_file), "--in"]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "left in the spool\n");

    // A request for a cgroup: a process that execs there later is recorded.
    let cgroup = retrace_tests::cgroup2_mount().join(format!("retrace-agent-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let requested = retrace_tests::retrace(&[
        "capture",
        "start",
        "checkout",
        "-n",
        "shop",
        "--dir",
        captures.to_str().unwrap(),
        "--cgroup",
        cgroup.to_str().unwrap(),
        "--duration",
        "4s",
    ]);
    assert!(requested.status.success(), "{}", String::from_utf8_lossy(&requested.stderr));
    // kube-system is denied by default.
    capture(&captures, "dns.yaml", "kube-system", "dns", "pid: 1", "2s");
    wait_for("the capture to start", Duration::from_secs(20), || {
        status(&spool, "shop", "checkout")["phase"] == "Recording"
    });
    // `seal_threads = 2`: the capture's segments are sealed by a pool of two threads (the
    // bytes read back below are then the pool's work).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", agent.0.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert_eq!(threads.iter().filter(|c| c.starts_with("retrace-seal-")).count(), 2, "{threads:?}");
    std::thread::sleep(Duration::from_millis(500));
    let data = dir.join("data.bin");
    std::fs::write(&data, retrace_tests::pattern(200_000, 9)).unwrap();
    let procs = cgroup.join("cgroup.procs");
    let ran = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec cat {}", procs.display(), data.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ran.success());
    wait_for("the upload", Duration::from_secs(30), || status(&spool, "shop", "checkout")["phase"] == "Uploaded");
    let done = status(&spool, "shop", "checkout");
    let url = done["uploadedTo"].as_str().unwrap().to_owned();
    assert!(url.starts_with("s3://retrace-cluster/recordings/shop/checkout/node-a-"), "{done}");
    let cat = s3.retrace(&["cat", &url, &stream_of(&s3, &url, &data), "--in"]);
    assert_bytes_eq(&cat.stdout, &std::fs::read(&data).unwrap(), "the cgroup's process, read back from S3");
    assert_eq!(status(&spool, "kube-system", "dns")["phase"], "Rejected");
    let listed = retrace_tests::retrace(&[
        "capture",
        "list",
        "--dir",
        captures.to_str().unwrap(),
        "--spool",
        spool.to_str().unwrap(),
    ]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.lines().any(|l| l.starts_with("shop/checkout") && l.contains("Uploaded")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("kube-system/dns") && l.contains("Rejected")), "{listed}");

    // Withdrawing a request stops its capture early; what it recorded is uploaded.
    let dir_s = captures.to_str().unwrap();
    let cg = cgroup.to_str().unwrap();
    let start = ["capture", "start", "brief", "-n", "shop", "--dir", dir_s, "--cgroup", cg, "--duration", "10m"];
    assert!(retrace_tests::retrace(&start).status.success());
    wait_for("the brief capture", Duration::from_secs(20), || status(&spool, "shop", "brief")["phase"] == "Recording");
    let withdrawn = retrace_tests::retrace(&["capture", "stop", "brief", "-n", "shop", "--dir", dir_s]);
    assert!(withdrawn.status.success(), "{}", String::from_utf8_lossy(&withdrawn.stderr));
    wait_for("the brief capture's upload", Duration::from_secs(20), || {
        status(&spool, "shop", "brief")["phase"] == "Uploaded"
    });

    // A byte budget: a 10-minute capture ends once its recording holds maxBytes.
    std::fs::write(
        captures.join("budget.yaml"),
        format!(
            "apiVersion: retrace.dev/v1alpha1\nkind: RetraceCapture\nmetadata: {{name: budget, namespace: shop}}\nspec:\n  selector: {{cgroup: {}}}\n  duration: 10m\n  maxBytes: 65536\n",
            cgroup.display()
        ),
    )
    .unwrap();
    wait_for("the budget capture", Duration::from_secs(20), || {
        status(&spool, "shop", "budget")["phase"] == "Recording"
    });
    let big = dir.join("big.bin");
    std::fs::write(&big, retrace_tests::pattern(2 << 20, 12)).unwrap();
    let ran = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec cat {}", procs.display(), big.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ran.success());
    wait_for("the budget capture to end", Duration::from_secs(30), || {
        status(&spool, "shop", "budget")["phase"] == "Uploaded"
    });
    assert!(status(&spool, "shop", "budget")["bytes"].as_u64().unwrap() >= 65536);

    // A pod by UID, one container of it (a cgroupfs-driver layout under the real cgroup v2 tree).
    let uid = format!("0000{:04x}-aaaa-bbbb-cccc-0123456789ab", std::process::id() & 0xffff);
    let pod = retrace_tests::cgroup2_mount()
        .join(format!("retrace-kubepods-{}", std::process::id()))
        .join(format!("pod{uid}"));
    let container = pod.join("c0ffee");
    std::fs::create_dir_all(&container).unwrap();
    capture(&captures, "pod.yaml", "shop", "pod", &format!("podUID: {uid}, containerID: containerd://c0ffee"), "4s");
    wait_for("the pod's capture", Duration::from_secs(20), || status(&spool, "shop", "pod")["phase"] == "Recording");
    std::thread::sleep(Duration::from_millis(300));
    let in_pod = dir.join("in-pod.bin");
    std::fs::write(&in_pod, retrace_tests::pattern(30_000, 77)).unwrap();
    let ran = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec cat {}", container.join("cgroup.procs").display(), in_pod.display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ran.success());
    wait_for("the pod's upload", Duration::from_secs(30), || status(&spool, "shop", "pod")["phase"] == "Uploaded");
    let url = status(&spool, "shop", "pod")["uploadedTo"].as_str().unwrap().to_owned();
    let cat = s3.retrace(&["cat", &url, &stream_of(&s3, &url, &in_pod), "--in"]);
    assert_bytes_eq(&cat.stdout, &std::fs::read(&in_pod).unwrap(), "the pod's container");
    let _ = std::fs::remove_dir(&container);
    let _ = std::fs::remove_dir(&pod);
    let _ = std::fs::remove_dir(pod.parent().unwrap());

    // Two captures at once, on one probe set: each recording holds its own cgroup's process only.
    let mut urls = Vec::new();
    let mut files = Vec::new();
    let mut cgroups = Vec::new();
    for name in ["left", "right"] {
        let cg = retrace_tests::cgroup2_mount().join(format!("retrace-agent-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&cg).unwrap();
        let start = [
            "capture",
            "start",
            name,
            "-n",
            "pair",
            "--dir",
            dir_s,
            "--cgroup",
            cg.to_str().unwrap(),
            "--duration",
            "3s",
        ];
        assert!(retrace_tests::retrace(&start).status.success());
        let file = dir.join(format!("{name}.bin"));
        std::fs::write(&file, retrace_tests::pattern(50_000, name.len() as u64)).unwrap();
        files.push(file);
        cgroups.push(cg);
    }
    for name in ["left", "right"] {
        wait_for("both captures", Duration::from_secs(20), || status(&spool, "pair", name)["phase"] == "Recording");
    }
    std::thread::sleep(Duration::from_millis(300));
    for (cg, file) in cgroups.iter().zip(&files) {
        let ran = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec cat {}", cg.join("cgroup.procs").display(), file.display()))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ran.success());
    }
    for name in ["left", "right"] {
        wait_for("both uploads", Duration::from_secs(30), || status(&spool, "pair", name)["phase"] == "Uploaded");
        urls.push(status(&spool, "pair", name)["uploadedTo"].as_str().unwrap().to_owned());
    }
    for (i, url) in urls.iter().enumerate() {
        let cat = s3.retrace(&["cat", url, &stream_of(&s3, url, &files[i]), "--in"]);
        assert_bytes_eq(&cat.stdout, &std::fs::read(&files[i]).unwrap(), "its own cgroup's process");
        let streams = s3.retrace(&["streams", url, "--json"]);
        let other = files[1 - i].to_str().unwrap();
        assert!(!String::from_utf8_lossy(&streams.stdout).contains(other), "{url} holds the other capture's file");
    }
    for cg in &cgroups {
        let _ = std::fs::remove_dir(cg);
    }

    // Metrics: valid exposition format, and what happened.
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, "200");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(metrics.contains("retrace_recordings_uploaded_total 7"), "{metrics}");
    assert!(metrics.contains("retrace_captures_started_total 6"), "{metrics}");
    assert!(metrics.contains("retrace_probe_sets 1"), "{metrics}");
    assert!(metrics.contains("retrace_captures_rejected_total{reason=\"policy\"} 1"), "{metrics}");

    // A long capture, cut short by SIGTERM: sealed, uploaded, and the agent exits 0.
    capture(&captures, "long.yaml", "shop", "long", &format!("cgroup: {}", cgroup.display()), "10m");
    wait_for("the long capture", Duration::from_secs(20), || status(&spool, "shop", "long")["phase"] == "Recording");
    let mut agent = agent;
    // SAFETY: SIGTERM to the agent we started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let exit = agent.0.wait().unwrap();
    assert!(exit.success(), "{exit}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(status(&spool, "shop", "long")["phase"], "Uploaded");
    let left: Vec<PathBuf> =
        ["shop/checkout", "shop/long", "shop/old", "shop/brief", "shop/pod", "shop/budget", "pair/left", "pair/right"]
            .iter()
            .flat_map(|d| std::fs::read_dir(spool.join(d)).into_iter().flatten().flatten().map(|e| e.path()))
            .collect();
    assert!(left.is_empty(), "left in the spool: {left:?}");
    let _ = std::fs::remove_dir(&cgroup);
}

fn spawn_agent(s3: &S3, config: &Path, log: &Path) -> Agent {
    let mut cmd = retrace_tests::retrace_command();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Agent(s3.env(&mut cmd).args(["agent", "--config", config.to_str().unwrap()]).stderr(log).spawn().unwrap())
}

/// Runs `sh -c script` as a process of `cgroup`.
fn run_in(cgroup: &Path, script: &str) {
    let ran = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && {script}", cgroup.join("cgroup.procs").display()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ran.success());
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http_get(port, "/metrics");
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn the_spool_rides_out_a_storage_outage_within_its_bound_and_a_kill_9_uploads_each_segment_once() {
    let dir = scratch("agent-faults");
    let s3 = S3::start();
    assert_eq!(s3.curl("PUT", "faults"), "200");
    // The agent reaches S3 through a relay the test can cut and slow down.
    let gate = Gate::new(s3.endpoint.rsplit(':').next().unwrap().parse().unwrap());
    let (captures, spool) = (dir.join("captures"), dir.join("spool"));
    std::fs::create_dir_all(&captures).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let max = 1_000_000u64;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_name = \"node-b\"\ncaptures_dir = \"{}\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{}\"]\nspool_max_bytes = {max}\ndrain_timeout = \"3s\"\n[upload]\nurl = \"s3://faults/rec\"\nendpoint = \"{}\"\n",
            captures.display(),
            spool.display(),
            test_identity().to_public(),
            gate.endpoint()
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let agent = spawn_agent(&s3, &config, &log);
    wait_for("/healthz", Duration::from_secs(20), || http_get(port, "/healthz").0 == "200");
    let cgroup = retrace_tests::cgroup2_mount().join(format!("retrace-faults-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let cg = format!("cgroup: {}", cgroup.display());
    let file = |name: &str, len: usize| {
        let path = dir.join(name);
        std::fs::write(&path, retrace_tests::pattern(len, name.len() as u64 * 31 + len as u64)).unwrap();
        path
    };
    let read_back = |url: &str, path: &Path| {
        let cat = s3.retrace(&["cat", url, &stream_of(&s3, url, path), "--in"]);
        assert_bytes_eq(&cat.stdout, &std::fs::read(path).unwrap(), &format!("{} from {url}", path.display()));
    };

    // A running capture's sealed segments go up while it records.
    let (a1, a2) = (file("a1.bin", 300_000), file("a2.bin", 300_000));
    capture(&captures, "stream.yaml", "shop", "stream", &cg, "6s");
    wait_for("the stream capture", Duration::from_secs(20), || {
        status(&spool, "shop", "stream")["phase"] == "Recording"
    });
    std::thread::sleep(Duration::from_millis(300));
    run_in(&cgroup, &format!("cat {} && sleep 1.5 && cat {}", a1.display(), a2.display()));
    wait_for("a segment uploaded while recording", Duration::from_secs(20), || {
        let s = status(&spool, "shop", "stream");
        s["phase"] == "Recording" && s["segmentsUploaded"].as_u64().unwrap_or(0) >= 1
    });
    wait_for("the stream capture's upload", Duration::from_secs(30), || {
        status(&spool, "shop", "stream")["phase"] == "Uploaded"
    });
    let url = status(&spool, "shop", "stream")["uploadedTo"].as_str().unwrap().to_owned();
    read_back(&url, &a1);
    read_back(&url, &a2);

    // Storage away: ended captures wait in the spool, which stays within its bound by dropping
    // the oldest segments of the oldest ended capture; then storage returns and it drains.
    gate.close();
    // Each byte is recorded twice: cat reads it, then writes it.
    let (b1, b2) = (file("b1.bin", 300_000), file("b2.bin", 250_000));
    for (name, path) in [("first", &b1), ("second", &b2)] {
        capture(&captures, &format!("{name}.yaml"), "shop", name, &cg, "3s");
        wait_for("an outage capture", Duration::from_secs(20), || status(&spool, "shop", name)["phase"] == "Recording");
        std::thread::sleep(Duration::from_millis(300));
        run_in(&cgroup, &format!("exec cat {}", path.display()));
        wait_for("an outage capture to end", Duration::from_secs(30), || {
            status(&spool, "shop", name)["phase"] == "Uploading"
        });
    }
    wait_for("segments evicted", Duration::from_secs(20), || metric(port, "retrace_spool_evicted_segments_total") > 0);
    std::thread::sleep(Duration::from_millis(600));
    let held = metric(port, "retrace_spool_bytes");
    assert!(held <= max, "the spool holds {held} bytes, over its bound of {max}");
    assert!(status(&spool, "shop", "first")["lastError"].is_string(), "{}", status(&spool, "shop", "first"));
    assert!(metric(port, "retrace_upload_errors_total{reason=\"storage\"}") > 0);
    gate.open();
    for name in ["first", "second"] {
        wait_for("the spool to drain", Duration::from_secs(90), || status(&spool, "shop", name)["phase"] == "Uploaded");
    }
    let first = status(&spool, "shop", "first")["uploadedTo"].as_str().unwrap().to_owned();
    let second = status(&spool, "shop", "second")["uploadedTo"].as_str().unwrap().to_owned();
    read_back(&second, &b2);
    let verified = s3.retrace(&["verify", &first]);
    let text = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{text}");
    assert!(text.contains("dropped by the node agent's full spool"), "{text}");
    assert!(status(&spool, "shop", "first")["segmentsEvicted"].as_u64().unwrap() >= 1);

    // kill -9 in the middle of an upload, then a restart: every segment arrives, once, and the
    // request that ended is not recorded again.
    gate.close();
    let (c1, c2) = (file("c1.bin", 200_000), file("c2.bin", 200_000));
    capture(&captures, "crash.yaml", "shop", "crash", &cg, "4s");
    wait_for("the crash capture", Duration::from_secs(20), || status(&spool, "shop", "crash")["phase"] == "Recording");
    std::thread::sleep(Duration::from_millis(300));
    run_in(&cgroup, &format!("cat {} && sleep 1.2 && cat {}", c1.display(), c2.display()));
    wait_for("the crash capture to end", Duration::from_secs(30), || {
        status(&spool, "shop", "crash")["phase"] == "Uploading"
    });
    gate.delay_us.store(40_000, std::sync::atomic::Ordering::Relaxed);
    gate.open();
    let prefix = "rec/shop/crash/";
    wait_for("a first segment up", Duration::from_secs(60), || {
        let keys = s3.list("faults", prefix);
        keys.iter().any(|(k, _)| k.contains("seg-")) && !keys.iter().any(|(k, _)| k.ends_with("manifest.json"))
    });
    let mut agent = agent;
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    gate.delay_us.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut agent = spawn_agent(&s3, &config, &log);
    wait_for("the upload after the restart", Duration::from_secs(90), || {
        status(&spool, "shop", "crash")["phase"] == "Uploaded"
    });
    let url = status(&spool, "shop", "crash")["uploadedTo"].as_str().unwrap().to_owned();
    let verified = s3.retrace(&["verify", &url]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    read_back(&url, &c1);
    read_back(&url, &c2);
    // Exactly the manifest and the segments it lists, under one recording.
    let keys = s3.list("faults", prefix);
    let leaf = url.trim_end_matches('/').rsplit('/').next().unwrap();
    assert!(keys.iter().all(|(k, _)| k.starts_with(&format!("{prefix}{leaf}/"))), "recorded twice: {keys:?}");
    let manifest: serde_json::Value = {
        let out = Command::new("curl")
            .args(["-s", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"])
            .arg(format!("{}/faults/{prefix}{leaf}/manifest.json", s3.endpoint))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut expected: Vec<(String, u64)> = manifest["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (format!("{prefix}{leaf}/{}", s["name"].as_str().unwrap()), s["bytes"].as_u64().unwrap()))
        .collect();
    let manifest_key = format!("{prefix}{leaf}/manifest.json");
    expected.push((manifest_key.clone(), keys.iter().find(|(k, _)| *k == manifest_key).unwrap().1));
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(manifest["complete"], true);

    // SAFETY: SIGTERM to the agent we started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    assert!(agent.0.wait().unwrap().success());
    let _ = std::fs::remove_dir(&cgroup);
}

/// A stand-in for the Kubernetes API server (none can be installed here): list and watch
/// (chunked JSON events) of pods and `RetraceCapture` objects, honouring the pods' field
/// selector on `spec.nodeName`, and merge patches of a capture's status. Nothing else.
struct ApiServer {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<ApiState>>,
}

#[derive(Default)]
struct ApiState {
    version: u64,
    /// (resource, event type, object, version)
    events: Vec<(String, String, serde_json::Value, u64)>,
    objects: std::collections::BTreeMap<(String, String), serde_json::Value>,
    /// (path, body) of every PATCH.
    patches: Vec<(String, serde_json::Value)>,
    /// Request lines seen.
    requests: Vec<String>,
}

const PODS: &str = "/api/v1/pods";
const CAPTURES: &str = "/apis/retrace.dev/v1alpha1/retracecaptures";
const CONFIGMAPS: &str = "/api/v1/configmaps";

impl ApiServer {
    fn start() -> ApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ApiState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve_api(conn, state));
            }
        });
        ApiServer { port, state }
    }

    fn key(object: &serde_json::Value) -> String {
        format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        )
    }

    /// Adds or changes an object of `resource` (`PODS` or `CAPTURES`).
    fn put(&self, resource: &str, mut object: serde_json::Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = serde_json::json!(version.to_string());
        let key = (resource.to_owned(), ApiServer::key(&object));
        let kind = if state.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        state.objects.insert(key, object.clone());
        state.events.push((resource.to_owned(), kind.to_owned(), object, version));
    }

    /// Whether it was there.
    fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let Some(mut object) = state.objects.remove(&(resource.to_owned(), format!("{namespace}/{name}"))) else {
            return false;
        };
        object["metadata"]["resourceVersion"] = serde_json::json!(version.to_string());
        state.events.push((resource.to_owned(), "DELETED".to_owned(), object, version));
        true
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            merge_patch(target.as_object_mut().unwrap().entry(key.clone()).or_insert(serde_json::Value::Null), value);
        }
    }
}

fn serve_api(conn: std::net::TcpStream, state: std::sync::Arc<std::sync::Mutex<ApiState>>) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        state.lock().unwrap().requests.push(format!("{method} {target}"));
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query.replace("%3D", "=").replace("%2F", "/");
        let param =
            |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_owned);
        let resource = if path == PODS {
            PODS
        } else if path == CAPTURES {
            CAPTURES
        } else {
            ""
        };
        let node = param("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned));
        let wanted = |object: &serde_json::Value| node.as_ref().is_none_or(|n| object["spec"]["nodeName"] == *n);
        let respond = |out: &mut std::net::TcpStream, code: &str, body: &serde_json::Value| {
            let text = body.to_string();
            write!(
                out,
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if method == "GET" && !resource.is_empty() && param("watch").is_some_and(|w| w == "true" || w == "1") {
            // A watch: every later event, as chunks, until the client hangs up.
            let from: u64 = param("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            if write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
                return;
            }
            let mut sent = from;
            loop {
                let pending: Vec<(String, serde_json::Value, u64)> = state
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .filter(|(r, _, o, v)| r == resource && *v > sent && wanted(o))
                    .map(|(_, t, o, v)| (t.clone(), o.clone(), *v))
                    .collect();
                for (kind, object, version) in pending {
                    let text = format!("{}\n", serde_json::json!({ "type": kind, "object": object }));
                    if write!(out, "{:x}\r\n{text}\r\n", text.len()).is_err() {
                        return;
                    }
                    sent = version;
                }
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(50));
            }
        } else if method == "GET" && !resource.is_empty() {
            let state = state.lock().unwrap();
            let items: Vec<serde_json::Value> = state
                .objects
                .iter()
                .filter(|((r, _), o)| r == resource && wanted(o))
                .map(|(_, o)| o.clone())
                .collect();
            let kind = if resource == PODS { "PodList" } else { "RetraceCaptureList" };
            let list = serde_json::json!({
                "kind": kind, "apiVersion": if resource == PODS { "v1" } else { "retrace.dev/v1alpha1" },
                "metadata": { "resourceVersion": state.version.to_string() }, "items": items,
            });
            drop(state);
            if respond(&mut out, "200 OK", &list).is_err() {
                return;
            }
        } else if (method == "POST" || method == "DELETE") && path.starts_with("/apis/retrace.dev/v1alpha1/namespaces/") {
            // retrace capture start (POST .../namespaces/NS/retracecaptures) and stop (DELETE .../NAME).
            let parts: Vec<&str> = path.split('/').collect();
            let api = ApiServer { port: 0, state: state.clone() };
            let answer = if method == "POST" {
                let mut object: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                object["metadata"]["namespace"] = serde_json::json!(parts[5]);
                object["metadata"]["uid"] = serde_json::json!(format!("uid-{}", object["metadata"]["name"].as_str().unwrap_or("")));
                api.put(CAPTURES, object.clone());
                object
            } else if api.delete(CAPTURES, parts[5], parts[7]) {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
            } else {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
            };
            let code = match (method.as_str(), answer["code"].as_u64()) {
                ("POST", _) => "201 Created",
                (_, Some(404)) => "404 Not Found",
                _ => "200 OK",
            };
            if respond(&mut out, code, &answer).is_err() {
                return;
            }
        } else if method == "GET" && path.starts_with("/api/v1/namespaces/") && path.contains("/configmaps/") {
            let parts: Vec<&str> = path.split('/').collect();
            let key = (CONFIGMAPS.to_owned(), format!("{}/{}", parts[4], parts[6]));
            let found = state.lock().unwrap().objects.get(&key).cloned();
            let sent = match found {
                Some(object) => respond(&mut out, "200 OK", &object),
                None => respond(&mut out, "404 Not Found", &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})),
            };
            if sent.is_err() {
                return;
            }
        } else if method == "PATCH" && path.starts_with("/apis/retrace.dev/v1alpha1/namespaces/") && path.ends_with("/status") {
            let patch: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let parts: Vec<&str> = path.split('/').collect();
            let key = (CAPTURES.to_owned(), format!("{}/{}", parts[5], parts[7]));
            let mut state = state.lock().unwrap();
            state.patches.push((path.to_owned(), patch.clone()));
            if let Some(object) = state.objects.get_mut(&key) {
                merge_patch(object, &patch);
            }
            let found = state.objects.get(&key).cloned();
            drop(state);
            let sent = match found {
                Some(object) => respond(&mut out, "200 OK", &object),
                None => respond(&mut out, "404 Not Found", &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})),
            };
            if sent.is_err() {
                return;
            }
        } else if respond(&mut out, "404 Not Found", &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})).is_err() {
            return;
        }
    }
}

fn pod(name: &str, uid: &str, node: &str, app: &str, containers: &[(&str, &str)]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "shop", "uid": uid, "labels": { "app": app, "tier": "front" } },
        "spec": {
            "nodeName": node,
            "containers": containers.iter().map(|(n, _)| serde_json::json!({ "name": n, "image": "img" })).collect::<Vec<_>>(),
        },
        "status": {
            "containerStatuses": containers.iter().map(|(n, id)| serde_json::json!({
                "name": n, "containerID": format!("containerd://{id}"), "image": "img", "imageID": "",
                "ready": true, "restartCount": 0,
            })).collect::<Vec<_>>(),
        },
    })
}

/// The stream id of `path` in a local recording.
fn local_stream(recording: &Path, path: &Path) -> Option<String> {
    let out = retrace_tests::retrace(&["streams", recording.to_str().unwrap(), "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|s| s["path"] == path.to_str().unwrap())
        .map(|s| s["id"].to_string())
}

#[test]
fn the_agent_watches_the_api_server_and_follows_the_selected_pods_on_its_node() {
    let dir = scratch("agent-kube");
    let api = ApiServer::start();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{}\"}}\nusers:\n- name: agent\n  user: {{token: test-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\ncurrent-context: fake\n",
            api.port
        ),
    )
    .unwrap();
    // Pods as the kubelet's systemd driver lays them out, under the real cgroup v2 tree.
    let slice = retrace_tests::cgroup2_mount().join(format!("retrace-kubepods-{}.slice", std::process::id()));
    let tag = std::process::id() & 0xffff;
    let uid = |n: u32| format!("{n:04x}{tag:04x}-aaaa-bbbb-cccc-0123456789ab");
    let container_dir = |pod_uid: &str, id: &str| {
        let d = slice
            .join(format!("kubepods-besteffort-pod{}.slice", pod_uid.replace('-', "_")))
            .join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let web1 = (container_dir(&uid(1), "a1"), container_dir(&uid(1), "s1"));
    let db = container_dir(&uid(2), "d1");
    let elsewhere = container_dir(&uid(3), "e1");
    api.put(PODS, pod("web-1", &uid(1), "node-k", "web", &[("app", "a1"), ("sidecar", "s1")]));
    api.put(PODS, pod("db-1", &uid(2), "node-k", "db", &[("app", "d1")]));
    api.put(PODS, pod("web-9", &uid(3), "node-x", "web", &[("app", "e1")]));

    let spool = dir.join("spool");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_name = \"node-k\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{}\"]\n[kubernetes]\nkubeconfig = \"{}\"\n",
            spool.display(),
            test_identity().to_public(),
            kubeconfig.display()
        ),
    )
    .unwrap();
    let mut cmd = retrace_tests::retrace_command();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let agent = Agent(cmd.args(["agent", "--config", config.to_str().unwrap()]).stderr(log).spawn().unwrap());
    wait_for("/readyz after the lists", Duration::from_secs(30), || http_get(port, "/readyz").0 == "200");

    // A request for the app container of the web pods, with redaction rules from a ConfigMap.
    api.put(
        CONFIGMAPS,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "rules", "namespace": "shop" },
            "data": { "rules.toml": "[[rule]]\nname = \"order-key\"\nregex = 'TOPSECRET-[0-9]+'\n" },
        }),
    );
    let request = serde_json::json!({
        "apiVersion": "retrace.dev/v1alpha1", "kind": "RetraceCapture",
        "metadata": { "name": "web", "namespace": "shop", "uid": "c-1" },
        "spec": {
            "selector": {
                "podSelector": { "matchLabels": { "app": "web" }, "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["front"] }] },
                "containers": ["app"],
            },
            "duration": "10m",
            "rules": { "configMapRef": { "name": "rules", "key": "rules.toml" } },
        },
    });
    api.put(CAPTURES, request);
    let targets = |spool: &Path| status(spool, "shop", "web")["targets"].clone();
    wait_for("web-1's app container", Duration::from_secs(20), || {
        status(&spool, "shop", "web")["phase"] == "Recording"
            && targets(&spool) == serde_json::json!(["shop/web-1/app"])
    });
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, retrace_tests::pattern(40_000, name.len() as u64 + 5)).unwrap();
        path
    };
    let (in_app, in_sidecar, in_db, in_other) =
        (file("app.bin"), file("sidecar.bin"), file("db.bin"), file("other.bin"));
    run_in(&web1.0, &format!("exec cat {}", in_app.display()));
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "key=TOPSECRET-4242\n").unwrap();
    run_in(&web1.0, &format!("exec cat {}", secret.display()));
    run_in(&web1.1, &format!("exec cat {}", in_sidecar.display()));
    run_in(&db, &format!("exec cat {}", in_db.display()));
    run_in(&elsewhere, &format!("exec cat {}", in_other.display()));

    // A new pod is followed once it shows up; a deleted one is let go.
    let web2 = container_dir(&uid(4), "a2");
    api.put(PODS, pod("web-2", &uid(4), "node-k", "web", &[("app", "a2")]));
    wait_for("web-2 followed", Duration::from_secs(20), || {
        targets(&spool) == serde_json::json!(["shop/web-1/app", "shop/web-2/app"])
    });
    let in_web2 = file("web2.bin");
    run_in(&web2, &format!("exec cat {}", in_web2.display()));
    assert!(api.delete(PODS, "shop", "web-1"));
    wait_for("web-1 let go", Duration::from_secs(20), || targets(&spool) == serde_json::json!(["shop/web-2/app"]));
    assert!(http_get(port, "/metrics").1.contains("retrace_capture_targets 1"));

    // The request deleted: its capture ends.
    assert!(api.delete(CAPTURES, "shop", "web"));
    wait_for("the capture to end", Duration::from_secs(20), || status(&spool, "shop", "web")["phase"] == "Recorded");
    let recording = std::fs::read_dir(spool.join("shop/web")).unwrap().next().unwrap().unwrap().path();
    for (path, wanted) in [(&in_app, true), (&in_web2, true), (&in_sidecar, false), (&in_db, false), (&in_other, false)]
    {
        match (local_stream(&recording, path), wanted) {
            (Some(id), true) => {
                let cat = retrace_tests::retrace(&["cat", recording.to_str().unwrap(), &id, "--in"]);
                assert_bytes_eq(&cat.stdout, &std::fs::read(path).unwrap(), &path.display().to_string());
            }
            (None, false) => {}
            (found, _) => panic!("{}: recorded {found:?}, wanted {wanted}", path.display()),
        }
    }
    let id = local_stream(&recording, &secret).expect("the secret file's stream");
    let cat = retrace_tests::retrace(&["cat", recording.to_str().unwrap(), &id, "--in"]);
    let text = String::from_utf8_lossy(&cat.stdout).into_owned();
    assert!(text.starts_with("key=") && !text.contains("TOPSECRET-4242"), "not redacted: {text:?}");
    // Its status went to the API server, under this node, as it changed.
    let state = api.state.lock().unwrap();
    let phases: Vec<String> = state
        .patches
        .iter()
        .filter(|(path, _)| path == "/apis/retrace.dev/v1alpha1/namespaces/shop/retracecaptures/web/status")
        .filter_map(|(_, p)| p["status"]["nodes"]["node-k"]["phase"].as_str().map(str::to_owned))
        .collect();
    assert!(phases.iter().any(|p| p == "Recording"), "{phases:?}");
    assert!(state.requests.iter().any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("spec.nodeName")));
    drop(state);

    // `retrace capture` against the API server: start, list with each node's phase, stop.
    let kc = kubeconfig.to_str().unwrap();
    let start =
        ["capture", "start", "quiet", "-n", "shop", "--kubeconfig", kc, "--pods", "app=none", "--container", "app"];
    let started = retrace_tests::retrace(&[&start[..], &["--duration", "10m"]].concat());
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    wait_for("the quiet capture", Duration::from_secs(20), || status(&spool, "shop", "quiet")["phase"] == "Recording");
    wait_for("its status on the API server", Duration::from_secs(20), || {
        let listed = retrace_tests::retrace(&["capture", "list", "--kubeconfig", kc]);
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        text.lines().any(|l| l.starts_with("shop/quiet") && l.contains("node-k:Recording") && l.contains("\"none\""))
    });
    let stopped = retrace_tests::retrace(&["capture", "stop", "quiet", "-n", "shop", "--kubeconfig", kc]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    wait_for("the quiet capture to end", Duration::from_secs(20), || {
        status(&spool, "shop", "quiet")["phase"] == "Recorded"
    });
    let missing = retrace_tests::retrace(&["capture", "stop", "nothing", "-n", "shop", "--kubeconfig", kc]);
    assert!(!missing.status.success());
    drop(agent);
    for d in [&web1.0, &web1.1, &db, &elsewhere, &web2] {
        let _ = std::fs::remove_dir(d);
        let _ = std::fs::remove_dir(d.parent().unwrap());
    }
    let _ = std::fs::remove_dir(&slice);
}

#[test]
fn a_capture_s_rate_cap_is_kept_in_the_kernel_as_counted_gaps_and_never_slows_the_pod() {
    let dir = scratch("agent-rate");
    let (captures, spool) = (dir.join("captures"), dir.join("spool"));
    std::fs::create_dir_all(&captures).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "captures_dir = \"{}\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{}\"]\n",
            captures.display(),
            spool.display(),
            test_identity().to_public()
        ),
    )
    .unwrap();
    let mut cmd = retrace_tests::retrace_command();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let _agent = Agent(cmd.args(["agent", "--config", config.to_str().unwrap()]).stderr(log).spawn().unwrap());
    wait_for("/healthz", Duration::from_secs(20), || http_get(port, "/healthz").0 == "200");
    let cgroup = retrace_tests::cgroup2_mount().join(format!("retrace-rate-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let rate = 300_000u64;
    std::fs::write(
        captures.join("rated.yaml"),
        format!(
            "apiVersion: retrace.dev/v1alpha1\nkind: RetraceCapture\nmetadata: {{name: rated, namespace: shop}}\nspec:\n  selector: {{cgroup: {}}}\n  duration: 3s\n  maxBytesPerSecond: {rate}\n",
            cgroup.display()
        ),
    )
    .unwrap();
    wait_for("the rated capture", Duration::from_secs(20), || status(&spool, "shop", "rated")["phase"] == "Recording");
    std::thread::sleep(Duration::from_millis(300));
    let file = dir.join("big.bin");
    let content = retrace_tests::pattern(4 << 20, 3);
    std::fs::write(&file, &content).unwrap();
    let started = Instant::now();
    run_in(&cgroup, &format!("exec cat {}", file.display()));
    let took = started.elapsed();
    wait_for("the rated capture to end", Duration::from_secs(30), || {
        status(&spool, "shop", "rated")["phase"] == "Recorded"
    });
    let recording = std::fs::read_dir(spool.join("shop/rated")).unwrap().next().unwrap().unwrap().path();
    let rec = retrace_tests::Rec::open(&recording);
    let s = rec.by_path(&file);
    // Every byte moved is accounted for: what was kept, and the rest as rate_limit gaps.
    assert_eq!(s.bytes_in + s.lost_bytes_in, content.len() as u64, "{s:?}");
    // The bucket starts full (a second's worth), then refills at the rate; cat's writes to
    // /dev/null are charged too.
    let kept = s.bytes_in;
    let allowed = rate + rate * (took.as_millis() as u64 + 1000) / 1000;
    assert!(kept > 0 && kept <= allowed, "kept {kept} of {} bytes within {took:?} (allowed {allowed})", content.len());
    assert!(took < Duration::from_secs(3), "the capture slowed its process: {took:?}");
    let gaps = rec.gaps(s.id);
    assert!(!gaps.is_empty());
    assert!(gaps.iter().all(|g| retrace_agent::view::gap_reason_name(g.reason()) == "rate_limit"), "{gaps:?}");
    // What was kept is the file's bytes at their places.
    for d in rec.data(s.id) {
        let at = d.offset as usize;
        assert_eq!(&d.payload[..], &content[at..at + d.payload.len()], "bytes at {at}");
    }
    let _ = std::fs::remove_dir(&cgroup);
}

#[test]
fn over_its_memory_cap_the_agent_starts_no_capture() {
    let dir = scratch("agent-memory");
    let (captures, spool) = (dir.join("captures"), dir.join("spool"));
    std::fs::create_dir_all(&captures).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("agent.toml");
    // 1 MiB: far below what any agent holds.
    std::fs::write(
        &config,
        format!(
            "captures_dir = \"{}\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{}\"]\nmemory_max_bytes = 1048576\n",
            captures.display(),
            spool.display(),
            test_identity().to_public()
        ),
    )
    .unwrap();
    let mut cmd = retrace_tests::retrace_command();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let _agent = Agent(cmd.args(["agent", "--config", config.to_str().unwrap()]).stderr(log).spawn().unwrap());
    wait_for("/healthz", Duration::from_secs(20), || http_get(port, "/healthz").0 == "200");
    capture(&captures, "held.yaml", "shop", "held", "pid: 1", "5s");
    wait_for("the request to wait", Duration::from_secs(20), || {
        let s = status(&spool, "shop", "held");
        s["phase"] == "Pending" && s["reason"].as_str().is_some_and(|r| r.contains("memory_max_bytes"))
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status(&spool, "shop", "held")["phase"], "Pending");
    assert!(metric(port, "retrace_agent_resident_memory_bytes") > 1 << 20);
}
