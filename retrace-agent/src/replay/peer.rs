//! Plays the recorded peer of one connection: reads what the program sends and compares it
//! with what was recorded (as a byte stream: how the program chunks its writes does not
//! matter; redacted spans match anything), and sends back what was received, in order.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    h2, http,
    matching::{Choice, Pool},
    order::Order,
    report,
    report::{Difference, Exchange, Unmatched},
    script::{self, Connection, OrderEvent, Step},
    tls, Shared,
};

/// How long the program may take to send what the recording says comes next.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last recorded step: how long to wait for the program to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the peer polls for the program's next bytes before it sleeps in `read`. A
/// request/response client spends most of a round trip waking up the other side: a peer that
/// is still awake answers at once, so the program waits for one wake-up per round trip, not
/// two (a 5000-command redis-cli session replays in about half the time). Bounded, so a
/// program that computes between requests costs this much CPU per request at most.
const SPIN: Duration = Duration::from_micros(200);

/// Which end of the connection the replayer plays.
#[derive(Clone, Copy, PartialEq)]
pub enum Role {
    /// The recorded server of a connection the program made.
    Server,
    /// The recorded client of a connection the program accepted.
    Client,
}

/// How long the program may pause between its first bytes before the replayer chooses the
/// recorded connection with what it has.
const CHOOSE_PAUSE: Duration = Duration::from_millis(50);

/// A connection the program made to `peer`: the recorded one it is (by what the program sends
/// first) is played; if none fits, the program gets a reset and the report an `unmatched`
/// entry, never another connection's bytes.
pub fn play_matched(pool: Arc<Pool>, peer: std::net::SocketAddr, mut sock: TcpStream, shared: Arc<Shared>) {
    // A program that begins with a TLS handshake where TLS connections with their plaintext
    // were recorded: the replayer is its TLS server, and it is matched and played on plaintext.
    let mut tls_first = false;
    if let Some((names, alpn)) = pool.tls_first(&peer) {
        if tls::client_hello_first(&sock, STEP_TIMEOUT) {
            match terminate_tls(&shared, sock, &peer, names, &alpn) {
                Some(plain) => {
                    sock = plain;
                    tls_first = true;
                }
                None => return,
            }
        }
    }
    let mut got = Vec::new();
    if pool.has_h2(&peer) {
        // An HTTP/2 client is served request by request: its preface says so.
        let _ = sock.set_read_timeout(Some(STEP_TIMEOUT));
        let mut buf = [0u8; 64];
        while got.len() < h2::PREFACE.len() && h2::PREFACE.starts_with(&got) {
            match sock.read(&mut buf[..h2::PREFACE.len() - got.len()]) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        if got.starts_with(h2::PREFACE) {
            return h2::serve(sock, got, pool, peer, shared);
        }
    }
    // The recorded request last played on this connection (stream and place), if any.
    let mut last: Option<(u64, usize)> = None;
    loop {
        let chosen = choose(&pool, &peer, &mut sock, &mut got, tls_first);
        let connection = match chosen {
            Ok(connection) => connection,
            Err(None) if got.is_empty() => return,
            Err(closest) => return refuse(&pool, &peer, &sock, &got, closest, &shared),
        };
        // A STARTTLS-style upgrade: what went in the clear first, then TLS.
        if let Some(session) = connection.tls.as_ref().filter(|t| !t.prefix.is_empty() && !tls_first) {
            if let Err(difference) = play_prefix(&mut sock, &session.prefix, std::mem::take(&mut got)) {
                shared.exchange(Exchange {
                    stream_id: connection.stream_id,
                    peer: connection.peer_name(),
                    status: "diverged".into(),
                    difference: Some(*difference),
                    ..Default::default()
                });
                return;
            }
            let names = vec![session.sni.clone()].into_iter().filter(|n| !n.is_empty()).collect();
            let alpn: Vec<String> = vec![session.alpn.clone()].into_iter().filter(|a| !a.is_empty()).collect();
            match terminate_tls(&shared, sock, &peer, names, &alpn) {
                Some(plain) => sock = plain,
                None => return,
            }
        }
        if let Some(piece) = connection.piece {
            let in_place = match last {
                None => piece.index == 0,
                Some((stream_id, index)) => stream_id == connection.stream_id && index + 1 == piece.index,
            };
            if !in_place {
                shared.request_moved();
            }
            last = Some((connection.stream_id, piece.index));
        }
        match play(connection, sock, Role::Server, std::mem::take(&mut got), shared.clone(), None) {
            // The program sent another request on this connection.
            Some((same, sent)) => (sock, got) = (same, sent),
            None => return,
        }
    }
}

/// Reads what the program sends on a new connection (or after a request played on its own)
/// until it tells the recorded connection or request it is; `Err(closest)` when none fits or
/// it sent nothing.
fn choose(
    pool: &Pool,
    peer: &std::net::SocketAddr,
    sock: &mut TcpStream,
    got: &mut Vec<u8>,
    tls_first: bool,
) -> Result<Connection, Option<crate::replay::matching::Closest>> {
    let mut done = false;
    loop {
        match pool.choose(peer, got, done, tls_first) {
            Choice::Take(c) => return Ok(c),
            Choice::None(closest) => return Err(closest),
            Choice::Nothing => return Err(None),
            Choice::NeedMore => {}
        }
        // The first bytes may take the program a while; the rest of a request follows at once.
        let wait = if got.is_empty() { STEP_TIMEOUT } else { CHOOSE_PAUSE };
        let _ = sock.set_read_timeout(Some(wait));
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            _ if done => return Err(None),
            _ => done = true,
        }
    }
}

