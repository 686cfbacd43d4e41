//! Which recorded connection a new connection of the program is: the one whose first request
//! matches what the program sends first, not the next in connect order (threads connect in
//! any order). A connection that matches none is never fed another's bytes.
//!
//! HTTP/1.x connections are split into their requests (each with its response): a client
//! that pools connections (Go's `net/http`, `curl --parallel`, node's agent) sends a request
//! on whichever connection is free, and which one that is, and how many connections it
//! opens, change from run to run. Each request the program sends, on any connection, gets
//! the response to the same request when recorded; identical requests get their responses
//! in the recorded order.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use super::{
    h2, http,
    script::{first_difference, Connection, Piece, Step},
};

/// The recorded outbound connections not yet claimed, by peer, in the order they were made.
#[derive(Default)]
pub struct Pool {
    by_peer: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    /// Unix socket paths, by the stand-in address their connections go by.
    unix_paths: HashMap<SocketAddr, String>,
    /// The server names and protocols of the connections to each address that began with a
    /// TLS handshake.
    tls_first: HashMap<SocketAddr, (Vec<String>, Vec<String>)>,
    /// The requests of the HTTP/2 connections not yet answered, by address, in the order they
    /// were.
    h2: Mutex<HashMap<SocketAddr, Vec<h2::Exchange>>>,
}

/// A recorded HTTP/2 request taken for one of the program's, with the differences ignored as
/// noise; or the closest one's connection and how it differs (what, expected, actual).
pub type TakenH2 = Result<(h2::Exchange, Vec<http::Ignored>), Option<(u64, (String, String, String))>>;

/// What is known once some of the program's first bytes are in.
pub enum Choice {
    Take(Connection),
    /// Several recorded connections still fit: more bytes tell them apart.
    NeedMore,
    /// None fits; the closest (the longest first request in common): its stream id, and
    /// where and how it differs.
    None(Option<Closest>),
    /// The program closed the connection without sending anything: nothing is claimed.
    Nothing,
}

/// The recorded connection closest to what an unmatched connection sent.
pub struct Closest {
    pub stream_id: u64,
    /// First differing byte.
    pub offset: usize,
    /// The recorded request from there.
    pub expected: Vec<u8>,
}

impl Pool {
    pub fn new(connections: Vec<Connection>) -> Pool {
        let mut tls_first: HashMap<SocketAddr, (Vec<String>, Vec<String>)> = HashMap::new();
        for c in &connections {
            let Some(t) = c.tls.as_ref().filter(|t| t.prefix.is_empty()) else { continue };
            let (names, alpn) = tls_first.entry(c.peer).or_default();
            for (list, value) in [(names, &t.sni), (alpn, &t.alpn)] {
                if !value.is_empty() && !list.contains(value) {
                    list.push(value.clone());
                }
            }
        }
        let mut by_peer: HashMap<SocketAddr, Vec<Connection>> = HashMap::new();
        let mut h2_by_peer: HashMap<SocketAddr, Vec<h2::Exchange>> = HashMap::new();
        let mut unix_paths = HashMap::new();
        for c in connections {
            if let Some(path) = &c.unix_path {
                unix_paths.insert(c.peer, path.clone());
            }
            let all = by_peer.entry(c.peer).or_default();
            match h2::exchanges(&c) {
                Some(exchanges) => h2_by_peer.entry(c.peer).or_default().extend(exchanges),
                None => all.extend(requests_of(c)),
            }
        }
        // Where requests were split out, they are candidates in the order they were answered
        // (connections stay in connect order among themselves when nothing was split). A
        // connection that carried nothing there was a pooling client's spare, which it may or
        // may not dial again: not asked for.
        for (peer, all) in by_peer.iter_mut() {
            if all.iter().any(|c| c.piece.is_some()) || h2_by_peer.contains_key(peer) {
                all.retain(|c| !c.steps.is_empty());
                all.sort_by_key(first_answer);
            }
        }
        for exchanges in h2_by_peer.values_mut() {
            exchanges.sort_by_key(|e| e.answered_ns);
        }
        Pool { by_peer: Mutex::new(by_peer), unix_paths, tls_first, h2: Mutex::new(h2_by_peer) }
    }

