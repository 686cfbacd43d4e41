//! Sockets: every socket syscall over unix, TCP (IPv4 and IPv6) and UDP, and a real HTTP
//! client, recorded with exact bytes and the right addresses.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use retrace_agent::model::proto::Direction;
use retrace_tests::{assert_bytes_eq, record, scratch};

/// What the C helper's `exchange` sends: the client's sends, then the server's answers.
fn helper_pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(((i * 7) % 23) as u8)).collect()
}

fn client_sends() -> Vec<u8> {
    [(1000, b'a'), (3000, b'b'), (5000, b'c'), (60000, b'd'), (900, b'e')]
        .iter()
        .flat_map(|&(n, s)| helper_pattern(n, s))
        .collect()
}

fn server_sends() -> Vec<u8> {
    [(700, b'f'), (1300, b'g')].iter().flat_map(|&(n, s)| helper_pattern(n, s)).collect()
}

#[test]
fn every_socket_syscall_over_unix_tcp_udp() {
    let dir = scratch("sockets");
    let sock = dir.join("helper.sock");
    let (rec, out) = record(&dir, &[], &[env!("HELPER_SOCKETS"), sock.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pairs: Vec<(String, i32, i32)> = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(pairs.len(), 5, "helper output: {stdout}");
    let (want_out, want_in) = (client_sends(), server_sends());

    for (name, client_fd, server_fd) in &pairs {
        let kind = match name.as_str() {
            "socketpair" | "unix" => "unix",
            "udp4" => "udp",
            _ => "tcp",
        };
        // The helper's pairs reuse fd numbers; streams are told apart by kind and addresses.
        let candidates: Vec<_> =
            rec.streams.iter().filter(|s| s.kind == kind && s.bytes_out + s.bytes_in > 0).collect();
        let client = candidates
            .iter()
            .find(|s| s.fd == *client_fd && s.bytes_out == want_out.len() as u64 && pair_matches(name, s))
            .unwrap_or_else(|| panic!("{name}: no client stream on fd {client_fd} among {candidates:#?}"));
        let server = candidates
            .iter()
            .find(|s| s.fd == *server_fd && s.bytes_in == want_out.len() as u64 && pair_matches(name, s))
            .unwrap_or_else(|| panic!("{name}: no server stream on fd {server_fd} among {candidates:#?}"));
        for s in [client, server] {
            assert_eq!((s.lost_bytes_in, s.lost_bytes_out), (0, 0), "{name}: loss on {s:?}");
        }
        assert_bytes_eq(&rec.bytes(client.id, Direction::Out), &want_out, &format!("{name} client sent"));
        assert_bytes_eq(&rec.bytes(client.id, Direction::In), &want_in, &format!("{name} client received"));
        assert_bytes_eq(&rec.bytes(server.id, Direction::In), &want_out, &format!("{name} server received"));
        assert_bytes_eq(&rec.bytes(server.id, Direction::Out), &want_in, &format!("{name} server sent"));
        match name.as_str() {
            "unix" => {
                assert_eq!(client.peer, sock.to_str().unwrap(), "unix client peer");
                assert_eq!(server.local, sock.to_str().unwrap(), "unix server local");
            }
            "tcp4" | "tcp6" | "udp4" => {
                assert!(!client.local.is_empty() && !client.peer.is_empty(), "{name}: addresses missing: {client:?}");
                assert_eq!(client.local, server.peer, "{name}: client local vs server peer");
                assert_eq!(client.peer, server.local, "{name}: client peer vs server local");
                let loopback = if name == "tcp6" { "[::1]:" } else { "127.0.0.1:" };
                assert!(client.peer.starts_with(loopback), "{name}: peer {}", client.peer);
            }
            _ => {}
        }
    }
    // Datagram boundaries: each UDP message is its own Data record with its message index.
    let udp_server = rec.streams.iter().find(|s| s.kind == "udp" && s.bytes_in > 0).unwrap();
    let sizes: Vec<usize> =
        rec.data(udp_server.id).iter().filter(|d| d.direction() == Direction::In).map(|d| d.payload.len()).collect();
    assert!(sizes.starts_with(&[1000, 3000, 5000]), "udp datagram sizes {sizes:?}");
    let mmsg: Vec<_> = rec.data(udp_server.id).into_iter().filter(|d| d.syscall == "recvmmsg").collect();
    assert_eq!(mmsg.iter().map(|d| d.payload.len()).sum::<usize>(), 900, "recvmmsg bytes");
    assert!(
        mmsg.iter().all(|d| d.payload.len() == 300),
        "recvmmsg datagrams {:?}",
        mmsg.iter().map(|d| d.payload.len()).collect::<Vec<_>>()
    );
}

fn pair_matches(name: &str, s: &retrace_agent::view::StreamRow) -> bool {
    match name {
        "socketpair" => s.peer == "socketpair",
        "unix" => s.peer != "socketpair",
        "tcp6" => s.local.starts_with('['),
        "tcp4" | "udp4" => s.local.starts_with("127."),
        _ => true,
    }
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
req = b""
while b"\r\n\r\n" not in req:
    d = c.recv(65536)
    if not d:
        break
    req += d
open(sys.argv[1], "wb").write(req)
body = bytes((i * 31 + 7) % 256 for i in range(300000))
resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
c.sendall(resp)
open(sys.argv[2], "wb").write(resp)
c.close()
"#;

#[test]
fn curl_request_and_response_are_exact() {
    let dir = scratch("curl");
    let (req_file, resp_file) = (dir.join("request.bin"), dir.join("response.bin"));
    let mut server = Command::new("python3")
        .args(["-c", SERVER, req_file.to_str().unwrap(), resp_file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let port = port.trim().to_owned();
    let url = format!("http://127.0.0.1:{port}/some/path?q=1");
    let body = dir.join("body");
    let (rec, _) = record(&dir, &[], &["curl", "-sS", "-o", body.to_str().unwrap(), &url]);
    assert!(server.wait().unwrap().success());

    let request = std::fs::read(&req_file).unwrap();
    let response = std::fs::read(&resp_file).unwrap();
    let peer = format!("127.0.0.1:{port}");
    let conn: &_ = rec.find(&format!("tcp to {peer}"), |s| s.kind == "tcp" && s.peer == peer);
    assert!(conn.local.starts_with("127.0.0.1:") && !conn.local.ends_with(":0"), "local address {:?}", conn.local);
    assert_bytes_eq(&rec.bytes(conn.id, Direction::Out), &request, "request curl sent");
    assert_bytes_eq(&rec.bytes(conn.id, Direction::In), &response, "response curl received");
    assert_eq!((conn.lost_bytes_in, conn.lost_bytes_out), (0, 0));
    // curl wrote the body to the file; the recorded writes are that file's bytes.
    let body_stream = rec.by_path(&body);
    assert_bytes_eq(&rec.bytes(body_stream.id, Direction::Out), &std::fs::read(&body).unwrap(), "body file");
}

const UDP_PEERS: &str = r#"
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
a = socket.socket(fam, socket.SOCK_DGRAM); a.bind((host, 0))
b = socket.socket(fam, socket.SOCK_DGRAM); b.bind((host, 0))
c = socket.socket(fam, socket.SOCK_DGRAM); c.bind((host, 0))
# sendto, and sendmsg of one and two buffers with an address; the same for receiving.
for i in range(3):
    if i == 0:
        c.sendto(b"to-a-%d" % i, a.getsockname())
        c.sendto(b"to-b-%d" % i, b.getsockname())
    else:
        c.sendmsg([b"to-a-%d" % i], [], 0, a.getsockname())
        c.sendmsg([b"to-b-", b"%d" % i], [], 0, b.getsockname())
for s, name in ((a, b"a"), (b, b"b")):
    for i in range(3):
        if i == 0:
            data, peer = s.recvfrom(100)
        elif i == 1:
            data, _, _, peer = s.recvmsg(100)
        else:
            head, rest = bytearray(3), bytearray(97)
            n, _, _, peer = s.recvmsg_into([head, rest])
            data = bytes(head + rest)[:n]
        s.sendto(b"reply-from-" + name + data[-2:], peer)
for i in range(6):
    if i % 2:
        c.recvmsg(100)
    else:
        c.recvmsg_into([bytearray(6), bytearray(94)])
print(c.getsockname()[1], a.getsockname()[1], b.getsockname()[1])
"#;

#[test]
fn unconnected_udp_datagrams_carry_their_peer() {
    for family in ["4", "6"] {
        let dir = scratch(&format!("udp-peers-{family}"));
        let (rec, out) = record(&dir, &[], &["python3", "-c", UDP_PEERS, family]);
        let ports: Vec<u16> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|p| p.parse().unwrap()).collect();
        let fmt = |port: u16| if family == "6" { format!("[::1]:{port}") } else { format!("127.0.0.1:{port}") };
        let (c, a, b) = (fmt(ports[0]), fmt(ports[1]), fmt(ports[2]));
        let sender = rec.find("the sending socket", |s| s.kind == "udp" && s.local == c);
        let data = rec.data(sender.id);
        let sent: Vec<(String, Vec<u8>)> = data
            .iter()
            .filter(|d| d.direction() == Direction::Out)
            .map(|d| (d.addr.clone(), d.payload.to_vec()))
            .collect();
        let want_sent: Vec<(String, Vec<u8>)> = (0..3)
            .flat_map(|i| {
                [(a.clone(), format!("to-a-{i}").into_bytes()), (b.clone(), format!("to-b-{i}").into_bytes())]
            })
            .collect();
        assert_eq!(sent, want_sent, "IPv{family}: each datagram sent, with its destination");
        let received: Vec<(String, Vec<u8>)> = data
            .iter()
            .filter(|d| d.direction() == Direction::In)
            .map(|d| (d.addr.clone(), d.payload.to_vec()))
            .collect();
        assert_eq!(received.len(), 6, "IPv{family}: six replies: {received:?}");
        for (from, payload) in &received {
            let expect = if from == &a {
                "reply-from-a"
            } else {
                assert_eq!(from, &b);
                "reply-from-b"
            };
            assert!(payload.starts_with(expect.as_bytes()), "IPv{family}: {payload:?} from {from}");
        }
        // The receivers' streams know their own address and see the sender as the datagram source.
        let ra = rec.find("receiver a", |s| s.kind == "udp" && s.local == a);
        let got: Vec<_> = rec.data(ra.id).into_iter().filter(|d| d.direction() == Direction::In).collect();
        assert!(got.iter().all(|d| d.addr == c), "IPv{family}: {got:?}");
        let got: Vec<Vec<u8>> = got.iter().map(|d| d.payload.to_vec()).collect();
        assert_eq!(got, (0..3).map(|i| format!("to-a-{i}").into_bytes()).collect::<Vec<_>>(), "IPv{family}");
        // Each sendmsg/recvmsg of up to two buffers is one record, whole.
        let names: Vec<String> = data.iter().map(|d| String::from_utf8_lossy(&d.syscall).into_owned()).collect();
        assert_eq!(names.iter().filter(|n| *n == "sendmsg").count(), 4, "IPv{family}: {names:?}");
        assert_eq!(names.iter().filter(|n| *n == "recvmsg").count(), 6, "IPv{family}: {names:?}");
    }
}

/// A TCP pair in one process: the server sends, the client peeks at the head (recv and recvmsg
/// with MSG_PEEK, as wget does with every response), then takes it all.
const PEEKS: &str = r#"
import socket
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
conn, _ = server.accept()
body = bytes(range(256)) * 40
conn.sendall(body)
got = b""
while len(got) < len(body):
    client.recv(64, socket.MSG_PEEK)
    client.recvmsg(32, 0, socket.MSG_PEEK)
    got += client.recv(4096)
assert got == body
print(client.getsockname()[1])
"#;

#[test]
fn a_peek_records_no_bytes_and_the_receive_that_takes_them_does() {
    let dir = scratch("socket-peek");
    let (rec, out) = record(&dir, &[], &["python3", "-c", PEEKS]);
    let port = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let client = rec.find("the client's socket", |s| s.kind == "tcp" && s.local == format!("127.0.0.1:{port}"));
    let body: Vec<u8> = (0..40).flat_map(|_| 0..=255u8).collect();
    assert_bytes_eq(&rec.bytes(client.id, Direction::In), &body, "what the client received, once");
    assert!(rec.gaps(client.id).is_empty(), "{:?}", rec.gaps(client.id));
}