/// A connection of the program that fits no recorded one: reset (SO_LINGER 0, as a refused
/// request would be), and reported with the closest recorded request.
fn refuse(
    pool: &Pool,
    peer: &std::net::SocketAddr,
    sock: &TcpStream,
    got: &[u8],
    closest: Option<crate::replay::matching::Closest>,
    shared: &Shared,
) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a linger struct of its size on our socket.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    let (closest_stream_id, difference) = match closest {
        Some(c) => (
            Some(c.stream_id),
            Some(Difference {
                offset: c.offset as u64,
                what: "different bytes".into(),
                expected: context(&c.expected),
                actual: context(got.get(c.offset..).unwrap_or_default()),
                learn: None,
            }),
        ),
        None => (None, None),
    };
    shared.unmatched(Unmatched { address: pool.name_of(peer), sent: context(got), closest_stream_id, difference });
}

/// Terminates the program's TLS with a certificate for `names` from the replay's CA; a refusal
/// goes to the report (its own entry: a program that pins keys cannot be given a stand-in).
fn terminate_tls(
    shared: &Shared,
    sock: TcpStream,
    peer: &std::net::SocketAddr,
    names: Vec<String>,
    alpn: &[String],
) -> Option<TcpStream> {
    let refused = |untrusted: bool, detail: String| report::TlsRefusal {
        address: peer.to_string(),
        names: names.clone(),
        untrusted,
        detail,
    };
    let Some(authority) = &shared.tls else {
        shared.tls_refused(refused(false, "no replay CA".into()));
        return None;
    };
    let acceptor = match authority.acceptor(&names, peer.ip(), alpn) {
        Ok(a) => a,
        Err(e) => {
            shared.tls_refused(refused(false, format!("cannot make the server certificate: {e}")));
            return None;
        }
    };
    match tls::terminate(&acceptor, sock) {
        Ok(plain) => {
            shared.tls_terminated();
            Some(plain)
        }
        Err(r) => {
            shared.tls_refused(refused(r.untrusted, r.detail));
            None
        }
    }
}