    /// Whether HTTP/2 connections to `peer` were recorded: the program's are served request by
    /// request (`h2::serve`).
    pub fn has_h2(&self, peer: &SocketAddr) -> bool {
        self.h2.lock().expect("pool").contains_key(peer)
    }

    /// The recorded HTTP/2 request to `peer` that `asked` is: the earliest with its method
    /// and path that compares equal (noise allowed: the differences ignored come with it).
    /// Else none is taken, and the earliest with its method and path, if any, is named with
    /// how it differs (all of a gRPC service's calls share one path: a call that differs is
    /// none of them, and must not take a later call's answer).
    pub fn take_h2(&self, peer: &SocketAddr, asked: &h2::Message, noise: &http::Noise) -> TakenH2 {
        let mut pool = self.h2.lock().expect("pool");
        let Some(all) = pool.get_mut(peer) else { return Err(None) };
        let mut closest = None;
        for i in 0..all.len() {
            if all[i].request.summary() != asked.summary() {
                continue;
            }
            match h2::compare(&all[i].request, asked, noise) {
                Ok(ignored) => return Ok((all.remove(i), ignored)),
                Err(difference) if closest.is_none() => closest = Some((all[i].stream_id, difference)),
                Err(_) => {}
            }
        }
        Err(closest)
    }

    /// The recorded HTTP/2 requests never asked for: their connection, its address and what
    /// they were.
    pub fn h2_left(&self) -> Vec<(u64, String, String)> {
        let mut pool = self.h2.lock().expect("pool");
        let left = pool.drain().flat_map(|(peer, e)| e.into_iter().map(move |e| (peer, e)));
        left.map(|(peer, e)| (e.stream_id, self.name_of(&peer), e.request.summary())).collect()
    }

    /// How the report names `peer`: a unix socket by its path.
    pub fn name_of(&self, peer: &SocketAddr) -> String {
        self.unix_paths.get(peer).cloned().unwrap_or_else(|| peer.to_string())
    }

    /// The stand-in address of the recorded unix socket server at `path`, if the recording
    /// connected to one there.
    pub fn unix_peer(&self, path: &str) -> Option<SocketAddr> {
        self.unix_paths.iter().find_map(|(peer, p)| (p == path).then_some(*peer))
    }

    /// Whether a recorded connection to `peer` (or an HTTP/2 request) is still unclaimed.
    pub fn has(&self, peer: &SocketAddr) -> bool {
        self.by_peer.lock().expect("pool").get(peer).is_some_and(|c| !c.is_empty())
            || self.h2.lock().expect("pool").get(peer).is_some_and(|e| !e.is_empty())
    }

    /// Whether the program connected to `peer` when recorded: a connection there is played
    /// (and what it sends is unmatched once every recorded one is claimed), not blocked.
    pub fn knows(&self, peer: &SocketAddr) -> bool {
        self.by_peer.lock().expect("pool").contains_key(peer)
    }

    /// The server names and protocols of the recorded connections to `peer` that began with a
    /// TLS handshake, if any (claimed or not: a pooling client's spare connection shakes hands
    /// too).
    pub fn tls_first(&self, peer: &SocketAddr) -> Option<(Vec<String>, Vec<String>)> {
        self.tls_first.get(peer).cloned()
    }

