//! TLS streams: the plaintext a TLS library's calls moved (`Sys::is_tls`), one stream per
//! session, tied to the socket stream that carries its records (`carrier`). The socket's own
//! stream keeps the ciphertext; its first bytes each way (ClientHello, ServerHello) name the
//! server, the protocols and the version the TLS stream is labelled with.

use super::*;
use crate::streams::tls_hello::{self, Hello};

impl Tracker {
    /// The TLS stream of a session (`session`: the library's pointer) whose call used `fd`
    /// (-1 when no socket call revealed it yet).
    pub(super) fn tls_stream(
        &mut self,
        tgid: u32,
        fd: i32,
        session: u64,
        sys: Sys,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        // Only a stream socket (the kinds a handshake is looked for on) carries TLS: an fd read
        // out of a library's structures (Go's) that names a file, a pipe or nothing known is no
        // carrier.
        let carrier = self.tables.get(tgid, fd).map(|entry| entry.stream).filter(|sid| {
            self.streams.get(sid).is_some_and(|s| {
                matches!(s.info.kind(), proto::StreamKind::Tcp | proto::StreamKind::Unix | proto::StreamKind::Other)
            })
        });
        if let Some(&sid) = self.tls_sessions.get(&(tgid, session)) {
            match self.streams.get(&sid) {
                Some(s) if carrier.is_none() || carrier == Some(s.info.carrier) || s.info.carrier == 0 => {
                    if s.info.carrier == 0 {
                        if let Some(c) = carrier {
                            self.tie(sid, c, out);
                        }
                    }
                    return sid;
                }
                // The library's session object now serves another socket (freed and reused).
                Some(_) => self.close_stream(sid, ts, out),
                None => {}
            }
        }
        // A library working on memory buffers (node) makes no socket call of its own: the
        // process's latest handshake that no TLS stream took is the best guess.
        // A call that named a socket no longer open (a write that returned after its socket
        // was closed) guesses nothing.
        let carrier = carrier.or_else(|| {
            (fd < 0).then(|| self.handshakes.iter().rev().find(|(pid, _)| *pid == tgid).map(|(_, sid)| *sid)).flatten()
        });
        self.next_stream += 1;
        self.totals.streams += 1;
        let sid = self.next_stream;
        let info = proto::StreamInfo {
            id: sid,
            kind: proto::StreamKind::Tls as i32,
            pid: tgid,
            fd,
            origin: "tls".into(),
            ts_ns: ts,
            tls_library: sys.tls_library().unwrap_or_default().into(),
            ..Default::default()
        };
        self.streams.insert(
            sid,
            Stream { info, refs: 1, pos_in: 0, pos_out: 0, file_pos: None, append: false, hello: None, has_tls: false },
        );
        self.tls_sessions.insert((tgid, session), sid);
        match carrier {
            Some(c) => self.tie(sid, c, out),
            None => out.push(record(R::Stream(self.streams[&sid].info.clone()))),
        }
        sid
    }

    /// Ties a TLS stream to its socket: addresses and handshake from there.
    fn tie(&mut self, sid: u64, carrier: u64, out: &mut Vec<proto::Record>) {
        self.handshakes.retain(|(_, c)| *c != carrier);
        let Some(c) = self.streams.get_mut(&carrier) else { return };
        c.has_tls = true;
        let (fd, local, peer, hello) = (c.info.fd, c.info.local.clone(), c.info.peer.clone(), c.hello.clone());
        let Some(s) = self.streams.get_mut(&sid) else { return };
        s.info.carrier = carrier;
        s.info.fd = fd;
        s.info.local = local;
        s.info.peer = peer;
        if let Some(state) = hello {
            let hello = &state.hello;
            s.info.sni = hello.sni.clone();
            s.info.alpn = hello.alpn.clone();
            s.info.tls_version = hello.version.clone();
            if s.info.alpn.is_empty() && !hello.alpn_offered.is_empty() {
                s.hello = Some(Box::new(Handshake { hello: hello.clone(), ..Default::default() }));
            }
        }
        out.push(record(R::Stream(s.info.clone())));
    }

