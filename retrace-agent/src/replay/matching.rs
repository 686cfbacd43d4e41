//! Which recorded connection a new connection of the program is: the one whose first request
//! matches what the program sends first, not the next in connect order (threads connect in
//! any order). A connection that matches none is never fed another's bytes.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use super::script::{first_difference, Connection, Step};

/// The recorded outbound connections not yet claimed, by peer, in the order they were made.
#[derive(Default)]
pub struct Pool {
    by_peer: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    /// Unix socket paths, by the stand-in address their connections go by.
    unix_paths: HashMap<SocketAddr, String>,
}

/// What is known once some of the program's first bytes are in.
pub enum Choice {
    Take(Connection),
    /// Several recorded connections still fit: more bytes tell them apart.
    NeedMore,
    /// None fits; the closest (the longest first request in common): its stream id, and
    /// where and how it differs.
    None(Option<Closest>),
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
        let mut by_peer: HashMap<SocketAddr, Vec<Connection>> = HashMap::new();
        let mut unix_paths = HashMap::new();
        for c in connections {
            if let Some(path) = &c.unix_path {
                unix_paths.insert(c.peer, path.clone());
            }
            by_peer.entry(c.peer).or_default().push(c);
        }
        Pool { by_peer: Mutex::new(by_peer), unix_paths }
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

    /// Whether a recorded connection to `peer` is still unclaimed.
    pub fn has(&self, peer: &SocketAddr) -> bool {
        self.by_peer.lock().expect("pool").get(peer).is_some_and(|c| !c.is_empty())
    }

    /// The server names and protocols of the unclaimed connections to `peer` that began with
    /// a TLS handshake, if any.
    pub fn tls_first(&self, peer: &SocketAddr) -> Option<(Vec<String>, Vec<String>)> {
        let pool = self.by_peer.lock().expect("pool");
        let sessions: Vec<&super::script::TlsSession> =
            pool.get(peer)?.iter().filter_map(|c| c.tls.as_ref()).filter(|t| t.prefix.is_empty()).collect();
        if sessions.is_empty() {
            return None;
        }
        let mut names: Vec<String> = sessions.iter().map(|t| t.sni.clone()).filter(|n| !n.is_empty()).collect();
        names.dedup();
        let mut alpn: Vec<String> = sessions.iter().map(|t| t.alpn.clone()).filter(|a| !a.is_empty()).collect();
        alpn.dedup();
        Some((names, alpn))
    }

    /// Chooses among the unclaimed connections to `peer` by the program's first bytes `got`.
    /// `done`: the program sends nothing more for now, so choose with what is there (a
    /// connection whose whole first request was seen first, else the earliest that fits).
    /// `tls_first`: the program began with a TLS handshake (which the replayer terminated), so
    /// only connections recorded that way are candidates, and `got` is plaintext.
    pub fn choose(&self, peer: &SocketAddr, got: &[u8], done: bool, tls_first: bool) -> Choice {
        let mut pool = self.by_peer.lock().expect("pool");
        let Some(all) = pool.get_mut(peer) else { return Choice::None(None) };
        let began_with_tls = |c: &Connection| c.tls.as_ref().is_some_and(|t| t.prefix.is_empty());
        // The candidates, in the order the connections were made: indices into `all`.
        let candidates: Vec<usize> = (0..all.len()).filter(|&i| began_with_tls(&all[i]) == tls_first).collect();
        let Some(&first) = candidates.first() else { return Choice::None(None) };
        if first_send(&all[first]).is_none() {
            return Choice::Take(all.remove(first));
        }
        // Even one candidate left must be asked for: the program may want something else.
        if got.is_empty() {
            return if done { Choice::Take(all.remove(first)) } else { Choice::NeedMore };
        }
        let fitting: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| first_send(&all[i]).is_some_and(|(bytes, wild)| fits(got, bytes, wild)))
            .collect();
        let Some(&earliest) = fitting.first() else {
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

/// The first bytes the program sent on a recorded connection (before a STARTTLS-style upgrade,
/// those in the clear), with their redacted spans.
fn first_send(c: &Connection) -> Option<(&[u8], &[Span])> {
    let steps = match &c.tls {
        Some(t) if !t.prefix.is_empty() => &t.prefix,
        _ => &c.steps,
    };
    match steps.first() {
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
}
