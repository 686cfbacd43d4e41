//! Secure recordings: redaction of real traffic, encryption to recipients, tamper detection,
//! crash safety under kill -9, the audit log, export and expiry.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use retrace_agent::model::proto::{record::Kind as R, Direction};
use retrace_tests::{assert_bytes_eq, assert_no_panic, audit_log, record, retrace, retrace_command, scratch, Rec};

/// (what, secret): one canary per detector; each secret must vanish.
const CANARIES: &[(&str, &str)] = &[
    ("Authorization: Bearer ", "sk_live_CANARYhdr0123456789"),
    ("{\"user\": \"bob\", \"password\": \"", "CANARY-pass-w0rd!"),
    ("postgres://admin:", "CANARYurlpass"),
    ("aws_access_key_id = ", "AKIACANARY7AWSKEY234"),
    ("id=", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQU5BUlkifQ.c2lnbmF0dXJlQ0FOQVJZand0"),
    ("use bearer ", "CANARYbearerTok3n99"),
    ("-----BEGIN RSA PRIVATE KEY-----\n", "MIIEcanaryKEYbodyAAAAxyz"),
    ("card: ", "4111 1111 1111 1111"),
    ("contact ", "canary.user@example.com"),
    ("DB_PASSWORD=", "CANARYenvPass55"),
    ("  api_key: \"", "CANARY yaml key"),
    ("<settings><password>", "CANARYmavenPass"),
    ("GITHUB_TOKEN used ", "ghp_CANARYgithub0123456789abcdefghijklmn"),
];

fn canary_body() -> String {
    let mut body = String::new();
    for (before, secret) in CANARIES {
        body.push_str(before);
        body.push_str(secret);
        match *before {
            b if b.starts_with("{") => body.push_str("\"}\n"),
            b if b.starts_with("postgres") => body.push_str("@db.internal:5432/app\n"),
            b if b.starts_with("-----BEGIN") => body.push_str("\n-----END RSA PRIVATE KEY-----\n"),
            b if b.ends_with('"') => body.push_str("\"\n"),
            b if b.starts_with("<settings>") => body.push_str("</password></settings>\n"),
            _ => body.push('\n'),
        }
    }
    body
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A local HTTP server (not recorded) that saves each request body to `dir/received` and
/// answers with a token of its own.
struct Server {
    child: std::process::Child,
    port: u16,
}

const SERVER: &str = r#"
import http.server, sys
out = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        open(out, 'wb').write(body)
        reply = b'{"access_token": "CANARY-resp-token-777", "ok": true}'
        self.send_response(200)
        self.send_header('Content-Length', str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Server {
    fn start(received: &Path) -> Server {
        let mut child = Command::new("python3")
            .args(["-c", SERVER, received.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Server { child, port: line.trim().parse().expect("server port") }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn canary_secrets_sent_over_http_never_reach_the_disk() {
    let dir = scratch("canaries");
    let file = dir.join("canaries.txt");
    let body = canary_body();
    std::fs::write(&file, &body).unwrap();
    let received = dir.join("received");
    let server = Server::start(&received);
    let url = format!("http://127.0.0.1:{}/upload?user=7&access_token=CANARYqueryTok77", server.port);
    let header = "Authorization: Bearer sk_live_CANARYcurlHDR42";
    let data = format!("@{}", file.display());
    let (rec, _) = record(
        &dir,
        &[],
        &["curl", "-sS", "-H", header, "-H", "Content-Type: text/plain", "--data-binary", &data, &url],
    );
    assert_eq!(std::fs::read(&received).unwrap(), body.as_bytes(), "the server got the real body");

    let secrets: Vec<&str> = CANARIES
        .iter()
        .map(|c| c.1)
        .chain(["sk_live_CANARYcurlHDR42", "CANARY-resp-token-777", "CANARYqueryTok77"])
        .collect();
    // Not in any byte on disk: recording, keys folder, audit log.
    let mut files = Vec::new();
    all_files(&dir.join("rec"), &mut files);
    all_files(&retrace_tests::test_home(), &mut files);
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        for secret in &secrets {
            assert!(!contains(&bytes, secret.as_bytes()), "{secret} found in {}", path.display());
        }
    }
    // Nor in the decrypted recording.
    for record in &rec.records {
        let text = format!("{record:?}");
        if let Some(R::Data(d)) = &record.kind {
            for secret in &secrets {
                assert!(!contains(&d.payload, secret.as_bytes()), "{secret} in a payload");
            }
        }
        assert!(!secrets.iter().any(|s| text.contains(s)), "a secret in {text:.200}");
    }
    // Lengths intact: the connection's bytes are as long as what the server took in, and the
    // request's Content-Length still describes its body.
    let tcp = rec.find("the TCP connection", |s| s.kind == "tcp" && s.peer.ends_with(&format!(":{}", server.port)));
    let sent = rec.bytes(tcp.id, Direction::Out);
    let split = sent.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end") + 4;
    let head = String::from_utf8_lossy(&sent[..split]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length kept")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(length, body.len());
    assert_eq!(sent.len() - split, body.len(), "the body keeps its length");
    assert!(head.contains("Authorization: Bearer "), "the header name and scheme stay: {head}");
    let got = rec.bytes(tcp.id, Direction::In);
    assert!(contains(&got, b"\"access_token\": \""), "the response is there, its token replaced");
    let read = rec.bytes(rec.by_path(&file).id, Direction::In);
    assert_eq!(read.len(), body.len(), "the file's bytes keep their length");
    // Every detector left its mark.
    let mut rules: Vec<String> = rec
        .records
        .iter()
        .filter_map(|r| match &r.kind {
            Some(R::Data(d)) => Some(d.redactions.iter().map(|x| x.rule.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    rules.sort();
    rules.dedup();
    for rule in [
        "aws_access_key",
        "bearer",
        "card",
        "email",
        "header",
        "json_key",
        "jwt",
        "key_value",
        "private_key",
        "service_token",
        "url_password",
        "xml_element",
    ] {
        assert!(rules.iter().any(|r| r == rule), "{rule} marked: {rules:?}");
    }
}

/// Redis AUTH (one argument, and user and password through HELLO) is redacted on the wire;
/// the replayed client, given the same password, matches the placeholder.
#[test]
fn redis_passwords_are_redacted_and_the_client_still_replays() {
    let dir = scratch("redis-auth");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let password = "CANARY-redis-Pass9";
    let mut server = Command::new("redis-server")
        .args(["--port", &port, "--requirepass", password, "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (cargo xtask setup installs it)");
    let cli = format!(
        "redis-cli -p {port} -a {password} --no-auth-warning SET k v && \
         redis-cli -p {port} --user default --pass {password} --no-auth-warning -3 GET k"
    );
    let command = ["sh", "-c", cli.as_str()];
    let mut up = false;
    for _ in 0..100 {
        let ping = Command::new("redis-cli").args(["-p", &port, "-a", password, "--no-auth-warning", "PING"]).output();
        if ping.is_ok_and(|o| o.stdout.starts_with(b"PONG")) {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "redis-server answers");
    let (rec, out) = record(&dir, &[], &command);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\nv\n", "{}", String::from_utf8_lossy(&out.stderr));
    let mut redacted = 0;
    for record in &rec.records {
        if let Some(R::Data(d)) = &record.kind {
            assert!(!contains(&d.payload, password.as_bytes()), "the password in {:?}", d.payload);
            redacted +=
                d.redactions.iter().filter(|r| r.rule == "redis_auth" && r.length as usize == password.len()).count();
        }
    }
    assert_eq!(redacted, 2, "AUTH and HELLO AUTH");
    let (out, report) = retrace_tests::replay_in(&dir, &dir.join("rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\nv\n");
}

/// A POP3 server that offers SASL PLAIN and LOGIN and takes any credentials (curl is the
/// client under test; this only answers it).
const POP3: &str = r#"
import socket
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); f = c.makefile('rb'); c.sendall(b'+OK ready\r\n')
    for line in f:
        words = line.strip().split(b' '); cmd = words[0].upper()
        if cmd == b'CAPA': c.sendall(b'+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n')
        elif cmd == b'AUTH':
            if words[1].upper() == b'PLAIN' and len(words) == 2: c.sendall(b'+ \r\n'); f.readline()
            if words[1].upper() == b'LOGIN':
                if len(words) == 2: c.sendall(b'+ VXNlcm5hbWU6\r\n'); f.readline()
                c.sendall(b'+ UGFzc3dvcmQ6\r\n'); f.readline()
            c.sendall(b'+OK logged in\r\n')
        elif cmd == b'LIST': c.sendall(b'+OK\r\n1 10\r\n.\r\n')
        elif cmd == b'QUIT': c.sendall(b'+OK bye\r\n'); break
        else: c.sendall(b'+OK\r\n')
    c.close()
"#;

/// Line protocols' logins: curl logs in to POP3 with SASL PLAIN and LOGIN, with and without an
/// initial response; neither the password nor its base64 forms are recorded, and curl replays
/// against the recording with the server gone.
#[test]
fn line_protocol_logins_are_redacted_and_curl_still_replays() {
    use base64::{prelude::BASE64_STANDARD, Engine as _};
    let dir = scratch("line-logins");
    let password = "CANARYpopPw9";
    let mut server = Command::new("python3").args(["-c", POP3]).stdout(Stdio::piped()).spawn().unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let url = format!("pop3://bob:{password}@127.0.0.1:{}/", port.trim());
    let script = ["AUTH=PLAIN", "AUTH=LOGIN"]
        .iter()
        .flat_map(|o| {
            [format!("curl -sS --login-options {o} {url}"), format!("curl -sS --sasl-ir --login-options {o} {url}")]
        })
        .collect::<Vec<_>>()
        .join(" && ");
    let command = ["sh", "-c", script.as_str()];
    let (rec, out) = record(&dir, &[], &command);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 10\r\n".repeat(4), "{}", String::from_utf8_lossy(&out.stderr));
    let forms =
        [password.to_owned(), BASE64_STANDARD.encode(password), BASE64_STANDARD.encode(format!("\0bob\0{password}"))];
    let mut redacted = 0;
    for record in &rec.records {
        if let Some(R::Data(d)) = &record.kind {
            for form in &forms {
                assert!(!contains(&d.payload, form.as_bytes()), "{form} in {:?}", String::from_utf8_lossy(&d.payload));
            }
            redacted += d.redactions.iter().filter(|r| r.rule == "line_password").count();
        }
    }
    assert_eq!(redacted, 4, "one login each");
    let (out, report) = retrace_tests::replay_in(&dir, &dir.join("rec"), &[], &command);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["exchanges"].as_array().map(Vec::len), Some(4), "{report}");
}

#[test]
fn a_secret_split_across_writes_is_still_found() {
    let dir = scratch("split");
    let out = dir.join("out.txt");
    let secret = "AKIACANARY7AWSKEY234";
    // One line per split point, each written in two writes with a pause between.
    let script = format!(
        "import os,time\nfd=os.open('{}', os.O_WRONLY|os.O_CREAT)\ns=b'key={secret}\\n'\nfor i in range(len(s)+1):\n    os.write(fd, s[:i]); time.sleep(0.002); os.write(fd, s[i:])\n",
        out.display()
    );
    let (rec, _) = record(&dir, &[], &["python3", "-c", &script]);
    let on_disk = std::fs::read(&out).unwrap();
    let got = rec.bytes(rec.by_path(&out).id, Direction::Out);
    assert_eq!(got.len(), on_disk.len());
    assert!(!contains(&got, secret.as_bytes()));
    let lines: Vec<&[u8]> = got.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), "key=".len() + secret.len() + 2, "one line per split point");
    assert!(lines.windows(2).all(|w| w[0] == w[1]), "the same secret, the same placeholder at every split");
}

#[test]
fn capture_allowlist_keeps_other_streams_as_metadata() {
    let dir = scratch("allowlist");
    let kept = dir.join("kept.txt");
    let other = dir.join("other.txt");
    std::fs::write(&kept, b"kept bytes\n").unwrap();
    std::fs::write(&other, b"private bytes\n").unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, format!("[capture]\npaths = [\"{}/kept*\"]\n", dir.display())).unwrap();
    let script = format!("open('{}').read(); open('{}').read()", kept.display(), other.display());
    let (rec, _) = record(&dir, &["--rules", rules.to_str().unwrap()], &["python3", "-c", &script]);
    assert_eq!(rec.bytes(rec.by_path(&kept).id, Direction::In), b"kept bytes\n");
    let other_id = rec.by_path(&other).id;
    assert!(rec.bytes(other_id, Direction::In).is_empty());
    let gaps = rec.gaps(other_id);
    assert_eq!(gaps.iter().map(|g| g.length).sum::<u64>(), 14, "counted, as not_captured");
    assert!(gaps.iter().all(|g| g.reason == retrace_agent::model::proto::GapReason::NotCaptured as i32));
    assert!(rec.recording.manifest.capture_allowlist);
}

fn verify(rec: &Path, identity: Option<&Path>) -> (bool, String) {
    let mut args = vec!["verify", rec.to_str().unwrap()];
    if let Some(id) = identity {
        args.extend(["--identity", id.to_str().unwrap()]);
    }
    let out = retrace(&args);
    assert_no_panic(&out);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `retrace record -o rec OPTIONS -- COMMAND`, for recordings the tests' identity cannot read.
fn record_raw(rec: &Path, options: &[&str], command: &[&str]) {
    let out = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap()])
        .args(options)
        .arg("--")
        .args(command)
        .output()
        .unwrap();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn keygen(path: &Path) -> String {
    let out = retrace(&["keygen", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn tampering_is_detected_and_named() {
    let dir = scratch("tamper");
    let id = dir.join("id.txt");
    let recipient = keygen(&id);
    let file = dir.join("data.bin");
    let script = format!(
        "import os\nfd=os.open('{}', os.O_WRONLY|os.O_CREAT)\nfor i in range(64): os.write(fd, bytes([97+i%26])*16384)",
        file.display()
    );
    record_raw(&dir.join("rec"), &["--recipient", &recipient, "--segment-size", "64K"], &["python3", "-c", &script]);
    let good = dir.join("rec");
    let m = retrace_agent::store::Manifest::read(&good).unwrap();
    assert!(m.segments.len() >= 4, "{} segments", m.segments.len());
    assert_eq!(verify(&good, Some(&id)), (true, verify(&good, Some(&id)).1));
    assert!(verify(&good, None).0, "ciphertext checks pass without the identity too");

    let variant = |name: &str, change: &dyn Fn(&Path)| {
        let copy = dir.join(name);
        copy_dir(&good, &copy);
        change(&copy);
        copy
    };
    let seg = |d: &Path, i: usize| d.join(format!("seg-{i:06}.age"));
    let flipped = variant("flipped", &|d| {
        let mut b = std::fs::read(seg(d, 1)).unwrap();
        let n = b.len() / 2;
        b[n] ^= 1;
        std::fs::write(seg(d, 1), b).unwrap();
    });
    let truncated = variant("truncated", &|d| {
        let b = std::fs::read(seg(d, 2)).unwrap();
        std::fs::write(seg(d, 2), &b[..b.len() - 100]).unwrap();
    });
    let removed = variant("removed", &|d| std::fs::remove_file(seg(d, 1)).unwrap());
    let swapped = variant("swapped", &|d| {
        std::fs::rename(seg(d, 1), d.join("x")).unwrap();
        std::fs::rename(seg(d, 2), seg(d, 1)).unwrap();
        std::fs::rename(d.join("x"), seg(d, 2)).unwrap();
    });
    // Another recording's segment put in place, manifest hash and all: only the binding
    // inside the encryption can tell.
    record_raw(
        &dir.join("other/rec"),
        &["--recipient", &recipient, "--segment-size", "64K"],
        &["python3", "-c", &script],
    );
    let foreign = variant("foreign", &|d| {
        std::fs::copy(seg(&dir.join("other/rec"), 1), seg(d, 1)).unwrap();
        let mut m = retrace_agent::store::Manifest::read(d).unwrap();
        let other = retrace_agent::store::Manifest::read(&dir.join("other/rec")).unwrap();
        m.segments[1] = other.segments[1].clone();
        m.write(d).unwrap();
    });
    let reordered = variant("reordered", &|d| {
        let mut m = retrace_agent::store::Manifest::read(d).unwrap();
        let (a, b) = (m.segments[1].clone(), m.segments[2].clone());
        std::fs::rename(seg(d, 1), d.join("x")).unwrap();
        std::fs::rename(seg(d, 2), seg(d, 1)).unwrap();
        std::fs::rename(d.join("x"), seg(d, 2)).unwrap();
        m.segments[1] = retrace_agent::store::SegmentEntry { name: a.name.clone(), ..b.clone() };
        m.segments[2] = retrace_agent::store::SegmentEntry { name: b.name.clone(), ..a.clone() };
        m.write(d).unwrap();
    });
    for (copy, names, without_identity_too) in [
        (&flipped, vec!["seg-000001.age"], true),
        (&truncated, vec!["seg-000002.age: truncated"], true),
        (&removed, vec!["seg-000001.age: missing"], true),
        (&swapped, vec!["seg-000001.age", "seg-000002.age"], true),
        (&foreign, vec!["seg-000001.age: it belongs to recording"], false),
        (&reordered, vec!["seg-000001.age: it is segment 2"], false),
    ] {
        let (ok, text) = verify(copy, Some(&id));
        assert!(!ok, "{}: verify passed:\n{text}", copy.display());
        for name in &names {
            assert!(text.contains(name), "{}: {name} not named in:\n{text}", copy.display());
        }
        if without_identity_too {
            let (ok, text) = verify(copy, None);
            assert!(
                !ok && text.contains(names[0].split(':').next().unwrap()),
                "{}: without identity:\n{text}",
                copy.display()
            );
        }
        // Readers refuse too, in one line.
        let out = retrace(&["streams", copy.to_str().unwrap(), "--identity", id.to_str().unwrap()]);
        assert!(!out.status.success(), "{}: streams read a tampered recording", copy.display());
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    }
}

#[test]
fn record_to_a_recipient_needs_and_writes_no_private_key() {
    let dir = scratch("recipient");
    let id = dir.join("id.txt");
    let recipient = keygen(&id);
    assert!(recipient.starts_with("age1"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&id).unwrap().permissions().mode() & 0o777, 0o600);
    let empty_home = dir.join("home");
    let file = dir.join("hello.txt");
    std::fs::write(&file, b"hello\n").unwrap();
    let rec = dir.join("rec");
    let out = retrace_command()
        .env("XDG_CONFIG_HOME", &empty_home)
        .args(["record", "-o", rec.to_str().unwrap(), "--recipient", &recipient, "--", "head", "-c", "6"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!empty_home.exists(), "no key was created or read for recording");
    // Without the identity: a clear refusal. With it: the bytes.
    let out = retrace_command()
        .env("XDG_CONFIG_HOME", &empty_home)
        .args(["streams", rec.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--identity"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = retrace(&["streams", rec.to_str().unwrap()]);
    assert!(!out.status.success(), "another identity cannot read it");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&recipient));
    let opened = retrace_agent::store::Recording::open(&rec, retrace_agent::keys::read_identity(&id).unwrap()).unwrap();
    let (rows, _) = retrace_agent::view::stream_table(&opened).unwrap();
    let row = rows.iter().find(|r| r.path == file.to_str().unwrap()).expect("the file");
    let mut bytes = Vec::new();
    retrace_agent::view::cat(&opened, row.id, Direction::In, &mut bytes).unwrap();
    assert_eq!(bytes, b"hello\n");
    // A standard age file: the age tool opens a segment.
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(&id)
        .arg(rec.join("seg-000000.age"))
        .output()
        .expect("age CLI (cargo xtask setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (records, torn) = retrace_agent::store::reader::parse_frames(&out.stdout).unwrap();
    assert!(torn.is_none());
    assert!(matches!(records[0].kind, Some(R::SegmentHeader(_))));
}

#[test]
fn kill_9_at_random_points_leaves_recordings_that_verify() {
    let dir = scratch("kill9");
    for run in 0..8u64 {
        let run_dir = dir.join(format!("run{run}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let file = run_dir.join("out.txt");
        let rec = run_dir.join("rec");
        // Lowercase lines: nothing a detector would touch, so recorded bytes equal written ones.
        let script = format!(
            "import os,time\nfd=os.open('{}', os.O_WRONLY|os.O_CREAT)\nfor i in range(3000):\n    os.write(fd, (b'line %06d abcdefghijklmnopqrstuvwxyz\\n' % i) * 64); time.sleep(0.001)\n",
            file.display()
        );
        // Every other run compressed: a torn tail then ends inside a compressed block too.
        let compress: &[&str] = if run % 2 == 1 { &["--compress"] } else { &[] };
        let mut recorder = retrace_command()
            .args(["record", "-o", rec.to_str().unwrap()])
            .args(compress)
            .args(["--", "python3", "-c", &script])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Pseudo-random moments between 0.3 s (still loading the probes) and 3 s.
        let delay = 300 + (run.wrapping_mul(2654435761) % 2700);
        std::thread::sleep(Duration::from_millis(delay));
        recorder.kill().unwrap(); // SIGKILL
        recorder.wait().unwrap();
        // The orphaned command (it may still be stopped, waiting to be released).
        let _ = Command::new("pkill").args(["-9", "-f", run_dir.to_str().unwrap()]).status();
        std::thread::sleep(Duration::from_millis(50));
        if !rec.join("manifest.json").exists() {
            continue; // killed before the recording began: nothing to check
        }
        let (ok, text) = verify(&rec, None);
        assert!(ok, "run {run} (killed after {delay} ms): {text}");
        let opened = Rec::open(&rec);
        let on_disk = std::fs::read(&file).unwrap_or_default();
        if let Some(row) = opened.streams.iter().find(|s| s.path == file.to_str().unwrap()) {
            let data = opened.data(row.id);
            let mut next = 0;
            for d in &data {
                assert_eq!(d.offset, next, "run {run}: recorded bytes are one run from the start");
                next += d.payload.len() as u64;
            }
            let got = opened.bytes(row.id, Direction::Out);
            assert!(got.len() <= on_disk.len());
            assert_bytes_eq(&got, &on_disk[..got.len()], &format!("run {run}"));
        }
    }
}

#[test]
fn audit_log_records_every_access_and_detects_edits() {
    let dir = scratch("audit");
    let log = dir.join("audit.jsonl");
    let run = |args: &[&str]| {
        let out = retrace_command().env("RETRACE_AUDIT_LOG", &log).args(args).output().unwrap();
        assert_no_panic(&out);
        out
    };
    let rec = dir.join("rec");
    let r = rec.to_str().unwrap();
    assert!(run(&["record", "-o", r, "--", "true"]).status.success());
    assert!(run(&["streams", r]).status.success());
    assert!(run(&["verify", r]).status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let entries: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["record_start", "record_stop", "read", "verify"]);
    let id = retrace_agent::store::Manifest::read(&rec).unwrap().id;
    for e in &entries[1..] {
        assert_eq!(e["recording_id"], id.as_str());
        assert_eq!(e["uid"], 0);
        assert!(!e["user"].as_str().unwrap().is_empty() && !e["host"].as_str().unwrap().is_empty());
    }
    let check = |name: &str, lines: Vec<String>, want: &str| {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        std::fs::copy(dir.join("audit.jsonl.head"), dir.join(format!("{name}.head"))).unwrap();
        let out = retrace(&["audit", "verify", "--log", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && stdout.contains(want), "{name}: {stdout}");
    };
    let lines: Vec<String> = text.lines().map(String::from).collect();
    let out = retrace(&["audit", "verify", "--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"uid\":0", "\"uid\":1000");
    check("edited.jsonl", edited, "line 2 (seq 1): edited");
    let mut removed = lines.clone();
    removed.remove(1);
    check("removed.jsonl", removed, "seq 2 where 1 was due");
    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    check("reordered.jsonl", reordered, "line 2");
    let mut cut = lines.clone();
    cut.pop();
    check("cut.jsonl", cut, "cut off the end");
    // An action that cannot be logged does not happen.
    let out =
        retrace_command().env("RETRACE_AUDIT_LOG", "/proc/version/audit.jsonl").args(["streams", r]).output().unwrap();
    assert!(!out.status.success() && out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit log") && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn export_is_sanitised_and_readable_only_by_its_recipient() {
    let dir = scratch("export");
    let file = dir.join("notes.txt");
    std::fs::write(&file, b"ticket CUST-123456 from ops@example.com\n").unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "allow = [\"ops@example.com\"]\n").unwrap();
    let (rec, _) = record(&dir, &["--rules", rules.to_str().unwrap()], &["head", "-c", "100", file.to_str().unwrap()]);
    let id = rec.by_path(&file).id;
    assert_eq!(
        rec.bytes(id, Direction::In),
        b"ticket CUST-123456 from ops@example.com\n",
        "allowlisted at record time"
    );
    let export_rules = dir.join("export.toml");
    std::fs::write(&export_rules, "[[rule]]\nname = \"customer\"\nregex = 'CUST-[0-9]{6}'\n").unwrap();
    let them = dir.join("them.txt");
    let recipient = keygen(&them);
    let share = dir.join("share");
    let out = retrace(&[
        "export",
        dir.join("rec").to_str().unwrap(),
        "--to",
        &recipient,
        "--expires",
        "1d",
        "--rules",
        export_rules.to_str().unwrap(),
        "-o",
        share.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let note = std::fs::read_to_string(share.join("EXPORT-NOTE.txt")).unwrap();
    assert!(note.contains("customer") && note.contains("email"), "{note}");
    let out = retrace(&["streams", share.to_str().unwrap()]);
    assert!(!out.status.success(), "the exporter's own identity cannot read the export");
    let opened =
        retrace_agent::store::Recording::open(&share, retrace_agent::keys::read_identity(&them).unwrap()).unwrap();
    let (rows, _) = retrace_agent::view::stream_table(&opened).unwrap();
    let row = rows.iter().find(|r| r.path == file.to_str().unwrap()).unwrap();
    let mut bytes = Vec::new();
    retrace_agent::view::cat(&opened, row.id, Direction::In, &mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(bytes.len(), 40);
    assert!(!text.contains("CUST-123456") && !text.contains("ops@example.com"), "strictest rules: {text}");
    let m = &opened.manifest;
    assert_eq!(m.exported_from.as_deref(), Some(rec.recording.manifest.id.as_str()));
    assert!(m.expires_ns < rec.recording.manifest.expires_ns);
    assert!(verify(&share, Some(&them)).0);
}

#[test]
fn expired_recordings_are_refused_and_collected() {
    let dir = scratch("gc");
    let store = dir.join("store");
    let short = store.join("short");
    let long = store.join("team/long");
    for (rec, expires) in [(&short, "1s"), (&long, "7d")] {
        let out = retrace(&["record", "-o", rec.to_str().unwrap(), "--expires", expires, "--", "true"]);
        assert!(out.status.success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = retrace(&["streams", short.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expired"));
    let out = retrace(&["gc", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!short.exists(), "expired recording deleted");
    assert!(long.join("manifest.json").exists(), "unexpired recording kept");
    let log = std::fs::read_to_string(audit_log()).unwrap();
    assert!(log.lines().any(|l| l.contains("gc_delete") && l.contains("short")));
}

#[test]
fn random_bytes_are_recorded_but_left_out_of_an_export() {
    let dir = scratch("export-random");
    let (rec, _) = record(&dir, &[], &[retrace_tests::python(), "-c", "import os, time; os.urandom(32); time.time()"]);
    let random = |records: &[retrace_agent::model::proto::Record]| -> usize {
        records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(retrace_agent::model::proto::record::Kind::Syscall(call)) if call.name == "getrandom" => {
                    Some(call.random.len())
                }
                _ => None,
            })
            .sum()
    };
    // The same field holds the times clock reads returned: not secret, kept.
    let times = |records: &[retrace_agent::model::proto::Record]| -> usize {
        records
            .iter()
            .filter(|r| {
                matches!(&r.kind, Some(retrace_agent::model::proto::record::Kind::Syscall(call))
                    if (call.name == "clock_gettime" || call.name == "gettimeofday") && call.random.len() == 16)
            })
            .count()
    };
    assert!(random(&rec.records) >= 32, "getrandom's bytes are in the recording");
    assert!(times(&rec.records) > 0, "python's clock reads are in the recording");
    // So are the AT_RANDOM bytes of each exec (the stack guard's and pointer guard's seed).
    let at_random = |records: &[retrace_agent::model::proto::Record]| -> usize {
        records
            .iter()
            .filter(|r| {
                matches!(&r.kind, Some(retrace_agent::model::proto::record::Kind::Process(p)) if !p.at_random.is_empty())
            })
            .count()
    };
    assert!(at_random(&rec.records) > 0, "the exec's AT_RANDOM bytes are in the recording");
    let them = dir.join("them.txt");
    let recipient = keygen(&them);
    let share = dir.join("share");
    let out =
        retrace(&["export", dir.join("rec").to_str().unwrap(), "--to", &recipient, "-o", share.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opened =
        retrace_agent::store::Recording::open(&share, retrace_agent::keys::read_identity(&them).unwrap()).unwrap();
    let mut records = Vec::new();
    opened.for_each(|r| records.push(r)).unwrap();
    assert_eq!(random(&records), 0, "the export leaves them out");
    assert_eq!(at_random(&records), 0, "and the AT_RANDOM bytes");
    assert_eq!(times(&records), times(&rec.records), "and keeps the clock's");
    let note = std::fs::read_to_string(share.join("EXPORT-NOTE.txt")).unwrap();
    assert!(note.contains("getrandom"), "{note}");
}