    /// Chooses among the unclaimed connections to `peer` by the program's first bytes `got`.
    /// `done`: the program sends nothing more for now, so choose with what is there (a
    /// connection whose whole first request was seen first, else the earliest that fits).
    /// `tls_first`: the program began with a TLS handshake (which the replayer terminated), so
    /// only connections recorded that way are candidates, and `got` is plaintext.
    pub fn choose(&self, peer: &SocketAddr, got: &[u8], done: bool, tls_first: bool) -> Choice {
        // With none left, what the program sends is unmatched; a connection it leaves unused
        // (a pooling client's spare) is nothing.
        let none_left = || match (got.is_empty(), done) {
            (false, _) => Choice::None(None),
            (true, true) => Choice::Nothing,
            (true, false) => Choice::NeedMore,
        };
        let mut pool = self.by_peer.lock().expect("pool");
        let Some(all) = pool.get_mut(peer) else { return none_left() };
        let began_with_tls = |c: &Connection| c.tls.as_ref().is_some_and(|t| t.prefix.is_empty());
        // The candidates, in the order the connections were made: indices into `all`.
        let candidates: Vec<usize> = (0..all.len()).filter(|&i| began_with_tls(&all[i]) == tls_first).collect();
        let Some(&first) = candidates.first() else { return none_left() };
        // The server spoke first: nothing to choose by.
        if first_step(&all[first]).is_some_and(|s| matches!(s, Step::Receive { .. })) {
            return Choice::Take(all.remove(first));
        }
        // Even one candidate left must be asked for: the program may want something else. A
        // connection it leaves unused is one that carried nothing when recorded, if any (a
        // pooling client's spare), else nothing.
        if got.is_empty() {
            return match (done, candidates.iter().position(|&i| first_step(&all[i]).is_none())) {
                (false, _) => Choice::NeedMore,
                (true, Some(unused)) => Choice::Take(all.remove(candidates[unused])),
                (true, None) => Choice::Nothing,
            };
        }
        let fitting: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| first_send(&all[i]).is_some_and(|(bytes, wild)| fits(got, bytes, wild)))
            .collect();
        let Some(&earliest) = fitting.first() else {
            // An HTTP request that differs from every recorded one only after its start line
            // (a noisy header value) is the earliest recorded one with that start line: the
            // player compares the rest, noise allowed, and names any real difference.
            if let Some(i) = candidates.iter().copied().find(|&i| same_start_line(&all[i], got)) {
                return Choice::Take(all.remove(i));
            }
            return Choice::None(closest(candidates.iter().map(|&i| &all[i]), got));
        };
        let complete = |i: &usize| first_send(&all[*i]).is_some_and(|(bytes, _)| bytes.len() <= got.len());
        let same_request =
            fitting.iter().all(|&i| first_send(&all[i]).map(|s| s.0) == first_send(&all[earliest]).map(|s| s.0));
        let chosen = if fitting.len() == 1 || same_request || fitting.iter().all(complete) {
            Some(earliest)
        } else if done {
            Some(fitting.iter().copied().find(complete).unwrap_or(earliest))
        } else {
            None
        };
        match chosen {
            Some(i) => Choice::Take(all.remove(i)),
            None => Choice::NeedMore,
        }
    }
}

impl Pool {
    /// The connections never claimed.
    pub fn left(&self) -> Vec<Connection> {
        let mut left: Vec<Connection> = self.by_peer.lock().expect("pool").drain().flat_map(|(_, c)| c).collect();
        left.sort_by_key(|c| c.stream_id);
        left
    }
}

/// A redacted span: offset and length.
type Span = (usize, usize);

/// An HTTP/1.x connection's requests, each with the response to it, as connections of their
/// own; any other connection whole. A connection is split only where every send is an HTTP
/// request (no `100 Continue` between head and body, no upgrade to another protocol, no
/// tunnel) and no cleartext went before its TLS.
fn requests_of(c: Connection) -> Vec<Connection> {
    let splittable = c.tls.as_ref().is_none_or(|t| t.prefix.is_empty())
        && matches!(c.steps.first(), Some(Step::Send { .. }))
        && c.steps.iter().all(|step| match step {
            Step::Send { bytes, .. } => http::is_http(bytes) && !bytes.starts_with(b"CONNECT "),
            Step::Receive { bytes, .. } => !bytes.starts_with(b"HTTP/1.1 101") && !bytes.starts_with(b"HTTP/1.0 101"),
        });
    if !splittable {
        return vec![c];
    }
    let mut pieces: Vec<Connection> = Vec::new();
    let mut offset = 0;
    for step in &c.steps {
        match step {
            Step::Send { bytes, .. } => {
                let piece = Piece { index: pieces.len(), last: false, offset };
                offset += bytes.len();
                pieces.push(Connection {
                    stream_id: c.stream_id,
                    peer: c.peer,
                    unix_path: c.unix_path.clone(),
                    steps: vec![step.clone()],
                    opens_at: c.opens_at,
                    tls: c.tls.clone(),
                    piece: Some(piece),
                })
            }
            Step::Receive { .. } => pieces.last_mut().expect("a send comes first").steps.push(step.clone()),
        }
    }
    if let Some(Connection { piece: Some(piece), .. }) = pieces.last_mut() {
        piece.last = true;
    }
    pieces
}

