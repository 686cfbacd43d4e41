//! Real programs recorded against real peers (installed by `cargo xtask setup`), then replayed
//! with the peers stopped and what they left on disk still there: the same output and exit
//! status, and a changed program fails with 86.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use retrace_tests::{assert_bytes_eq, go_build, python, record_in, replay_in, retrace, scratch};

const DIVERGED: i32 = 86;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port`.
fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
    out
}

#[test]
fn git_status_that_rewrites_its_index_replays() {
    let dir = scratch("programs-git-status");
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q", "."]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&["add", "a.txt"]);
    git(&["commit", "-qm", "first"]);
    std::fs::write(repo.join("a.txt"), "two\n").unwrap();
    git(&["add", "a.txt"]);
    // Same content, new times: `git status` refreshes the index and writes it again, as
    // index.lock renamed over index, after having read (mapped) the old one.
    run(Command::new("touch").args(["-d", "+1 hour", "a.txt"]).current_dir(&repo));
    let command = ["git", "status", "--short"];
    let recorded = record_in(&repo, &dir, &command);
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "M  a.txt\n");
    let streams = retrace(&["streams", dir.join("rec").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&streams.stdout).contains("index.lock"), "git wrote its index again");

    // The index was there when git started: the replay shows it, not a repository without one
    // (`D  a.txt` and `?? a.txt`).
    let (out, report) = replay_in(&repo, &dir.join("rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_bytes_eq(&out.stdout, &recorded.stdout, "git status in replay");
    assert_eq!(report["files_absent"], serde_json::json!([]), "{report}");
}

/// The id of the stream that had `path` open.
fn stream_of(rec: &Path, path: &Path) -> String {
    let out = retrace(&["streams", rec.to_str().unwrap(), "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|s| s["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no stream for {}", path.display()))["id"]
        .to_string()
}

#[test]
fn sqlite3_creates_then_updates_a_database_and_both_replay() {
    let dir = scratch("programs-sqlite");
    let create = [
        "sqlite3",
        "shop.db",
        "create table t(item text, n int); insert into t values ('a', 1), ('b', 2); select sum(n) from t;",
    ];
    let update = ["sqlite3", "shop.db", "update t set n = n * 10; select group_concat(item || n) from t;"];
    let created = record_in(&dir, &dir.join("create"), &create);
    assert_eq!(String::from_utf8_lossy(&created.stdout), "3\n");
    // The database as the recording left it, rebuilt from the writes at their offsets.
    let db = dir.join("shop.db");
    let rec = dir.join("create/rec");
    let cat = retrace(&["cat", rec.to_str().unwrap(), &stream_of(&rec, &db), "--file"]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_bytes_eq(&cat.stdout, &std::fs::read(&db).unwrap(), "cat --file against the database on disk");
    let updated = record_in(&dir, &dir.join("update"), &update);
    assert_eq!(String::from_utf8_lossy(&updated.stdout), "a10,b20\n");

    // The database on disk is the updated one now: each replay must see the one it saw.
    let (out, report) = replay_in(&dir, &rec, &[], &create);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, created.stdout);
    assert!(report["files_absent"].as_array().unwrap().iter().any(|p| p == db.to_str().unwrap()), "{report}");
    let (out, report) = replay_in(&dir, &dir.join("update/rec"), &[], &update);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, updated.stdout);
    assert!(report["files_served"].as_array().unwrap().iter().any(|p| p == db.to_str().unwrap()), "{report}");
    // Changed: its output differs.
    let changed = ["sqlite3", "shop.db", "update t set n = n * 100; select group_concat(item || n) from t;"];
    let (out, report) = replay_in(&dir, &dir.join("update/rec"), &[], &changed);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert_eq!(report["outputs"][0]["status"], "diverged", "{report}");
    assert!(stderr(&out).contains("stdout: different bytes at byte 3"), "{}", stderr(&out));
}

/// A bare repository with two commits, under `dir/srv/repo.git`.
fn bare_repository(dir: &Path) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("README"), "retrace replays git\n").unwrap();
    std::fs::write(work.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    let git = |args: &[&str], cwd: &Path| {
        run(Command::new("git")
            .args(["-c", "user.email=dev@example.invalid", "-c", "user.name=Dev", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(cwd))
    };
    git(&["init", "-q"], &work);
    git(&["add", "."], &work);
    git(&["commit", "-qm", "first"], &work);
    std::fs::write(work.join("CHANGES"), "second\n").unwrap();
    git(&["add", "."], &work);
    git(&["commit", "-qm", "second"], &work);
    let bare = dir.join("srv/repo.git");
    git(&["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()], dir);
    bare
}

/// Serves the repositories under `root` over smart HTTP through `git http-backend`.
const HTTP_BACKEND: &str = r#"
import http.server, os, subprocess, sys
root, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def backend(self, body):
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                   QUERY_STRING=query, REQUEST_METHOD=self.command, REMOTE_ADDR="127.0.0.1",
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    def do_GET(self):
        self.backend(b"")
    def do_POST(self):
        self.backend(self.rfile.read(int(self.headers.get("Content-Length", 0))))
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

#[test]
fn git_clones_over_git_and_smart_http_replay_with_the_servers_gone() {
    let dir = scratch("programs-git");
    let bare = bare_repository(&dir);
    let srv = bare.parent().unwrap().to_str().unwrap().to_owned();
    let (git_port, http_port) = (free_port(), free_port());
    // git-daemon itself (`git daemon` would run it as a child, which a kill leaves behind).
    let exec_path = run(Command::new("git").arg("--exec-path")).stdout;
    let exec_path = PathBuf::from(String::from_utf8_lossy(&exec_path).trim());
    let daemon = Server(
        Command::new(exec_path.join("git-daemon"))
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={git_port}"))
            .arg(format!("--base-path={srv}"))
            .arg(&srv)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let script = dir.join("http_backend.py");
    std::fs::write(&script, HTTP_BACKEND).unwrap();
    let http = Server(Command::new(python()).arg(&script).arg(&srv).arg(http_port.to_string()).spawn().unwrap());
    wait_for_port(git_port);
    wait_for_port(http_port);
    let clones = [
        ("git", format!("git://127.0.0.1:{git_port}/repo.git")),
        ("http", format!("http://127.0.0.1:{http_port}/repo.git")),
    ];
    for (name, url) in &clones {
        // A second clone of the same: git checks out and lists what it got.
        let command = [
            "sh",
            "-c",
            &format!(
                "git clone -q {url} {name}-clone && git -C {name}-clone log --format=%s && cat {name}-clone/README"
            ),
        ];
        let recorded = record_in(&dir, &dir.join(name), &command);
        assert_eq!(String::from_utf8_lossy(&recorded.stdout), "second\nfirst\nretrace replays git\n");
    }
    drop(daemon);
    drop(http);
    for (name, url) in &clones {
        // The clone from the recording is still on disk: replay starts without it.
        assert!(dir.join(format!("{name}-clone/.git")).is_dir());
        let command = [
            "sh",
            "-c",
            &format!(
                "git clone -q {url} {name}-clone && git -C {name}-clone log --format=%s && cat {name}-clone/README"
            ),
        ];
        let (out, report) = replay_in(&dir, &dir.join(format!("{name}/rec")), &[], &command);
        assert_eq!(out.status.code(), Some(0), "{name}: {}\n{report}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "second\nfirst\nretrace replays git\n", "{name}");
        assert!(report["exchanges"].as_array().unwrap().iter().all(|e| e["status"] == "matched"), "{report}");
        // Asking for another repository diverges.
        let other = command[2].replace("repo.git", "other.git");
        let (out, _) = replay_in(&dir, &dir.join(format!("{name}/rec")), &[], &["sh", "-c", &other]);
        assert_eq!(out.status.code(), Some(DIVERGED), "{name}: {}", stderr(&out));
    }
}

/// A package index (PEP 503 "simple" layout) holding one wheel made here.
fn package_index(root: &Path) {
    let script = r#"
import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
name = "retrace_demo-1.0-py3-none-any.whl"
files = {"retrace_demo/__init__.py": "VALUE = 42\n",
         "retrace_demo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: retrace-demo\nVersion: 1.0\n",
         "retrace_demo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: retrace-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(text)}")
files["retrace_demo-1.0.dist-info/RECORD"] = "\n".join(record + ["retrace_demo-1.0.dist-info/RECORD,,"]) + "\n"
os.makedirs(f"{root}/simple/retrace-demo")
wheel = f"{root}/simple/retrace-demo/{name}"
with zipfile.ZipFile(wheel, "w") as z:
    for path, text in files.items():
        z.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), text)
sha = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
open(f"{root}/simple/retrace-demo/index.html", "w").write(f'<a href="{name}#sha256={sha}">{name}</a>\n')
open(f"{root}/simple/index.html", "w").write('<a href="retrace-demo/">retrace-demo</a>\n')
"#;
    run(Command::new(python()).args(["-c", script]).arg(root));
}

#[test]
fn pip_downloads_and_installs_from_a_local_index_with_the_index_gone() {
    let dir = scratch("programs-pip");
    let index = dir.join("index");
    package_index(&index);
    let port = free_port();
    let server = Server(
        Command::new(python())
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(&index)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let url = format!("http://127.0.0.1:{port}/simple");
    let pip = |verb: &str, target: &str| -> Vec<String> {
        // A distribution's Python refuses installs outside a venv unless told (PEP 668). pip's
        // user agent says what `rustc --version` answers within 0.5 s, which a loaded machine
        // decides: rustc is kept off its PATH, so the recorded and replayed runs ask alike.
        let path = std::env::var("PATH").unwrap_or_default();
        let path: Vec<&str> = path.split(':').filter(|dir| !Path::new(dir).join("rustc").exists()).collect();
        let mut args: Vec<String> =
            ["env", "PIP_BREAK_SYSTEM_PACKAGES=1", "PIP_ROOT_USER_ACTION=ignore"].map(String::from).to_vec();
        args.push(format!("PATH={}", path.join(":")));
        args.extend([python().to_owned(), "-m".into(), "pip".into(), verb.into(), "-q".into()]);
        args.extend(["--disable-pip-version-check", "--index-url", &url].map(String::from));
        match verb {
            "download" => args.extend(["-d".into(), target.into()]),
            _ => args.extend(["--target".into(), target.into()]),
        }
        args.push("retrace-demo".into());
        args
    };
    let runs = [("download", pip("download", "wheels")), ("install", pip("install", "site"))];
    for (name, command) in &runs {
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        record_in(&dir, &dir.join(name), &command);
    }
    assert!(dir.join("site/retrace_demo/__init__.py").is_file());
    assert!(dir.join("wheels/retrace_demo-1.0-py3-none-any.whl").is_file());
    drop(server);
    for (name, command) in &runs {
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let (out, report) = replay_in(&dir, &dir.join(format!("{name}/rec")), &[], &command);
        assert_eq!(out.status.code(), Some(0), "pip {name}: {}\n{report}", stderr(&out));
        let exchanges = report["exchanges"].as_array().unwrap();
        assert!(!exchanges.is_empty() && exchanges.iter().all(|e| e["status"] == "matched"), "{report}");
    }
    // The replayed install wrote the package in the sandbox (kept here for a look).
    let kept = dir.join("kept");
    let command: Vec<&str> = runs[1].1.iter().map(String::as_str).collect();
    let (out, _) = replay_in(&dir, &dir.join("install/rec"), &["--keep-scratch", kept.to_str().unwrap()], &command);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let installed = kept.join(dir.join("site/retrace_demo/__init__.py").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), "VALUE = 42\n");
}

/// A PostgreSQL server of its own (trust authentication) on `port`, run as `postgres`.
struct Postgres {
    data: PathBuf,
    bin: PathBuf,
}

/// The superuser's password where the server asks for one.
const PASSWORD: &str = "pg-Pass-4711";

impl Postgres {
    /// Trust on every connection, or `host_auth` on TCP (`scram-sha-256`, `password`: the
    /// superuser's password is then `PASSWORD`, set over the unix socket).
    fn start(dir: &Path, port: u16, host_auth: &str) -> Postgres {
        Postgres::start_with(dir, port, host_auth, "")
    }

    /// With TLS on, under a self-signed certificate for localhost.
    fn start_tls(dir: &Path, port: u16) -> Postgres {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-keyout", "server.key", "-out", "server.crt"])
            .current_dir(dir));
        run(Command::new("chown").args(["postgres:postgres", "server.key", "server.crt"]).current_dir(dir));
        run(Command::new("chmod").args(["600", "server.key"]).current_dir(dir));
        let options =
            format!("-c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key", dir.display());
        Postgres::start_with(dir, port, "trust", &options)
    }

    fn start_with(dir: &Path, port: u16, host_auth: &str, extra: &str) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server (cargo xtask setup installs it)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb");
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).unwrap();
        run(Command::new("chown").args(["postgres:postgres"]).arg(&data).arg(dir));
        let as_postgres = |program: &str| {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin.join(program)).current_dir("/");
            cmd
        };
        run(as_postgres("initdb")
            .args(["--auth-local=trust", "--auth-host", host_auth, "-U", "postgres", "-D"])
            .arg(&data));
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 {extra}", dir.display());
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-w", "-l"])
            .arg(dir.join("pg.log"))
            .arg("start"));
        if host_auth != "trust" {
            let mut psql = Command::new("runuser");
            psql.args(["-u", "postgres", "--", "psql", "-X", "-h"]).arg(dir).args(["-p", &port.to_string()]);
            run(psql.args(["-c", &format!("ALTER USER postgres PASSWORD '{PASSWORD}'")]).current_dir("/"));
        }
        Postgres { data, bin }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir("/")
            .output();
    }
}

#[test]
fn psql_replays_its_queries_with_postgres_stopped() {
    let dir = scratch("programs-psql");
    let port = free_port();
    let postgres = Postgres::start(&dir, port, "trust");
    let port = port.to_string();
    let psql = |sql: &str| -> Vec<String> {
        ["psql", "-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-c", sql].map(String::from).to_vec()
    };
    let sql = "create table t(n int); insert into t select generate_series(1, 5); select sum(n) from t;";
    let command = psql(sql);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let recorded = record_in(&dir, &dir.join("q"), &command);
    assert!(String::from_utf8_lossy(&recorded.stdout).contains("15"), "{}", String::from_utf8_lossy(&recorded.stdout));
    drop(postgres);
    let (out, report) = replay_in(&dir, &dir.join("q/rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout);
    let changed = psql(&sql.replace("1, 5", "1, 6"));
    let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
    let (out, report) = replay_in(&dir, &dir.join("q/rec"), &[], &changed);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert_eq!(report["exchanges"][0]["status"], "diverged", "{report}");
}

/// psql with `sslmode=require`: a cleartext SSLRequest, then TLS. Recorded with its plaintext
/// (uprobes on libssl), replayed through the replayer's own TLS server with postgres stopped.
#[test]
fn psql_over_tls_replays_its_plaintext_with_postgres_stopped() {
    let dir = scratch("programs-psql-tls");
    let port = free_port();
    let postgres = Postgres::start_tls(&dir, port);
    let conninfo = format!("host=localhost port={port} user=postgres sslmode=require");
    let sql = "select 6 * 7 as answer, ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let command = ["psql", "-X", conninfo.as_str(), "-c", sql];
    let recorded = record_in(&dir, &dir.join("q"), &command);
    let text = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert!(text.contains("42 | t"), "the query ran over TLS: {text}");
    let rec = retrace_tests::Rec::open(&dir.join("q/rec"));
    let tls = rec.find("a TLS stream", |s| s.kind == "tls");
    assert_eq!((tls.sni.as_str(), tls.tls_library.as_str()), ("localhost", "openssl"), "{tls:#?}");
    let query = rec.bytes(tls.id, retrace_agent::store::proto::Direction::Out);
    assert!(query.windows(sql.len()).any(|w| w == sql.as_bytes()), "the query is in the TLS plaintext");
    drop(postgres);
    let (out, report) = replay_in(&dir, &dir.join("q/rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout);
    assert_eq!(report["tls_terminated"], 1, "{report}");
}

#[test]
fn hundreds_of_short_lived_processes_open_relative_paths_exactly() {
    let dir = scratch("programs-relative");
    for sub in ["a", "b", "c"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("f.txt"), format!("in {sub}\n")).unwrap();
    }
    let script =
        "for i in $(seq 300); do case $((i % 3)) in 0) d=a;; 1) d=b;; 2) d=c;; esac; (cd $d && cat f.txt); done";
    let out = record_in(&dir, &dir, &["sh", "-c", script]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    for sub in ["a", "b", "c"] {
        let path = dir.join(sub).join("f.txt");
        let n = rec.streams.iter().filter(|s| s.path == path.to_str().unwrap()).count();
        assert_eq!(n, 100, "opens of {} recorded under their own path", path.display());
    }
    let elsewhere: Vec<&str> = rec
        .streams
        .iter()
        .map(|s| s.path.as_str())
        .filter(|p| p.ends_with("/f.txt") && !p.starts_with(dir.to_str().unwrap()))
        .collect();
    assert!(elsewhere.is_empty(), "relative paths recorded elsewhere: {elsewhere:?}");
}

#[test]
fn redis_server_replays_concurrent_benchmark_clients_in_the_recorded_order() {
    let dir = scratch("programs-redis-benchmark");
    let port = free_port();
    let p = port.to_string();
    let dir_s = dir.to_str().unwrap();
    let server = ["redis-server", "--port", &p, "--save", "", "--appendonly", "no", "--dir", dir_s];
    let rec = dir.join("rec");
    retrace_tests::record_server(&rec, &server, port, || {
        // 20 connections at once: each INCR's answer is the counter's value, so the answers
        // depend on the order in which the server read the requests across connections.
        run(Command::new("redis-benchmark").args(["-p", &p, "-c", "20", "-n", "2000", "-t", "incr,lpush", "-q"]));
        let counter = run(Command::new("redis-cli").args(["-p", &p, "get", "counter:__rand_int__"]));
        assert_eq!(String::from_utf8_lossy(&counter.stdout), "2000\n");
        run(Command::new("redis-cli").args(["-p", &p, "llen", "mylist"]));
    });

    let (out, report) = replay_in(&dir, &rec, &[], &server);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let exchanges = report["exchanges"].as_array().unwrap();
    // 40 benchmark connections, its probes, and the two redis-cli ones.
    assert!(exchanges.len() >= 42, "{report}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched"), "{report}");
    let to_program: u64 = exchanges.iter().map(|e| e["bytes_to_program"].as_u64().unwrap()).sum();
    assert!(to_program > 2 * 2000 * 20, "every request was sent: {to_program} bytes");

    // A server that no longer knows LPUSH answers it with errors.
    let mut changed = server.to_vec();
    changed.extend(["--rename-command", "LPUSH", "PUSHLEFT"]);
    let (out, report) = replay_in(&dir, &rec, &[], &changed);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(report["exchanges"].as_array().unwrap().iter().any(|e| e["status"] == "diverged"), "{report}");
}

/// A server's clock in replay is the one it read when recorded, though its idle loop turns
/// another number of times while the replay delivers its requests sooner: redis answers TIME
/// from the clock its event loop read last, and its log lines carry the time to the ms.
#[test]
fn redis_server_answers_time_as_recorded_after_an_idle_wait() {
    let dir = scratch("programs-redis-time");
    let port = free_port();
    let p = port.to_string();
    let dir_s = dir.to_str().unwrap();
    let server = ["redis-server", "--port", &p, "--save", "", "--appendonly", "no", "--dir", dir_s];
    let rec = dir.join("rec");
    let answered = retrace_tests::record_server(&rec, &server, port, || {
        // redis's cron turns ten times a second meanwhile, reading the clock each time.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        run(Command::new("redis-cli").args(["-p", &p, "set", "k", "v"]));
        std::thread::sleep(std::time::Duration::from_millis(700));
        run(Command::new("redis-cli").args(["-p", &p, "time"])).stdout
    });
    let (out, report) = replay_in(&dir, &rec, &["--lenient"], &server);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    // Where the replay delivers a request together with its connection, the event loop may
    // turn once less than it did: TIME's answer is then a read or two off, microseconds, never
    // the seconds the idle wait was (`*2\r\n$10\r\nSSSSSSSSSS\r\n$6\r\nUUUUUU`).
    for exchange in report["exchanges"].as_array().unwrap() {
        if exchange["status"] != "matched" {
            let offset = exchange["difference"]["offset"].as_u64().unwrap_or(0);
            assert!(offset >= 28, "TIME's answer within a millisecond of {answered:?}: {report}");
        }
    }
    // Its startup, before any request, is exact: the log line carries the time to the ms.
    let recorded = retrace_tests::Rec::open(&rec);
    let logged: Vec<u8> = recorded
        .streams
        .iter()
        .filter(|s| s.path == "/dev/null")
        .flat_map(|s| recorded.bytes(s.id, retrace_agent::store::proto::Direction::Out))
        .collect();
    let ready = |text: &str| text.lines().find(|l| l.contains("Ready to accept")).map(|l| l.to_owned());
    let replayed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(ready(&replayed).is_some(), "{replayed}");
    assert_eq!(ready(&replayed), ready(&String::from_utf8_lossy(&logged)), "{replayed}");
    assert!(report["clock_reads_exact"].as_u64().unwrap() > 0, "{report}");
}

/// A non-loopback IPv4 address of this host (a resolver there makes glibc's AI_ADDRCONFIG
/// matter), else a loopback one.
fn host_address() -> String {
    let out = Command::new("hostname").arg("-I").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace().find(|a| a.parse::<std::net::Ipv4Addr>().is_ok()).unwrap_or("127.0.0.77").to_owned()
}

#[test]
fn curl_and_python_resolve_names_through_a_recorded_dns_server() {
    let dir = scratch("programs-dns");
    let dns_ip = host_address();
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        format!(
            "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={dns_ip}\nport=53\naddress=/svc.retrace.test/127.0.0.1\naddress=/other.retrace.test/127.0.0.1\n"
        ),
    )
    .unwrap();
    let _dnsmasq = Server(
        Command::new("dnsmasq")
            .args(["--keep-in-foreground", "-u", "root"])
            .arg(format!("--conf-file={}", conf.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (cargo xtask setup installs it)"),
    );
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello"), "hello by name\n").unwrap();
    let port = free_port();
    let p = port.to_string();
    let _http = Server(
        Command::new(python())
            .args(["-m", "http.server", &p, "--bind", "127.0.0.1", "--directory", site.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dig = || Command::new("dig").args(["+short", "+time=1", &format!("@{dns_ip}"), "svc.retrace.test"]).output();
    while !dig().is_ok_and(|o| o.stdout == b"127.0.0.1\n") {
        assert!(std::time::Instant::now() < deadline, "dnsmasq answers on {dns_ip}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The recorded programs see a resolv.conf naming the test's DNS server (a private mount).
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {dns_ip}\noptions timeout:1 attempts:1\n")).unwrap();
    let with_resolv = |command: &[&str]| -> Vec<String> {
        let mount = format!("mount --bind {} /etc/resolv.conf && exec \"$@\"", resolv.display());
        ["unshare", "-m", "sh", "-c", &mount, "sh"].iter().chain(command).map(|s| s.to_string()).collect()
    };
    let url = format!("http://svc.retrace.test:{port}/hello");
    let curl = ["curl", "-sS", url.as_str()];
    let fetch = format!("import urllib.request; print(urllib.request.urlopen('{url}').read().decode(), end='')");
    let py = [python(), "-c", fetch.as_str()];
    // A static Go client: Go's own resolver, its own vDSO lookup for the clock it prints.
    go_build(&dir, "goget", "package main\n\nimport (\n\t\"fmt\"\n\t\"io\"\n\t\"net/http\"\n\t\"os\"\n\t\"time\"\n)\n\nfunc main() {\n\tresp, err := http.Get(os.Args[1])\n\tif err != nil {\n\t\tfmt.Println(err)\n\t\tos.Exit(1)\n\t}\n\tbody, _ := io.ReadAll(resp.Body)\n\tfmt.Fprintln(os.Stderr, time.Now().UTC().Format(time.RFC3339Nano))\n\tfmt.Print(string(body))\n}\n", &[]);
    let go = ["./goget", url.as_str()];
    for (name, command) in [("curl", &curl[..]), ("python", &py[..]), ("go", &go[..])] {
        let rec_dir = dir.join(name);
        let recorded = with_resolv(command);
        let recorded: Vec<&str> = recorded.iter().map(String::as_str).collect();
        let out = record_in(&dir, &rec_dir, &recorded);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello by name\n", "{name}");
        // Replayed as the plain command: the recorded resolv.conf is served, the DNS server
        // and the web server are the replayer's.
        let (out, report) = replay_in(&dir, &rec_dir.join("rec"), &[], command);
        assert_eq!(out.status.code(), Some(0), "{name}: {}\n{report}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello by name\n");
        let dns = report["dns"].as_array().unwrap();
        assert!(
            dns.iter().any(|q| q["name"] == "svc.retrace.test" && q["type"] == "A" && q["answer"] == "recorded"),
            "{report}"
        );
    }
    // Another name: NXDOMAIN from the replayer, never silence, and a failed replay.
    let other = format!("http://other.retrace.test:{port}/hello");
    let (out, report) = replay_in(&dir, &dir.join("curl/rec"), &[], &["curl", "-sS", &other]);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(stderr(&out).contains("Could not resolve host"), "{}", stderr(&out));
    let dns = report["dns"].as_array().unwrap();
    assert!(
        dns.iter().any(|q| q["name"] == "other.retrace.test" && q["answer"].as_str().unwrap().starts_with("NXDOMAIN")),
        "{report}"
    );
}

#[test]
fn nginx_replays_against_concurrent_keep_alive_wrk_connections() {
    let dir = scratch("programs-nginx-wrk");
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>under load</h1>\n").unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; error_log stderr; pid {}/nginx.pid;\nevents {{}}\nhttp {{ access_log off; server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            dir.display(),
            site.display()
        ),
    )
    .unwrap();
    let nginx = ["nginx", "-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()];
    let rec = dir.join("rec");
    let url = format!("http://127.0.0.1:{port}/index.html");
    let text = retrace_tests::record_server(&rec, &nginx, port, || {
        let load = run(Command::new("wrk").args(["-t2", "-c6", "-d1s", &url]));
        String::from_utf8_lossy(&load.stdout).into_owned()
    });

    let (out, report) = replay_in(&dir, &rec, &[], &nginx);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let exchanges = report["exchanges"].as_array().unwrap();
    // wrk's six connections (and its probe): every request answered as recorded.
    assert!(exchanges.len() >= 6, "{report}");
    assert!(exchanges.iter().all(|e| e["status"] == "matched"), "{report}");
    let requests: u64 = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find(|(_, w)| *w == "requests")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    let to_program: u64 = exchanges.iter().map(|e| e["bytes_to_program"].as_u64().unwrap()).sum();
    assert!(requests > 100 && to_program > requests * 40, "{requests} requests, {to_program} bytes sent: {text}");
}

#[test]
fn psql_logs_in_with_scram_and_replays_with_postgres_stopped() {
    let dir = scratch("programs-psql-scram");
    let port = free_port();
    let postgres = Postgres::start(&dir, port, "scram-sha-256");
    let port = port.to_string();
    // The client nonce comes from OpenSSL's generator (RAND_bytes): replayed as recorded, the
    // server's recorded proof checks out.
    let password = format!("PGPASSWORD={PASSWORD}");
    let psql = |sql: &str| -> Vec<String> {
        ["env", &password, "psql", "-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-c", sql]
            .map(String::from)
            .to_vec()
    };
    let command = psql("select 6 * 7 as answer");
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let recorded = record_in(&dir, &dir.join("q"), &command);
    assert!(String::from_utf8_lossy(&recorded.stdout).contains("42"), "{}", String::from_utf8_lossy(&recorded.stdout));
    drop(postgres);
    let (out, report) = replay_in(&dir, &dir.join("q/rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout);
    assert!(report["library_random_reads"].as_u64().unwrap() >= 1, "{report}");
    // The client's proof would let the password be guessed offline: it is redacted, so another
    // password's proof matches it, but the client then refuses the recorded server signature.
    let rec = retrace_tests::Rec::open(&dir.join("q/rec"));
    let login = rec.find("the TCP connection", |s| s.kind == "tcp");
    let proof = rec.data(login.id).into_iter().flat_map(|d| d.redactions.iter()).find(|r| r.rule == "scram_proof");
    assert!(proof.is_some_and(|r| r.length >= 40), "the proof is redacted: {:?}", rec.data(login.id));
    let wrong: Vec<String> = psql("select 6 * 7 as answer").into_iter().map(|a| a.replace(PASSWORD, "other")).collect();
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let (out, _) = replay_in(&dir, &dir.join("q/rec"), &[], &wrong);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(stderr(&out).contains("exit status 2 differs"), "{}", stderr(&out));
}

/// The `password` method sends the password in clear (inside the startup exchange): the
/// recording holds a placeholder, and psql replays with postgres stopped.
#[test]
fn a_cleartext_postgres_password_is_redacted_and_psql_still_replays() {
    let dir = scratch("programs-psql-password");
    let port = free_port();
    let postgres = Postgres::start(&dir, port, "password");
    let password = format!("PGPASSWORD={PASSWORD}");
    let port = port.to_string();
    let command =
        ["env", &password, "psql", "-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-c", "select 6 * 7"];
    let recorded = record_in(&dir, &dir.join("q"), &command);
    assert!(String::from_utf8_lossy(&recorded.stdout).contains("42"), "{}", String::from_utf8_lossy(&recorded.stdout));
    drop(postgres);
    let rec = retrace_tests::Rec::open(&dir.join("q/rec"));
    let login = rec.find("the TCP connection", |s| s.kind == "tcp");
    let sent = rec.bytes(login.id, retrace_agent::store::proto::Direction::Out);
    assert!(!sent.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "the password is not recorded");
    let redacted: Vec<_> = rec.data(login.id).into_iter().flat_map(|d| d.redactions.iter()).collect();
    assert!(redacted.iter().any(|r| r.rule == "pg_password" && r.length as usize == PASSWORD.len()), "{redacted:?}");
    let (out, report) = replay_in(&dir, &dir.join("q/rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout);
}