/// Plays the cleartext steps before a STARTTLS-style upgrade; `got` is what the program sent
/// already.
fn play_prefix(sock: &mut TcpStream, steps: &[Step], mut got: Vec<u8>) -> Result<(), Box<Difference>> {
    let _ = sock.set_read_timeout(Some(STEP_TIMEOUT));
    for step in steps {
        match step {
            Step::Send { bytes, wildcards } => {
                let mut buf = [0u8; 4096];
                while got.len() < bytes.len() {
                    match sock.read(&mut buf) {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let n = got.len().min(bytes.len());
                if let Some(at) = script::first_difference(bytes, &got[..n], wildcards, 0) {
                    return Err(Box::new(Difference {
                        offset: at as u64,
                        what: "different bytes before the TLS handshake".into(),
                        expected: context(&bytes[at..]),
                        actual: context(&got[at..n]),
                        learn: None,
                    }));
                }
                if n < bytes.len() {
                    return Err(Box::new(Difference {
                        offset: n as u64,
                        what: "the program sent less before the TLS handshake".into(),
                        expected: context(&bytes[n..]),
                        ..Default::default()
                    }));
                }
                got.drain(..n);
            }
            Step::Receive { bytes, .. } => {
                if sock.write_all(bytes).is_err() {
                    return Err(Box::new(Difference {
                        what: "the program closed the connection early".into(),
                        ..Default::default()
                    }));
                }
            }
        }
    }
    Ok(())
}

/// A connection's place in the recorded order of a server's connections: the order, and the
/// connection's index in it.
type Place = (Arc<Order>, usize);

/// Plays `connection` on `sock`; `prefetched` is what the program already sent on it. A
/// request played on its own (`Connection::piece`) that the program follows with more bytes
/// hands back the socket and those bytes: the next request may be another recorded one.
pub fn play(
    connection: Connection,
    sock: TcpStream,
    role: Role,
    prefetched: Vec<u8>,
    shared: Arc<Shared>,
    place: Option<Place>,
) -> Option<(TcpStream, Vec<u8>)> {
    let mut sock = Program { sock, pending: prefetched, at: 0, place: place.clone(), from_socket: 0 };
    let mut exchange = Exchange {
        stream_id: connection.stream_id,
        peer: connection.peer_name(),
        status: "matched".into(),
        ..Default::default()
    };
    let _ = sock.sock.set_nodelay(true);
    let _ = sock.sock.set_read_timeout(Some(STEP_TIMEOUT));
    // Position in what the program sent (on the recorded connection, for a request on its own).
    let mut sent_offset = connection.piece.map_or(0, |p| p.offset);
    let mut recorded_sent = 0u64; // the same in the recording
    for step in &connection.steps {
        if let (Step::Send { bytes, .. }, Some((order, i))) = (step, &place) {
            // Compared whole: the program wrote what this step stands for in the order.
            if recorded_sent > 0 {
                order.read(*i, recorded_sent);
            }
            recorded_sent += bytes.len() as u64;
        }
        match step {
            Step::Receive { bytes, ts_ns, gate } => {
                if let Some((order, i)) = &place {
                    order.read(*i, recorded_sent);
                    order.wait(*gate);
                    order.settle(*i);
                }
                // Sooner than recorded: once the program idles, as it did when this came.
                let idle =
                    shared.clock.ahead_of_program(*ts_ns, IDLE_GAP) && wait_until_idle(shared.sandbox_init, IDLE_WAIT);
                shared.clock.deliver(*ts_ns, idle);
                if sock.sock.write_all(bytes).is_err() {
                    diverge(&mut exchange, sent_offset, b"", b"", "the program closed the connection early");
                    break;
                }
                if let Some((order, i)) = &place {
                    order.sent(*i, bytes.len() as u64);
                }
                exchange.bytes_to_program += bytes.len() as u64;
            }
            // HTTP/1.x: message by message, noisy header values allowed to differ.
            Step::Send { bytes, wildcards } if http::is_http(bytes) => {
                let outcome = http::compare(bytes, wildcards, &mut sock, &shared.noise);
                exchange.bytes_from_program += outcome.consumed as u64;
                exchange.ignored.extend(outcome.ignored);
                if let Some((at, what, expected, actual)) = outcome.difference {
                    diverge(&mut exchange, sent_offset + at, &expected, &actual, what);
                    if let Some(d) = &mut exchange.difference {
                        d.learn = outcome.learn;
                    }
                    break;
                }
                sent_offset += outcome.consumed;
            }
            Step::Send { bytes, wildcards } => {
                let mut got = vec![0u8; bytes.len()];
                let mut filled = 0;
                while filled < got.len() {
                    match sock.read(&mut got[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                exchange.bytes_from_program += filled as u64;
                if let Some(at) = script::first_difference(bytes, &got[..filled], wildcards, 0) {
                    diverge(&mut exchange, sent_offset + at, &bytes[at..], &got[at..filled], "different bytes");
                } else if filled < bytes.len() && exchange.difference.is_none() {
                    diverge(&mut exchange, sent_offset + filled, &bytes[filled..], b"", "the program sent less");
                }
                sent_offset += filled;
                if filled < bytes.len() {
                    break;
                }
            }
        }
    }
    // A request on its own: another may follow on this connection, which a keep-alive server
    // would wait for (as long as for the next request when one followed when recorded).
    if let (Some(piece), None) = (connection.piece, &exchange.difference) {
        let mut next = sock.pending.split_off(sock.at);
        if next.is_empty() {
            let wait = if piece.last { CLOSE_TIMEOUT } else { STEP_TIMEOUT };
            let _ = sock.sock.set_read_timeout(Some(wait));
            let mut buf = [0u8; 4096];
            if let Ok(n) = sock.read(&mut buf) {
                next.extend_from_slice(&buf[..n]);
            }
        }
        if !next.is_empty() {
            shared.exchange(exchange);
            return Some((sock.sock, next));
        }
    }
    // A client whose exchange is over says so, as clients do: the program then closes at once
    // (a keep-alive server would otherwise wait for another request until CLOSE_TIMEOUT).
    if role == Role::Client {
        let _ = sock.sock.shutdown(std::net::Shutdown::Write);
    }
    // Anything more than the recording holds is a divergence too.
    let _ = sock.sock.set_read_timeout(Some(CLOSE_TIMEOUT));
    let mut extra = [0u8; 4096];
    if let Ok(n) = sock.read(&mut extra) {
        if n > 0 && exchange.difference.is_none() {
            diverge(&mut exchange, sent_offset, b"", &extra[..n], "the program sent more than was recorded");
        }
        exchange.bytes_from_program += n as u64;
    }
    let _ = sock.sock.shutdown(std::net::Shutdown::Both);
    if let Some((order, i)) = &place {
        order.ended(*i);
    }
    shared.exchange(exchange);
    None
}

/// The program's end of a connection, with the bytes it sent that were read already.
struct Program {
    sock: TcpStream,
    pending: Vec<u8>,
    at: usize,
    place: Option<Place>,
    /// Bytes read from the socket so far.
    from_socket: u64,
}

impl http::Source for Program {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Program::read(self, buf)
    }

    fn unread(&mut self, bytes: &[u8]) {
        let mut pending = bytes.to_vec();
        pending.extend_from_slice(&self.pending[self.at..]);
        self.pending = pending;
        self.at = 0;
    }
}

impl Program {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.pending.len() {
            let n = buf.len().min(self.pending.len() - self.at);
            buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        // Server replay reads many connections at once: a thread polling for each would take
        // the cores the program needs.
        let n = if self.place.is_some() { self.sock.read(buf)? } else { read_soon(&mut self.sock, buf)? };
        self.from_socket += n as u64;
        if let (Some((order, i)), true) = (&self.place, n > 0) {
            order.read(*i, self.from_socket);
        }
        Ok(n)
    }
}

/// `read`, polling without sleeping for up to `SPIN` first.
fn read_soon(sock: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let start = Instant::now();
    loop {
        // SAFETY: recv into a buffer we own, of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
        if start.elapsed() >= SPIN {
            return sock.read(buf);
        }
        std::hint::spin_loop();
    }
}

fn diverge(exchange: &mut Exchange, offset: usize, expected: &[u8], actual: &[u8], what: &str) {
    exchange.status = "diverged".into();
    if exchange.difference.is_none() {
        exchange.difference = Some(Difference {
            offset: offset as u64,
            what: what.into(),
            expected: context(expected),
            actual: context(actual),
            learn: None,
        });
    }
}

/// A short printable excerpt: text as text, the rest escaped.
pub(super) fn context(bytes: &[u8]) -> String {
    bytes.iter().take(32).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect()
}

/// Server replay: opens each recorded inbound connection to the address it reached (retrying
/// while the program gets ready) once the program has done what it had done before accepting
/// it, and plays the connections concurrently in the recorded order (see `order`); then stops
/// the program (TERM, then KILL).
pub fn play_clients(inbound: Vec<Connection>, order: Vec<OrderEvent>, child: libc::pid_t, shared: Arc<Shared>) {
    // The clock follows the recording: it does not pass the time of the next recorded event,
    // nor, after the last, the time the recorder stopped the program.
    let clock_shared = shared.clone();
    let on_next = Box::new(move |ts: Option<u64>| {
        clock_shared.clock.limit(ts.or(clock_shared.stopped_ns));
    });
    let order = Arc::new(Order::new(order, inbound.len(), on_next));
    let mut playing = Vec::new();
    for (i, connection) in inbound.into_iter().enumerate() {
        order.wait(connection.opens_at);
        let deadline = std::time::Instant::now() + STEP_TIMEOUT;
        let sock = loop {
            match TcpStream::connect(connection.peer) {
                Ok(s) => break Some(s),
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break None,
            }
        };
        // A TLS server: the replayer is its client and plays the recorded plaintext.
        let sock = match (sock, &connection.tls) {
            (Some(sock), Some(session)) => {
                let addresses = (sock.peer_addr(), sock.local_addr());
                match tls::connect(sock, &session.sni, &session.alpn) {
                    Ok(plain) => {
                        shared.tls_terminated();
                        if let (Ok(program), Ok(ours)) = addresses {
                            order.opened(i, program, ours);
                        }
                        Some((plain, true))
                    }
                    Err(detail) => {
                        shared.tls_refused(report::TlsRefusal {
                            address: connection.peer.to_string(),
                            names: vec![session.sni.clone()],
                            untrusted: false,
                            detail,
                        });
                        None
                    }
                }
            }
            (sock, _) => sock.map(|s| (s, false)),
        };
        match sock {
            Some((sock, opened)) => {
                // As the kernel has them (a recorded 0.0.0.0 is reached at 127.0.0.1).
                if !opened {
                    if let (Ok(program), Ok(ours)) = (sock.peer_addr(), sock.local_addr()) {
                        order.opened(i, program, ours);
                    }
                }
                let (shared, place) = (shared.clone(), Some((order.clone(), i)));
                playing
                    .push(std::thread::spawn(move || play(connection, sock, Role::Client, Vec::new(), shared, place)));
            }
            None => {
                order.ended(i);
                shared.exchange(Exchange {
                    stream_id: connection.stream_id,
                    peer: connection.peer_name(),
                    status: "diverged".into(),
                    difference: Some(Difference {
                        what: "the program did not accept the connection".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
        }
    }
    for p in playing {
        let _ = p.join();
    }
    stop_program(child, &shared);
}

/// Stops the program as the recorder had stopped it, its clock reading the time the recorder
/// did: TERM, then KILL after 2 s.
pub fn stop_program(child: libc::pid_t, shared: &Shared) {
    if !alive(child) {
        return;
    }
    shared.stopped_by_replayer.store(true, std::sync::atomic::Ordering::Relaxed);
    shared.clock.limit(None);
    if let Some(ns) = shared.stopped_ns {
        shared.clock.anchor(ns);
    }
    // TERM goes to the program (forwarded through the sandbox's init); KILL of our handle takes
    // the whole pid namespace down.
    // SAFETY: signals to the sandbox handle we started (still our unreaped child).
    unsafe { libc::kill(child, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline && alive(child) {
        std::thread::sleep(Duration::from_millis(2));
    }
    if alive(child) {
        // SAFETY: as above.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
}

/// Whether our child still runs (not yet exited; a zombie counts as gone).
/// A recorded event that comes this much sooner in replay than the program's clock stands
/// (the program waited for it when recorded) waits until the program idles...
const IDLE_GAP: Duration = Duration::from_millis(10);
/// ...at most this long.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Waits (at most `max`) until every thread of every process in the sandbox sleeps: the
/// program has done what it was doing and waits for input. Whether it does.
fn wait_until_idle(init: libc::pid_t, max: Duration) -> bool {
    let deadline = std::time::Instant::now() + max;
    loop {
        if all_asleep(init) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// System calls a thread waits for input or time in. A thread blocked in another (a call the
/// replayer is answering: a clock read, a connect) is busy.
const WAITING_CALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_futex,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_pause,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// Whether every thread below `init` (the sandbox's init) waits in one of `WAITING_CALLS`.
fn all_asleep(init: libc::pid_t) -> bool {
    let mut processes = vec![init as u32];
    while let Some(pid) = processes.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            // `NR args... sp pc` while blocked in a call; `running`, or -1 outside one.
            let Ok(call) = std::fs::read_to_string(task.path().join("syscall")) else { continue };
            let nr = call.split_whitespace().next().and_then(|n| n.parse::<i64>().ok());
            if !nr.is_some_and(|nr| WAITING_CALLS.contains(&nr)) {
                return false;
            }
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                processes.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    true
}

fn alive(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
