//! Replay in the sandbox: real programs (curl, redis-cli, python) fed a recording with their
//! real peers gone; servers fed their recorded clients; egress refused; divergence reported.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{TcpListener, UdpSocket},
    os::unix::net::UnixListener,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use retrace_tests::{assert_bytes_eq, assert_no_panic, record, retrace_command, scratch};

/// Exit status of a replay that diverged (documented in the README).
const DIVERGED: i32 = 86;

fn replay(rec: &Path, report: &Path, command: &[&str], stdin: Option<&Path>) -> (Output, serde_json::Value) {
    let mut cmd = retrace_command();
    cmd.arg("replay").arg(rec).arg("--report").arg(report).arg("--").args(command);
    if let Some(input) = stdin {
        cmd.stdin(std::fs::File::open(input).unwrap());
    }
    let out = cmd.output().unwrap();
    assert_no_panic(&out);
    let report = std::fs::read(report).map(|r| serde_json::from_slice(&r).unwrap()).unwrap_or_default();
    (out, report)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A python server, not recorded, started with `script` and `args`: it prints the port it got.
struct HttpServer(std::process::Child, u16);

impl HttpServer {
    /// A static HTTP server serving `dir`.
    fn start(dir: &Path) -> HttpServer {
        let script = "import http.server,functools,sys\nclass Q(http.server.SimpleHTTPRequestHandler):\n    def log_message(self, *a): pass\nh=functools.partial(Q, directory=sys.argv[1])\ns=http.server.HTTPServer(('127.0.0.1',0),h)\nprint(s.server_address[1],flush=True)\ns.serve_forever()";
        HttpServer::python(script, &[dir.to_str().unwrap()])
    }

    fn python(script: &str, args: &[&str]) -> HttpServer {
        let mut child = Command::new("python3").args(["-c", script]).args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        HttpServer(child, line.trim().parse().unwrap())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn curl_replays_a_1mb_body_with_the_server_gone() {
    let dir = scratch("replay-curl");
    let body = retrace_tests::pattern(1 << 20, 7);
    std::fs::write(dir.join("big.bin"), &body).unwrap();
    let server = HttpServer::start(&dir);
    let url = format!("http://127.0.0.1:{}/big.bin", server.1);
    let (_, out) = record(&dir, &[], &["curl", "-sS", &url]);
    assert_bytes_eq(&out.stdout, &body, "curl's output when recorded");
    drop(server);
    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &["curl", "-sS", &url], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_bytes_eq(&out.stdout, &body, "curl's output when replayed");
    assert_eq!(report["result"], "passed");
    assert_eq!(report["exchanges"][0]["status"], "matched");
    assert!(report["exchanges"][0]["bytes_to_program"].as_u64().unwrap() as usize > body.len());
}

#[test]
fn a_divergent_client_fails_and_names_the_first_differing_offset() {
    let dir = scratch("replay-diverge");
    std::fs::write(dir.join("a.txt"), b"A\n").unwrap();
    let server = HttpServer::start(&dir);
    let (_, _) = record(&dir, &[], &["curl", "-sS", &format!("http://127.0.0.1:{}/a.txt", server.1)]);
    drop(server);
    let other = format!("http://127.0.0.1:{}/b.txt", server_port_of(&dir));
    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &["curl", "-sS", &other], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    // Another request than the recorded one is no recorded connection: reset, never fed the
    // recorded answer, and reported with the closest recorded request.
    assert!(out.stdout.is_empty(), "curl got no answer: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(report["exchanges"][0]["status"], "not_played", "{report}");
    let difference = &report["unmatched"][0]["difference"];
    assert_eq!(difference["offset"], 5, "`GET /` is 5 bytes: {report}");
    assert!(difference["expected"].as_str().unwrap().starts_with("a.txt"));
    assert!(difference["actual"].as_str().unwrap().starts_with("b.txt"));
    assert!(stderr(&out).contains("at byte 5"), "{}", stderr(&out));
    // --lenient: the same report, the program's own status (curl's for a reset).
    let out = retrace_command()
        .arg("replay")
        .arg(dir.join("rec"))
        .args(["--lenient", "--", "curl", "-sS", &other])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(56), "{}", stderr(&out));
    assert!(stderr(&out).contains("at byte 5"));
}

#[test]
fn redacted_spans_match_anything() {
    let dir = scratch("replay-wildcard");
    std::fs::write(dir.join("a.txt"), b"A\n").unwrap();
    let server = HttpServer::start(&dir);
    let url = format!("http://127.0.0.1:{}/a.txt", server.1);
    let (rec, _) = record(&dir, &[], &["curl", "-sS", "-H", "Authorization: Bearer sk_live_recordedToken1", &url]);
    drop(server);
    let tcp = rec.find("curl's connection", |s| s.kind == "tcp");
    assert!(rec.data(tcp.id).iter().any(|d| !d.redactions.is_empty()), "the token was redacted when recorded");
    // Today's token differs: the redacted span is a wildcard.
    let (out, report) = replay(
        &dir.join("rec"),
        &dir.join("report.json"),
        &["curl", "-sS", "-H", "Authorization: Bearer sk_live_anotherToken22", &url],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, b"A\n");
}

/// The port curl used in the recording (from the connect it made).
fn server_port_of(dir: &Path) -> u16 {
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    let tcp = rec.find("curl's connection", |s| s.kind == "tcp");
    tcp.peer.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn redis_cli_replays_several_commands_with_redis_gone() {
    let dir = scratch("replay-redis");
    let port = free_port();
    let status = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--daemonize", "yes"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("redis-server (cargo xtask setup installs it)");
    assert!(status.success());
    let ready = (0..250).any(|_| {
        let pong = Command::new("redis-cli").args(["-p", &port.to_string(), "ping"]).output();
        pong.is_ok_and(|o| o.stdout.starts_with(b"PONG")) || {
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    });
    assert!(ready, "redis-server answers");
    let commands = dir.join("commands.txt");
    std::fs::write(
        &commands,
        "SET greeting hello\nGET greeting\nINCR counter\nINCR counter\nRPUSH list a b c\nLRANGE list 0 -1\n",
    )
    .unwrap();
    let p = port.to_string();
    let rec = dir.join("rec");
    let recorded = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap(), "--", "redis-cli", "-p", &p])
        .stdin(std::fs::File::open(&commands).unwrap())
        .output()
        .unwrap();
    let _ = Command::new("redis-cli").args(["-p", &p, "shutdown", "nosave"]).output();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert!(String::from_utf8_lossy(&recorded.stdout).contains("hello"));
    std::thread::sleep(Duration::from_millis(200));
    let (out, report) = replay(&rec, &dir.join("report.json"), &["redis-cli", "-p", &p], Some(&commands));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout, "identical output");
    assert_eq!(report["result"], "passed");
}

#[test]
fn a_python_client_sees_the_recorded_config_not_todays() {
    let dir = scratch("replay-config");
    std::fs::write(dir.join("data.txt"), b"recorded answer\n").unwrap();
    let server = HttpServer::start(&dir);
    let config = dir.join("config.json");
    std::fs::write(&config, format!("{{\"url\": \"http://127.0.0.1:{}/data.txt\"}}", server.1)).unwrap();
    let out_file = dir.join("written.txt");
    let script = format!(
        "import json,urllib.request\nc=json.load(open('{}'))\nbody=urllib.request.urlopen(c['url']).read()\nprint(c['url'], body.decode().strip())\nopen('{}','w').write('replayed write')\n",
        config.display(),
        out_file.display()
    );
    let (_, recorded) = record(&dir, &[], &["python3", "-c", &script]);
    drop(server);
    // Today the config points elsewhere, and the earlier output file is gone.
    std::fs::write(&config, b"{\"url\": \"http://127.0.0.1:9/changed\"}").unwrap();
    std::fs::remove_file(&out_file).unwrap();
    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &["python3", "-c", &script], None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout, "the recorded config and answer");
    assert!(report["files_served"].as_array().unwrap().iter().any(|f| f == config.to_str().unwrap()));
    assert!(!out_file.exists(), "the replayed write went to the scratch area, not the host");
    assert!(report["scratch_writes"].as_array().unwrap().iter().any(|f| f == out_file.to_str().unwrap()));

    // --live: today's config from the disk; it names an address the recording never saw.
    let mut cmd = retrace_command();
    cmd.arg("replay")
        .arg(dir.join("rec"))
        .arg("--live")
        .arg(config.to_str().unwrap())
        .args(["--", "python3", "-c", &script]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(stderr(&out).contains("blocked connect to 127.0.0.1:9"), "{}", stderr(&out));
}

#[test]
fn a_server_recorded_by_pid_is_fed_its_three_requests() {
    let dir = scratch("replay-server");
    let port = free_port();
    let server = dir.join("server.py");
    std::fs::write(&server, SERVER).unwrap();
    let mut live = Command::new("python3").arg(&server).arg(port.to_string()).arg("v1").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let rec = dir.join("rec");
    let mut recorder = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap(), "--pid", &live.id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The manifest appears once the probes are loaded; attaching follows at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !rec.join("manifest.json").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/one", "/two", "/three"] {
        let out = Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(path));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: SIGINT to the recorder we started.
    unsafe { libc::kill(recorder.id() as i32, libc::SIGINT) };
    let mut err = String::new();
    recorder.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(recorder.wait().unwrap().success(), "{err}");
    let _ = live.kill();
    let _ = live.wait();

    let p = port.to_string();
    let s = server.to_str().unwrap();
    let (out, report) = replay(&rec, &dir.join("same.json"), &["python3", s, &p, "v1"], None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let exchanges = report["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 3, "{report}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched"), "{report}");

    let (out, report) = replay(&rec, &dir.join("changed.json"), &["python3", s, &p, "v2"], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let first = &report["exchanges"][0];
    assert_eq!(first["status"], "diverged");
    let difference = &first["difference"];
    // The first difference is the version digit: "v1 answers /one" against "v2 answers /one".
    assert!(difference["expected"].as_str().unwrap().starts_with("1 answers /one"), "{report}");
    assert!(difference["actual"].as_str().unwrap().starts_with("2 answers /one"), "{report}");
}

/// A tiny HTTP server whose answer has no date in it (a replay cannot know today's date).
const SERVER: &str = r#"
import socket, sys
port, version = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(8)
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d: break
        req += d
    body = ("%s answers %s\n" % (version, req.split(b" ")[1].decode())).encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    c.close()
"#;

#[test]
fn egress_to_unrecorded_addresses_is_refused_and_reported() {
    let dir = scratch("replay-egress");
    let (_, _) = record(&dir, &[], &["python3", "-c", "print('nothing')"]);
    // Real listeners on the host, waiting.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_port, udp_port) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let host_socket = dir.join("host.sock");
    let unix = UnixListener::bind(&host_socket).unwrap();
    let absent_socket = dir.join("absent.sock");
    let script = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {tcp_port}), timeout=2)\n    print('tcp reached')\nexcept OSError as e:\n    print('tcp refused', e.errno)\nu=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ntry:\n    u.sendto(b'leak', ('127.0.0.1', {udp_port}))\n    print('udp sent')\nexcept OSError as e:\n    print('udp refused', e.errno)\nfor name, path in (('unix', {host:?}), ('absent', {absent:?})):\n    try:\n        socket.socket(socket.AF_UNIX).connect(path)\n        print(name, 'reached')\n    except OSError as e:\n        print(name, 'refused', e.errno)\n",
        host = host_socket.to_str().unwrap(),
        absent = absent_socket.to_str().unwrap(),
    );
    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &["python3", "-c", &script], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tcp refused 111") && stdout.contains("udp refused 13"), "clean errors: {stdout}");
    assert!(stdout.contains("unix refused 111") && stdout.contains("absent refused 2"), "clean errors: {stdout}");
    let blocked: Vec<String> =
        report["blocked"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap().to_owned()).collect();
    assert!(blocked.contains(&format!("127.0.0.1:{tcp_port}")), "{blocked:?}");
    assert!(blocked.contains(&format!("127.0.0.1:{udp_port}")), "{blocked:?}");
    assert!(blocked.contains(&host_socket.to_str().unwrap().to_owned()), "{blocked:?}");
    // A socket that does not exist on the host is no way out: ENOENT, listed, not blocked.
    assert!(!blocked.contains(&absent_socket.to_str().unwrap().to_owned()), "{blocked:?}");
    assert!(
        report["absent_sockets"].as_array().unwrap().iter().any(|p| p == absent_socket.to_str().unwrap()),
        "{report}"
    );
    unix.set_nonblocking(true).unwrap();
    assert!(unix.accept().is_err(), "no unix connection reached the host");
    // The listeners got nothing.
    tcp.set_nonblocking(true).unwrap();
    assert!(tcp.accept().is_err(), "no connection reached the host");
    udp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(udp.recv_from(&mut [0u8; 16]).is_err(), "no datagram reached the host");
}

#[test]
fn the_sandbox_hides_host_processes_and_keeps_writes_off_the_host() {
    let dir = scratch("replay-isolation");
    let (_, _) = record(&dir, &[], &["python3", "-c", "print('nothing')"]);
    let probe = dir.join("made-by-replay");
    let script = format!(
        "import os,socket\nprint('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\ntry:\n    os.mkdir('{}')\n    print('mkdir ok')\nexcept OSError as e:\n    print('mkdir', e.errno)\ntry:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n    print('packet ok')\nexcept OSError as e:\n    print('packet', e.errno)\n",
        probe.display()
    );
    let (out, _) = replay(&dir.join("rec"), &dir.join("report.json"), &["python3", "-c", &script], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pids 2"), "only the sandbox's init and the program: {stdout}");
    assert!(stdout.contains("mkdir ok"), "the program may change its view of the filesystem: {stdout}");
    assert!(stdout.contains("packet 13"), "EACCES for packet sockets: {stdout}");
    assert!(!probe.exists(), "the folder made in the sandbox is not on the host");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_threaded_client_gets_each_connection_by_what_it_asks_and_an_unrecorded_ask_is_reset() {
    let dir = scratch("replay-threads");
    for name in ["one", "two", "three", "four"] {
        std::fs::write(dir.join(name), format!("the body of {name}\n").repeat(50)).unwrap();
    }
    let server = HttpServer::start(&dir);
    let port = server.1;
    // Four threads, four connections in whatever order the threads get to run.
    let client = |names: &str| {
        format!(
            "import sys, threading, urllib.request\nout = {{}}\ndef get(n):\n    try:\n        out[n] = urllib.request.urlopen('http://127.0.0.1:{}/' + n, timeout=5).read().decode().splitlines()[0]\n    except Exception as e:\n        out[n] = type(e).__name__\nts = [threading.Thread(target=get, args=(n,)) for n in '{names}'.split()]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint(sorted(out.items()))\nsys.exit(0 if all(v.startswith('the body') for v in out.values()) else 3)\n",
            port
        )
    };
    let recorded_script = client("one two three four");
    let (_, recorded) = record(&dir, &[], &[retrace_tests::python(), "-c", &recorded_script]);
    assert!(recorded.status.success());
    drop(server);
    for round in 0..3 {
        let (out, report) = replay(
            &dir.join("rec"),
            &dir.join(format!("report-{round}.json")),
            &[retrace_tests::python(), "-c", &recorded_script],
            None,
        );
        assert_eq!(out.status.code(), Some(0), "round {round}: {}\n{report}", stderr(&out));
        assert_eq!(out.stdout, recorded.stdout, "round {round}: each thread got its own body");
        let exchanges = report["exchanges"].as_array().unwrap();
        assert_eq!(exchanges.len(), 4, "{report}");
        assert!(exchanges.iter().all(|e| e["status"] == "matched"), "round {round}: {report}");
    }
    // A thread asking for what was never recorded gets a reset, not another thread's answer.
    let changed = client("one two three five");
    let (out, report) =
        replay(&dir.join("rec"), &dir.join("report-changed.json"), &[retrace_tests::python(), "-c", &changed], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("('five', 'ConnectionResetError')") || stdout.contains("('five', 'RemoteDisconnected')"),
        "{stdout}"
    );
    assert!(stdout.contains("('one', 'the body of one')"), "{stdout}");
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{report}");
    assert!(unmatched[0]["sent"].as_str().unwrap().starts_with("GET /five"), "{report}");
    assert_eq!(
        report["exchanges"].as_array().unwrap().iter().filter(|e| e["status"] == "not_played").count(),
        1,
        "{report}"
    );
}

/// An HTTP/1.1 server (python, keep-alive) that answers each path with how many times it was
/// asked for it: a request's answer depends on the requests before it.
const COUNTING_SERVER: &str = "import http.server,sys,collections\nn=collections.Counter()\nclass Q(http.server.BaseHTTPRequestHandler):\n    protocol_version='HTTP/1.1'\n    def log_message(self, *a): pass\n    def do_GET(self):\n        n[self.path]+=1\n        b=('%s #%d\\n' % (self.path, n[self.path])).encode()\n        self.send_response(200)\n        self.send_header('Content-Length', str(len(b)))\n        self.end_headers()\n        self.wfile.write(b)\ns=http.server.ThreadingHTTPServer(('127.0.0.1',0),Q)\nprint(s.server_address[1],flush=True)\ns.serve_forever()";

/// A client that asks for `paths` in order, each on a connection of its own (`separate`) or
/// all on one keep-alive connection (`one`), and prints the answers.
const POOLING_CLIENT: &str = "import http.client,sys\nport,mode,paths=int(sys.argv[1]),sys.argv[2],sys.argv[3:]\nc=None\nfor p in paths:\n    if c is None or mode=='separate':\n        c=http.client.HTTPConnection('127.0.0.1',port,timeout=5)\n    try:\n        c.request('GET',p)\n        sys.stdout.write(c.getresponse().read().decode())\n    except Exception as e:\n        print(p, type(e).__name__)\n        c=None\n    if mode=='separate':\n        c.close()\n";

#[test]
fn a_client_that_pools_connections_gets_each_response_on_whichever_connection_it_asks() {
    let dir = scratch("replay-pooling");
    let server = HttpServer::python(COUNTING_SERVER, &[]);
    let port = server.1.to_string();
    let python = retrace_tests::python();
    let client = |mode: &'static str, paths: &[&'static str]| {
        let mut argv = vec![python, "-c", POOLING_CLIENT, port.as_str(), mode];
        argv.extend_from_slice(paths);
        argv
    };
    // Four connections when recorded; /a asked twice, answered "#1" then "#2".
    let (_, recorded) = record(&dir, &[], &client("separate", &["/a", "/b", "/a", "/c"]));
    drop(server);
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "/a #1\n/b #1\n/a #2\n/c #1\n");
    // Replayed on one connection: each request gets the response to the same recorded request,
    // the two /a theirs in the recorded order.
    let (out, report) =
        replay(&dir.join("rec"), &dir.join("one.json"), &client("one", &["/a", "/b", "/a", "/c"]), None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout);
    assert_eq!(report["requests_moved"], 3, "{report}");
    let exchanges = report["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 4, "{report}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched"), "{report}");
    // A third /a was never recorded: reset, and the replay fails.
    let (out, report) =
        replay(&dir.join("rec"), &dir.join("more.json"), &client("one", &["/a", "/b", "/a", "/c", "/a"]), None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/a #1\n/b #1\n/a #2\n/c #1\n/a "), "{report}");
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{report}");
    assert!(unmatched[0]["sent"].as_str().unwrap().starts_with("GET /a "), "{report}");
    // A request the program never sends fails the replay too, on its recorded connection.
    let (out, report) = replay(&dir.join("rec"), &dir.join("less.json"), &client("one", &["/a", "/b", "/c"]), None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let not_played: Vec<_> =
        report["exchanges"].as_array().unwrap().iter().filter(|e| e["status"] != "matched").collect();
    assert_eq!(not_played.len(), 1, "{report}");
}

/// A gRPC server (python grpcio): `Say` answers a message in upper case, and `count` with how
/// many times it was asked for.
const GRPC_SERVER: &str = "import grpc, concurrent.futures as cf, itertools, sys\nn = itertools.count(1)\ndef say(req, ctx):\n    return b'%d %s' % (next(n), req) if req == b'count' else req.upper()\ndef chat(it, ctx):\n    for m in it: yield m.upper()\nh = grpc.method_handlers_generic_handler('echo.Echo', {'Say': grpc.unary_unary_rpc_method_handler(say), 'Chat': grpc.stream_stream_rpc_method_handler(chat)})\ns = grpc.server(cf.ThreadPoolExecutor(8))\ns.add_generic_rpc_handlers((h,))\nport = s.add_insecure_port('127.0.0.1:0')\ns.start()\nprint(port, flush=True)\ns.wait_for_termination()";

/// A gRPC client: `calls` concurrent calls on one channel (streams of one HTTP/2 connection,
/// cleartext), then two `count`s.
const GRPC_CLIENT: &str = "import grpc, sys\nch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])\nsay = ch.unary_unary('/echo.Echo/Say')\ncalls = [say.future(b'hello %d' % i, timeout=5) for i in range(int(sys.argv[2]))]\ntry:\n    print([c.result() for c in calls])\nexcept grpc.RpcError as e:\n    print('error', e.code())\nprint(say(b'count', timeout=5), say(b'count', timeout=5))\n";

/// A bidirectional gRPC call that sends its second message only once the first is answered.
const GRPC_CHAT: &str = "import grpc, queue, sys\nch = grpc.insecure_channel('127.0.0.1:' + sys.argv[1])\nchat = ch.stream_stream('/echo.Echo/Chat')\nq = queue.Queue()\nq.put(b'one')\ndef sent():\n    while (m := q.get()) is not None:\n        yield m\nout = []\ntry:\n    for r in chat(sent(), timeout=60):\n        out.append(r)\n        q.put(b'two' if len(out) == 1 else None)\n    print(out)\nexcept grpc.RpcError as e:\n    print('error', e.code())\n";

#[test]
fn a_grpc_client_gets_each_answer_whatever_stream_its_call_takes() {
    let dir = scratch("replay-grpc");
    let server = HttpServer::python(GRPC_SERVER, &[]);
    let port = server.1.to_string();
    let python = retrace_tests::python();
    let client = |calls: &'static str| [python, "-c", GRPC_CLIENT, port.as_str(), calls];
    // The server was asked for `count` twice before: the recording holds "3" and "4".
    for _ in 0..2 {
        let out = Command::new(python).args(&client("0")[1..]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (_, recorded) = record(&dir, &[], &client("12"));
    let chat_dir = dir.join("chat");
    std::fs::create_dir_all(&chat_dir).unwrap();
    let (_, chatted) = record(&chat_dir, &[], &[python, "-c", GRPC_CHAT, port.as_str()]);
    drop(server);
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let stdout = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert!(stdout.contains("b'HELLO 11'") && stdout.ends_with("b'5 count' b'6 count'\n"), "{stdout}");
    for round in 0..2 {
        let (out, report) = replay(&dir.join("rec"), &dir.join(format!("report-{round}.json")), &client("12"), None);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}\n{report}", stderr(&out));
        assert_eq!(out.stdout, recorded.stdout);
        assert!(report["exchanges"].as_array().unwrap().iter().all(|e| e["status"] == "matched"), "{report}");
    }
    // A call never recorded gets an error, takes no other call's answer, and the replay fails
    // naming it and the closest recorded call.
    let (out, report) = replay(&dir.join("rec"), &dir.join("more.json"), &client("13"), None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("error ") && stdout.ends_with("b'5 count' b'6 count'\n"), "{stdout}\n{report}");
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{report}");
    assert_eq!(unmatched[0]["sent"], "POST /echo.Echo/Say", "{report}");
    assert_eq!(unmatched[0]["difference"]["what"], "different body", "{report}");
    // A call that waits for answers before it ends is not replayed: reset after 10 s, named,
    // never a hang.
    assert_eq!(String::from_utf8_lossy(&chatted.stdout), "[b'ONE', b'TWO']\n");
    let (out, report) =
        replay(&chat_dir.join("rec"), &dir.join("chat.json"), &[python, "-c", GRPC_CHAT, port.as_str()], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("error "), "{report}");
    let what = report["unmatched"][0]["difference"]["what"].as_str().unwrap_or_default();
    assert!(what.starts_with("the request did not end"), "{report}");
}

/// Records `server` (launched) answering `requests` curl requests on `port`, then stops it.
fn record_server(dir: &Path, server: &[&str], port: u16, requests: &[&str]) {
    retrace_tests::record_server(&dir.join("rec"), server, port, || {
        for path in requests {
            let out = Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    });
}

#[test]
fn http_servers_replay_against_their_clients_with_dates_as_noise() {
    let dir = scratch("replay-http-servers");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>recorded site</h1>\n").unwrap();
    std::fs::write(site.join("data.json"), "{\"n\": 1}\n").unwrap();
    let port = free_port();
    let p = port.to_string();
    let python = retrace_tests::python();
    let site_s = site.to_str().unwrap();
    let server = [python, "-m", "http.server", &p, "--bind", "127.0.0.1", "--directory", site_s];
    let python_dir = dir.join("python");
    std::fs::create_dir_all(&python_dir).unwrap();
    record_server(&python_dir, &server, port, &["/index.html", "/data.json", "/missing"]);
    // The site changed on disk since: the server still finds the recorded files.
    std::fs::write(site.join("index.html"), "<h1>today's site</h1>\n").unwrap();
    let (out, report) = replay(&python_dir.join("rec"), &dir.join("python.json"), &server, None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    // The readiness probe's connection (no bytes) is one of them: the server counted it.
    let exchanges = report["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 4, "{report}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched"), "{report}");
    // Its Date (and the times in its log lines) may differ: noise, in the report when they do.
    let ignored: Vec<&serde_json::Value> =
        exchanges.iter().flat_map(|e| e["ignored"].as_array().into_iter().flatten()).collect();
    assert!(ignored.iter().all(|i| i["field"] == "date" && i["why"] == "built-in noisy header"), "{report}");

    // nginx, with its own keep-alive connections.
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(nginx_dir.join("logs")).unwrap();
    let conf = nginx_dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; error_log stderr; pid {}/nginx.pid;\nevents {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; root {site_s}; }} }}\n",
            nginx_dir.display()
        ),
    )
    .unwrap();
    let nginx = ["nginx", "-c", conf.to_str().unwrap(), "-p", nginx_dir.to_str().unwrap()];
    record_server(&nginx_dir, &nginx, port, &["/index.html", "/data.json", "/missing", "/index.html"]);
    let (out, report) = replay(&nginx_dir.join("rec"), &dir.join("nginx.json"), &nginx, None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(report["exchanges"].as_array().unwrap().len(), 5, "{report}");
    // Served from another folder (a changed server): its answers differ in their bodies.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("index.html"), "<h1>another site</h1>\n").unwrap();
    std::fs::write(other.join("data.json"), "{\"n\": 2}\n").unwrap();
    let changed = [python, "-m", "http.server", &p, "--bind", "127.0.0.1", "--directory", other.to_str().unwrap()];
    let (out, report) = replay(&python_dir.join("rec"), &dir.join("changed.json"), &changed, None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(report["exchanges"].as_array().unwrap().iter().any(|e| e["status"] == "diverged"), "{report}");
}

#[test]
fn noise_rules_name_more_headers_and_patterns() {
    let dir = scratch("replay-noise-rules");
    let port = free_port();
    // A server whose answers carry values that change every run (from the monotonic clock, which
    // replay leaves native; random bytes and the wall clock are replayed).
    let script = dir.join("server.py");
    std::fs::write(
        &script,
        "import http.server, sys, time\nclass H(http.server.BaseHTTPRequestHandler):\n    def log_message(self, *a): pass\n    def do_GET(self):\n        body = ('run=%x done\\n' % time.monotonic_ns()).encode()\n        self.send_response(200)\n        self.send_header('X-Build', '%x' % time.monotonic_ns())\n        self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\nhttp.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n",
    )
    .unwrap();
    let p = port.to_string();
    let server = [retrace_tests::python(), script.to_str().unwrap(), &p];
    record_server(&dir, &server, port, &["/a"]);
    let (out, _) = replay(&dir.join("rec"), &dir.join("plain.json"), &server, None);
    assert_eq!(out.status.code(), Some(DIVERGED), "X-Build differs: {}", stderr(&out));
    let rules = dir.join("noise.toml");
    std::fs::write(&rules, "[noise]\nheaders = [\"X-Build\"]\npatterns = [\"run=[0-9a-f]+\"]\n").unwrap();
    let mut cmd = retrace_command();
    cmd.arg("replay").arg(dir.join("rec")).arg("--rules").arg(&rules).arg("--report").arg(dir.join("rules.json"));
    let out = cmd.arg("--").args(server).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("rules.json")).unwrap()).unwrap();
    let exchanges = report["exchanges"].as_array().unwrap();
    let ignored = exchanges.iter().flat_map(|e| e["ignored"].as_array().into_iter().flatten());
    let whys: Vec<&str> = ignored.map(|i| i["why"].as_str().unwrap()).collect();
    assert!(whys.contains(&"noise rule (header)") && whys.contains(&"noise rule (pattern)"), "{report}");
}

#[test]
fn denoise_learns_what_differs_between_unchanged_runs_and_still_catches_a_change() {
    let dir = scratch("replay-denoise");
    let port = free_port();
    let script = dir.join("server.py");
    let server_source = |greeting: &str| {
        format!(
            "import http.server, sys, time\nclass H(http.server.BaseHTTPRequestHandler):\n    def log_message(self, *a): pass\n    def do_GET(self):\n        body = ('{greeting} session=%x\\n' % time.monotonic_ns()).encode()\n        self.send_response(200)\n        self.send_header('X-Trace', '%d' % time.monotonic_ns())\n        self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\nhttp.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
        )
    };
    std::fs::write(&script, server_source("hello")).unwrap();
    let p = port.to_string();
    let server = [retrace_tests::python(), script.to_str().unwrap(), &p];
    record_server(&dir, &server, port, &["/a", "/b"]);
    let rec = dir.join("rec");
    let (out, _) = replay(&rec, &dir.join("plain.json"), &server, None);
    assert_eq!(out.status.code(), Some(DIVERGED), "X-Trace differs: {}", stderr(&out));
    let (out, _) = retrace_tests::replay_in(&dir, &rec, &["--denoise"], &server);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let learned = std::fs::read_to_string(rec.join("noise.toml")).unwrap();
    assert!(learned.contains("x-trace") && learned.contains("session=[0-9a-fA-F]+"), "{learned}");
    // Later replays read it; the report says what was ignored and why.
    let (out, report) = replay(&rec, &dir.join("after.json"), &server, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ignored: Vec<&serde_json::Value> = report["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["ignored"].as_array().into_iter().flatten())
        .collect();
    assert!(ignored.iter().any(|i| i["field"] == "x-trace" && i["why"] == "noise rule (header)"), "{report}");
    // A changed greeting is no noise (the script is the code under test: served from the disk).
    std::fs::write(&script, server_source("howdy")).unwrap();
    let (out, _) = retrace_tests::replay_in(&dir, &rec, &["--live", script.to_str().unwrap()], &server);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
}

#[test]
fn datagrams_are_answered_by_content_and_an_unrecorded_one_is_reported() {
    let dir = scratch("replay-udp");
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    // The peer answers each datagram with it reversed.
    let echoing = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let reply: Vec<u8> = buf[..n].iter().rev().copied().collect();
                let _ = echo.send_to(&reply, from);
            }
        }
    });
    let script = |first: &str| {
        format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\nfor m in (b'{first}', b'pong'):\n    s.sendto(m, ('127.0.0.1', {port}))\n    print(s.recvfrom(64)[0])\n"
        )
    };
    let (_, recorded) = record(&dir, &[], &[retrace_tests::python(), "-c", &script("ping")]);
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "b'gnip'\nb'gnop'\n");
    echoing.join().unwrap();
    // The peer is gone: the replayer answers, in the order the program asks (here reversed).
    let swapped = script("ping").replace("(b'ping', b'pong')", "(b'pong', b'ping')");
    let (out, report) =
        replay(&dir.join("rec"), &dir.join("report.json"), &[retrace_tests::python(), "-c", &swapped], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b'gnop'\nb'gnip'\n", "{}", stderr(&out));
    assert_eq!(report["datagrams_matched"], 2, "{report}");
    // A datagram never recorded: no answer (the program times out) and an entry in the report.
    let (out, report) =
        replay(&dir.join("rec"), &dir.join("changed.json"), &[retrace_tests::python(), "-c", &script("pang")], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched[0]["address"], format!("udp 127.0.0.1:{port}"), "{report}");
    assert_eq!(unmatched[0]["sent"], "pang", "{report}");
}

