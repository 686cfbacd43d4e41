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
            "node_name = \"node-a\"\ncaptures_dir = \"{}\"\nspool_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nrecipients = [\"{recipient}\"]\n[upload]\nurl = \"s3://retrace-cluster/recordings\"\n",
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