/// When the recorded peer first answered on `c` (never: last).
fn first_answer(c: &Connection) -> u64 {
    c.steps
        .iter()
        .find_map(|s| match s {
            Step::Receive { ts_ns, .. } => Some(*ts_ns),
            Step::Send { .. } => None,
        })
        .unwrap_or(u64::MAX)
}

/// Whether `got` holds a whole HTTP start line and `c`'s first request has the same one.
fn same_start_line(c: &Connection, got: &[u8]) -> bool {
    let Some(end) = got.iter().position(|&b| b == b'\n') else { return false };
    first_send(c).is_some_and(|(bytes, wild)| {
        http::is_http(bytes) && bytes.len() > end && bytes[end] == b'\n' && fits(&got[..end], &bytes[..end], wild)
    })
}

/// The first step of a recorded connection (before a STARTTLS-style upgrade, the first in the
/// clear); none when nothing went either way.
fn first_step(c: &Connection) -> Option<&Step> {
    match &c.tls {
        Some(t) if !t.prefix.is_empty() => t.prefix.first(),
        _ => c.steps.first(),
    }
}

/// The first bytes the program sent on a recorded connection, with their redacted spans.
fn first_send(c: &Connection) -> Option<(&[u8], &[Span])> {
    match first_step(c) {
        Some(Step::Send { bytes, wildcards }) => Some((bytes, wildcards)),
        _ => None,
    }
}

fn closest<'a>(candidates: impl Iterator<Item = &'a Connection>, got: &[u8]) -> Option<Closest> {
    candidates
        .filter_map(|c| {
            let (bytes, wild) = first_send(c)?;
            let offset = first_difference(bytes, got, wild, 0).unwrap_or(got.len().min(bytes.len()));
            Some(Closest { stream_id: c.stream_id, offset, expected: bytes[offset..].to_vec() })
        })
        .max_by_key(|c| (c.offset, std::cmp::Reverse(c.stream_id)))
}