/// A server the program runs (a unix socket and TCP on a port the kernel picks), and a child
/// process that is its client over both.
const OWN_SERVER: &str = r#"
import os, socket, subprocess, sys
path = os.path.join(sys.argv[1], "own.sock")
if os.path.exists(path):
    os.unlink(path)
unix = socket.socket(socket.AF_UNIX)
unix.bind(path)
unix.listen()
tcp = socket.create_server(("127.0.0.1", 0))
client = f"""
import socket
u = socket.socket(socket.AF_UNIX); u.connect({path!r}); u.sendall(b"over unix"); print(u.recv(100).decode())
t = socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]})); t.sendall(b"over tcp"); print(t.recv(100).decode())
"""
child = subprocess.Popen([sys.executable, "-c", client])
for server in (unix, tcp):
    conn, _ = server.accept()
    conn.sendall(b"echo " + conn.recv(100))
    conn.close()
child.wait()
os.unlink(path)
"#;

#[test]
fn a_program_and_its_own_client_talk_for_real_in_the_sandbox() {
    let dir = scratch("replay-own-server");
    let folder = dir.to_str().unwrap();
    let command = ["python3", "-c", OWN_SERVER, folder];
    let (_, recorded) = record(&dir, &[], &command);
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "echo over unix\necho over tcp\n");
    // The port differs in replay: the connection is not played from the recording but made.
    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &command, None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", stderr(&out));
    assert_bytes_eq(&out.stdout, &recorded.stdout, "the client's output in replay");
    assert_eq!(report["result"], "passed", "{report:#}");
    assert_eq!(report["internal_connections"], 1, "{report:#}");
    assert_eq!(report["blocked"], serde_json::json!([]), "{report:#}");

    // A socket the host listens on stays out of reach, though its path shows in the sandbox.
    let host_socket = dir.join("host.sock");
    let _ = std::fs::remove_file(&host_socket);
    let _listener = std::os::unix::net::UnixListener::bind(&host_socket).unwrap();
    let probe = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n",
        host_socket.display()
    );
    let (out, _) = replay(&dir.join("rec"), &dir.join("probe.json"), &["python3", "-c", &probe], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "refused 111\n", "{}", stderr(&out));
}