    /// The first bytes each way of a socket may be a TLS handshake: remember what it says. A
    /// library may read a record's header and its body in two calls: the first record each way
    /// is put together first.
    pub(super) fn observe_handshake(&mut self, sid: u64, dir: Direction, offset: u64, payload: &[u8]) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if !matches!(s.info.kind(), proto::StreamKind::Tcp | proto::StreamKind::Unix | proto::StreamKind::Other) {
            return;
        }
        let side = (dir == Direction::Out) as usize;
        let continues = s.hello.as_ref().is_some_and(|h| {
            let (start, bytes) = &h.partial[side];
            !bytes.is_empty() && start + bytes.len() as u64 == offset
        });
        // A handshake comes first, or after a short cleartext upgrade (PostgreSQL's SSLRequest,
        // STARTTLS), once each way.
        let seen = s.hello.as_ref().is_some_and(|h| h.seen[side]);
        let fresh = !continues && !seen && offset < UPGRADE_MAX && tls_hello::looks_like_handshake(payload);
        if !fresh && !continues {
            return;
        }
        if fresh && s.hello.is_none() {
            if self.handshakes.len() >= HANDSHAKES_MAX {
                self.handshakes.remove(0);
            }
            self.handshakes.push((s.info.pid, sid));
        }
        let state = s.hello.get_or_insert_with(Default::default);
        state.seen[side] = true;
        let (start, partial) = &mut state.partial[side];
        if fresh {
            *start = offset;
        }
        let room = FIRST_RECORD_MAX.saturating_sub(partial.len());
        partial.extend_from_slice(&payload[..payload.len().min(room)]);
        if partial.len() < 5 {
            return;
        }
        let record_len = 5 + u16::from_be_bytes([partial[3], partial[4]]) as usize;
        if partial.len() >= record_len || partial.len() >= FIRST_RECORD_MAX {
            let bytes = std::mem::take(partial);
            tls_hello::learn(&mut state.hello, &bytes);
        }
    }

    /// The first plaintext of a TLS 1.3 session names its protocol among those offered.
    pub(super) fn tls_first_bytes(&mut self, sid: u64, payload: &[u8], out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        let Some(state) = s.hello.take() else { return };
        if let Some(alpn) = tls_hello::infer_alpn(&state.hello.alpn_offered, payload) {
            s.info.alpn = alpn;
            out.push(record(R::Stream(s.info.clone())));
        }
    }

    /// A socket stream closed: so do the TLS sessions it carried.
    pub(super) fn close_carried(&mut self, carrier: u64, ts: u64, out: &mut Vec<proto::Record>) {
        let carried: Vec<u64> = self
            .tls_sessions
            .values()
            .copied()
            .filter(|sid| self.streams.get(sid).is_some_and(|s| s.info.carrier == carrier))
            .collect();
        for sid in carried {
            self.close_stream(sid, ts, out);
        }
    }

    pub(super) fn close_stream(&mut self, sid: u64, ts: u64, out: &mut Vec<proto::Record>) {
        self.tls_sessions.retain(|_, s| *s != sid);
        if self.streams.remove(&sid).is_some() {
            out.push(record(R::Close(proto::StreamClose { stream_id: sid, ts_ns: ts })));
        }
    }

    /// Plaintext the kernel lost with TLS records it could not write, read at the end.
    pub fn tls_pending_loss(
        &mut self,
        tgid: u32,
        session: u64,
        bytes_in: u64,
        bytes_out: u64,
        now_mono_ns: u64,
        out: &mut Vec<proto::Record>,
    ) {
        let ts = self.wall_ns(now_mono_ns);
        match self.tls_sessions.get(&(tgid, session)).copied() {
            Some(sid) => {
                self.gap(sid, Direction::In, bytes_in, GapReason::RecordDropped, "", ts, out);
                self.gap(sid, Direction::Out, bytes_out, GapReason::RecordDropped, "", ts, out);
            }
            None => self.unattributed_bytes += bytes_in + bytes_out,
        }
    }
}

/// Kept on socket streams while their handshake is read, and on TLS streams until their first
/// plaintext names the protocol.
pub(super) type HelloState = Option<Box<Handshake>>;

/// What a socket's handshake said, and its first record each way while incomplete (in, out).
#[derive(Clone, Debug, Default)]
pub(super) struct Handshake {
    hello: Hello,
    /// Where each first record started in its direction, and its bytes so far.
    partial: [(u64, Vec<u8>); 2],
    /// A first record was met that way.
    seen: [bool; 2],
}

/// A handshake is looked for this far into a connection (after a cleartext upgrade request).
const UPGRADE_MAX: u64 = 1024;

/// Handshakes waiting for their TLS stream, at most (oldest forgotten first).
const HANDSHAKES_MAX: usize = 256;

/// A first record is read up to here (a ClientHello is far smaller than a record may be).
const FIRST_RECORD_MAX: usize = 5 + (1 << 14);