/// Whether `got` and `recorded` agree as far as both go (redacted spans match anything).
fn fits(got: &[u8], recorded: &[u8], wildcards: &[Span]) -> bool {
    first_difference(recorded, got, wildcards, 0).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, first: &str) -> Connection {
        Connection {
            stream_id: id,
            peer: "127.0.0.1:80".parse().unwrap(),
            unix_path: None,
            steps: vec![
                Step::Send { bytes: first.as_bytes().to_vec(), wildcards: vec![] },
                Step::Receive { bytes: b"ok".to_vec(), ts_ns: 0, gate: 0 },
            ],
            opens_at: 0,
            tls: None,
            piece: None,
        }
    }

    impl Pool {
        fn choose_plain(&self, peer: &SocketAddr, got: &[u8], done: bool) -> Choice {
            self.choose(peer, got, done, false)
        }
    }

    fn taken(choice: Choice) -> Option<u64> {
        match choice {
            Choice::Take(c) => Some(c.stream_id),
            _ => None,
        }
    }

    #[test]
    fn connections_are_chosen_by_what_the_program_sends_first() {
        let peer: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let pool = Pool::new(vec![
            conn(1, "GET /a HTTP/1.1\r\n"),
            conn(2, "GET /b HTTP/1.1\r\n"),
            conn(3, "GET /ab HTTP/1.1\r\n"),
        ]);
        // Not enough to tell /a, /b and /ab apart yet.
        assert!(matches!(pool.choose_plain(&peer, b"GET /", false), Choice::NeedMore));
        assert_eq!(taken(pool.choose_plain(&peer, b"GET /b HTTP", false)), Some(2));
        assert_eq!(taken(pool.choose_plain(&peer, b"GET /ab", false)), Some(3));
        assert!(
            matches!(pool.choose_plain(&peer, b"GET /c", false), Choice::None(Some(Closest { offset: 5, .. }))),
            "no recorded /c"
        );
        // The last one left is still only taken for what it was.
        assert!(matches!(pool.choose_plain(&peer, b"", false), Choice::NeedMore));
        assert!(matches!(pool.choose_plain(&peer, b"GET /z", false), Choice::None(_)));
        assert_eq!(taken(pool.choose_plain(&peer, b"GET /a", false)), Some(1));
        assert!(!pool.has(&peer));
        // Identical requests go in connect order.
        let pool = Pool::new(vec![conn(4, "PING\r\n"), conn(5, "PING\r\n")]);
        assert_eq!(taken(pool.choose_plain(&peer, b"PI", false)), Some(4));
        assert_eq!(pool.left().iter().map(|c| c.stream_id).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn http_connections_are_split_into_requests_matched_by_content() {
        let peer: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let send = |s: &str| Step::Send { bytes: s.as_bytes().to_vec(), wildcards: vec![] };
        let answer = |s: &str, ts_ns| Step::Receive { bytes: s.as_bytes().to_vec(), ts_ns, gate: 0 };
        let keep_alive = Connection {
            steps: vec![
                send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"),
                answer("HTTP/1.1 200 OK\r\n\r\na1", 10),
                send("GET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
                answer("HTTP/1.1 200 OK\r\n\r\nb", 30),
            ],
            ..conn(1, "")
        };
        let other = Connection {
            steps: vec![send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), answer("HTTP/1.1 200 OK\r\n\r\na2", 20)],
            ..conn(2, "")
        };
        let upgraded = Connection {
            steps: vec![
                send("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
                answer("HTTP/1.1 101 Switching Protocols\r\n\r\n", 40),
                send("\u{81}frame"),
            ],
            ..conn(3, "")
        };
        let pool = Pool::new(vec![keep_alive, other, upgraded]);
        let take = |got: &str| match pool.choose_plain(&peer, got.as_bytes(), false) {
            Choice::Take(c) => (c.stream_id, c.piece.map(|p| (p.index, p.last, p.offset)), c.steps.len()),
            _ => panic!("{got}: nothing taken"),
        };
        // The second request of connection 1 is asked for first, on a connection of its own.
        assert_eq!(take("GET /b HTTP/1.1\r\nHost: x\r\n\r\n"), (1, Some((1, true, 28)), 2));
        // Two /a: answered in the order they were, whichever connection asks.
        assert_eq!(take("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), (1, Some((0, false, 0)), 2));
        assert_eq!(take("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), (2, Some((0, true, 0)), 2));
        // A connection upgraded to another protocol stays whole.
        assert_eq!(pool.left().iter().map(|c| (c.stream_id, c.steps.len())).collect::<Vec<_>>(), vec![(3, 3)]);
        // A request with another header value is the recorded one with its start line.
        let pool = Pool::new(vec![conn(4, "GET /c HTTP/1.1\r\nX-Id: 1\r\n\r\n")]);
        assert_eq!(taken(pool.choose_plain(&peer, b"GET /c HTTP/1.1\r\nX-Id: 2\r\n\r\n", false)), Some(4));
        // Nothing sent and closed: nothing claimed.
        let pool = Pool::new(vec![conn(7, "GET /d HTTP/1.1\r\n\r\n")]);
        assert!(matches!(pool.choose_plain(&peer, b"", true), Choice::Nothing));
        assert!(pool.has(&peer));
    }
}