/// A unix socket server outside the recording: answers each line with its upper case.
const UNIX_SERVER: &str = r#"
import os, socket, sys
path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    for line in conn.makefile("rb"):
        conn.sendall(line.upper())
    conn.close()
"#;

#[test]
fn a_unix_socket_server_is_played_from_the_recording_once_gone() {
    let dir = scratch("replay-unix-peer");
    let path = dir.join("server.sock");
    let mut server =
        Command::new("python3").args(["-c", UNIX_SERVER]).arg(&path).stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let client = format!(
        "import socket\nfor word in ('one', 'two'):\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    s.sendall(word.encode() + b'\\n')\n    print(s.recv(100).decode().strip())\n    s.close()\n",
        path.display()
    );
    let command = ["python3", "-c", client.as_str()];
    let (_, recorded) = record(&dir, &[], &command);
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "ONE\nTWO\n");
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);

    let (out, report) = replay(&dir.join("rec"), &dir.join("report.json"), &command, None);
    assert_eq!(out.status.code(), Some(0), "{}\n{report:#}", stderr(&out));
    assert_bytes_eq(&out.stdout, &recorded.stdout, "the client's output with the server gone");
    let exchanges = report["exchanges"].as_array().unwrap();
    assert_eq!(exchanges.len(), 2, "{report:#}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched" && e["peer"] == path.to_str().unwrap()), "{report:#}");

    // Another question than the recorded ones is reset and reported, as over TCP.
    let other = client.replace("'two'", "'three'");
    let (out, report) = replay(&dir.join("rec"), &dir.join("other.json"), &["python3", "-c", &other], None);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}\n{report:#}", stderr(&out));
    assert_eq!(report["unmatched"][0]["address"], path.to_str().unwrap(), "{report:#}");
}
