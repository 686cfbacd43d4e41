//! HTTP/2 clients, replayed request by request. A recorded HTTP/2 connection (the client's
//! preface first: TLS with ALPN `h2`, or cleartext with prior knowledge) is decoded into its
//! requests and the responses to them (frames, HPACK). In replay the replayer is an HTTP/2
//! server (the `h2` crate) on the program's connection, and answers each request with the
//! response to the same recorded request, from any recorded connection to that address: how
//! the streams of a connection interleave, and how many connections a client opens, change
//! from run to run (Go's `net/http`, gRPC), and HPACK's bytes change with them, so the bytes
//! cannot be compared as one stream. Identical requests get their responses in the recorded
//! order; a request that differs from every recorded one with its method and path is reset.

use std::{net::SocketAddr, net::TcpStream, sync::Arc};

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;

use super::{
    http::{noise_in, noise_in_body, text, Ignored, Noise},
    matching::Pool,
    peer::context,
    report::{Difference, Exchange as Played, Unmatched},
    script::{first_difference, Connection, Step},
    Shared,
};

/// What an HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a request may stay open without sending more before it is reset.
const UNFINISHED: std::time::Duration = std::time::Duration::from_secs(10);

/// A header field: name (lower case), value.
pub type Header = (Vec<u8>, Vec<u8>);

/// One side of a stream: its header fields (pseudo-headers first), body and trailers.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// Spans of `body` redacted at record time (offset, length): they match anything.
    pub wildcards: Vec<(usize, usize)>,
    pub trailers: Vec<Header>,
}

impl Message {
    fn field(&self, name: &[u8]) -> &[u8] {
        self.headers.iter().find(|(n, _)| n == name).map_or(&[], |(_, v)| v)
    }

    /// `GET /path`: how the report names a request.
    pub fn summary(&self) -> String {
        format!("{} {}", text(self.field(b":method")), text(self.field(b":path")))
    }
}

/// A recorded request and the response to it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The recorded connection it went over.
    pub stream_id: u64,
    pub request: Message,
    /// None: the connection ended before the response.
    pub response: Option<Message>,
    /// When the response began to arrive (the order identical requests are answered in).
    pub answered_ns: u64,
}

/// A recorded connection's requests and responses, if it is HTTP/2 and its frames decode.
pub fn exchanges(c: &Connection) -> Option<Vec<Exchange>> {
    let (mut client, mut server) = (Vec::new(), Vec::new());
    let (mut client_wildcards, mut arrivals) = (Vec::new(), Vec::new());
    for step in &c.steps {
        match step {
            Step::Send { bytes, wildcards } => {
                client_wildcards.extend(wildcards.iter().map(|&(o, l)| (client.len() + o, l)));
                client.extend_from_slice(bytes);
            }
            Step::Receive { bytes, ts_ns, .. } => {
                arrivals.push((server.len(), *ts_ns));
                server.extend_from_slice(bytes);
            }
        }
    }
    if !client.starts_with(PREFACE) {
        return None;
    }
    let requests = decode(&client, PREFACE.len(), &client_wildcards)?;
    let mut responses = decode(&server, 0, &[])?;
    let answered = |at: usize| arrivals.iter().rev().find(|&&(from, _)| from <= at).map_or(0, |&(_, ts)| ts);
    Some(
        requests
            .into_iter()
            .filter(|(id, ..)| id % 2 == 1) // client-initiated streams
            .map(|(id, request, _)| {
                let response = responses.iter().position(|(r, ..)| *r == id).map(|i| responses.remove(i));
                Exchange {
                    stream_id: c.stream_id,
                    request,
                    answered_ns: response.as_ref().map_or(u64::MAX, |(_, _, at)| answered(*at)),
                    response: response.map(|(_, m, _)| m),
                }
            })
            .collect(),
    )
}

/// The messages of one direction's frames from `from`, by stream, in the order their streams
/// began: (stream, message, where its first header block began). Every header block is decoded
/// in order (HPACK's table is the connection's); a truncated last frame ends it.
fn decode(bytes: &[u8], from: usize, wildcards: &[(usize, usize)]) -> Option<Vec<(u32, Message, usize)>> {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const PUSH_PROMISE: u8 = 5;
    const CONTINUATION: u8 = 9;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    let mut decoder = loona_hpack::Decoder::new();
    let mut messages: Vec<(u32, Message, usize)> = Vec::new();
    // A header block being gathered: stream, fragment, where it began, kept (not a push).
    let mut block: Option<(u32, Vec<u8>, usize, bool)> = None;
    let mut at = from;
    while let Some(head) = bytes.get(at..at + 9) {
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let start = at + 9;
        let Some(payload) = bytes.get(start..start + length) else { break };
        let frame_at = at;
        at = start + length;
        // Padding (a length byte first, that many bytes last) and a HEADERS frame's priority.
        let (skip, pad) = match flags & PADDED != 0 && matches!(kind, DATA | HEADERS | PUSH_PROMISE) {
            true => (1, *payload.first()? as usize),
            false => (0, 0),
        };
        let skip = skip + if kind == HEADERS && flags & PRIORITY != 0 { 5 } else { 0 };
        let skip = skip + if kind == PUSH_PROMISE { 4 } else { 0 };
        let content = payload.get(skip..payload.len().checked_sub(pad)?)?;
        let fragment = match kind {
            DATA => {
                let i = message_of(&mut messages, stream, frame_at);
                let body = &mut messages[i].1;
                let (content_at, base) = (start + skip, body.body.len());
                for &(o, l) in wildcards {
                    let (a, b) = (o.max(content_at), (o + l).min(content_at + content.len()));
                    if a < b {
                        body.wildcards.push((base + a - content_at, b - a));
                    }
                }
                body.body.extend_from_slice(content);
                None
            }
            HEADERS | PUSH_PROMISE => {
                block = Some((stream, content.to_vec(), frame_at, kind == HEADERS));
                Some(flags)
            }
            CONTINUATION => {
                block.as_mut()?.1.extend_from_slice(content);
                Some(flags)
            }
            _ => None,
        };
        if fragment.is_some_and(|flags| flags & END_HEADERS != 0) {
            let (stream, fragment, began, kept) = block.take()?;
            let fields = decoder.decode(&fragment).ok()?;
            let informational = fields.iter().any(|(n, v)| n == b":status" && v.first() == Some(&b'1'));
            if kept && !informational {
                let i = message_of(&mut messages, stream, began);
                let message = &mut messages[i].1;
                if message.headers.is_empty() {
                    message.headers = fields;
                } else {
                    message.trailers = fields;
                }
            }
        }
    }
    Some(messages)
}

/// The index of `stream`'s message, begun at `at` if it is new.
fn message_of(messages: &mut Vec<(u32, Message, usize)>, stream: u32, at: usize) -> usize {
    match messages.iter().position(|(s, ..)| *s == stream) {
        Some(i) => i,
        None => {
            messages.push((stream, Message::default(), at));
            messages.len() - 1
        }
    }
}

/// How a request the program sent compares with a recorded one: the differences ignored as
/// noise, or the first real one (what, expected, actual).
pub fn compare(recorded: &Message, asked: &Message, noise: &Noise) -> Result<Vec<Ignored>, (String, String, String)> {
    let mut ignored = Vec::new();
    for (expected, actual, what) in
        [(&recorded.headers, &asked.headers, "header"), (&recorded.trailers, &asked.trailers, "trailer")]
    {
        fn names(fields: &[Header]) -> Vec<&[u8]> {
            let mut n: Vec<&[u8]> = fields.iter().map(|(n, _)| n.as_slice()).collect();
            n.sort();
            n.dedup();
            n
        }
        let (en, an) = (names(expected), names(actual));
        if en != an {
            let list = |n: &[&[u8]]| n.iter().map(|n| text(n)).collect::<Vec<_>>().join(", ");
            return Err((format!("different {what}s"), list(&en), list(&an)));
        }
        for name in en {
            let values = |fields: &Vec<Header>| {
                fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect::<Vec<_>>()
            };
            let (ev, av) = (values(expected), values(actual));
            if ev == av {
                continue;
            }
            let name = String::from_utf8_lossy(name).into_owned();
            let why = ev.iter().zip(&av).all(|(e, a)| e == a || noise_in(&name, e, a, noise).is_some())
                && ev.len() == av.len();
            match why.then(|| ev.iter().zip(&av).find_map(|(e, a)| noise_in(&name, e, a, noise))).flatten() {
                Some(why) => ignored.push(Ignored {
                    field: name,
                    expected: text(&ev.concat()),
                    actual: text(&av.concat()),
                    why: why.into(),
                }),
                None => {
                    return Err((format!("different {what} value: {name}"), text(&ev.concat()), text(&av.concat())))
                }
            }
        }
    }
    let same_body = recorded.body.len() == asked.body.len()
        && first_difference(&recorded.body, &asked.body, &recorded.wildcards, 0).is_none();
    if !same_body {
        if !noise_in_body(&recorded.body, &asked.body, noise) {
            let at = recorded.body.iter().zip(&asked.body).position(|(e, a)| e != a);
            let at = at.unwrap_or(recorded.body.len().min(asked.body.len()));
            return Err(("different body".into(), context(&recorded.body[at..]), context(&asked.body[at..])));
        }
        ignored.push(Ignored {
            field: "body".into(),
            expected: text(&recorded.body),
            actual: text(&asked.body),
            why: "noise rule (pattern)".into(),
        });
    }
    Ok(ignored)
}

/// Serves the program's HTTP/2 connection (`prefetched`: what it sent already) until it closes
/// it: each request gets the response to the same recorded one.
pub fn serve(sock: TcpStream, prefetched: Vec<u8>, pool: Arc<Pool>, peer: SocketAddr, shared: Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        shared.fail("cannot start the HTTP/2 player".into());
        return;
    };
    runtime.block_on(async move {
        let _ = sock.set_nonblocking(true);
        let Ok(sock) = tokio::net::TcpStream::from_std(sock) else { return };
        let (read, write) = tokio::io::split(sock);
        let io = tokio::io::join(std::io::Cursor::new(prefetched).chain(read), write);
        // Windows as large as a recorded server's may have been: the program sends bodies the
        // way it did.
        let mut connection = match h2::server::Builder::new()
            .initial_window_size(1 << 24)
            .initial_connection_window_size(1 << 24)
            .max_concurrent_streams(1024)
            .handshake::<_, Bytes>(io)
            .await
        {
            Ok(c) => c,
            Err(_) => return,
        };
        while let Some(Ok((request, respond))) = connection.accept().await {
            let (pool, shared) = (pool.clone(), shared.clone());
            tokio::spawn(answer(request, respond, pool, peer, shared));
        }
    });
}

/// Answers one request of the program's.
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    pool: Arc<Pool>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let (parts, mut body) = request.into_parts();
    let mut asked = Message::default();
    let uri = &parts.uri;
    asked.headers.push((b":method".to_vec(), parts.method.as_str().as_bytes().to_vec()));
    if let Some(scheme) = uri.scheme_str() {
        asked.headers.push((b":scheme".to_vec(), scheme.as_bytes().to_vec()));
    }
    if let Some(authority) = uri.authority() {
        asked.headers.push((b":authority".to_vec(), authority.as_str().as_bytes().to_vec()));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    asked.headers.push((b":path".to_vec(), path.as_bytes().to_vec()));
    asked.headers.extend(header_list(&parts.headers));
    loop {
        match tokio::time::timeout(UNFINISHED, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                asked.body.extend_from_slice(&chunk);
            }
            Ok(Some(Err(_))) => return,
            Ok(None) => break,
            // A stream that waits for answers before it ends (gRPC's bidirectional calls) is
            // answered only whole: the program gets a reset, not a hang.
            Err(_) => {
                respond.send_reset(h2::Reason::CANCEL);
                shared.unmatched(Unmatched {
                    address: pool.name_of(&peer),
                    sent: asked.summary(),
                    closest_stream_id: None,
                    difference: Some(Difference {
                        what: format!(
                            "the request did not end within {} s: a stream that waits for answers before it ends is not replayed",
                            UNFINISHED.as_secs()
                        ),
                        ..Default::default()
                    }),
                });
                return;
            }
        }
    }
    if let Ok(Some(trailers)) = body.trailers().await {
        asked.trailers = header_list(&trailers);
    }
    let name = pool.name_of(&peer);
    let (exchange, ignored) = match pool.take_h2(&peer, &asked, &shared.noise) {
        Ok(taken) => taken,
        Err(closest) => {
            // Not REFUSED_STREAM: clients retry that (Go's for a minute).
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            let (closest_stream_id, difference) = match closest {
                Some((stream_id, (what, expected, actual))) => {
                    (Some(stream_id), Some(Difference { what, expected, actual, ..Default::default() }))
                }
                None => (None, None),
            };
            shared.unmatched(Unmatched { address: name, sent: asked.summary(), closest_stream_id, difference });
            return;
        }
    };
    let mut played = Played {
        stream_id: exchange.stream_id,
        peer: name,
        status: "matched".into(),
        bytes_from_program: asked.body.len() as u64,
        ignored,
        ..Default::default()
    };
    match exchange.response {
        Some(response) => {
            shared.clock.deliver(exchange.answered_ns, false);
            played.bytes_to_program = response.body.len() as u64;
            if send(&mut respond, response).is_err() {
                played.status = "diverged".into();
                played.difference =
                    Some(Difference { what: format!("the program reset {}", asked.summary()), ..Default::default() });
            }
        }
        // No answer was recorded: the program gets none either.
        None => respond.send_reset(h2::Reason::CANCEL),
    }
    shared.exchange(played);
}

/// Sends a recorded response: its status and fields, body and trailers.
fn send(respond: &mut h2::server::SendResponse<Bytes>, response: Message) -> Result<(), h2::Error> {
    let mut head = http::Response::new(());
    let status = std::str::from_utf8(response.field(b":status")).ok().and_then(|s| s.parse().ok());
    *head.status_mut() = http::StatusCode::from_u16(status.unwrap_or(200)).unwrap_or(http::StatusCode::OK);
    head.headers_mut().extend(fields(&response.headers));
    let (body, trailers) = (response.body, fields(&response.trailers));
    let mut stream = respond.send_response(head, body.is_empty() && trailers.is_empty())?;
    if !body.is_empty() {
        stream.send_data(Bytes::from(body), trailers.is_empty())?;
    }
    if !trailers.is_empty() {
        stream.send_trailers(trailers)?;
    }
    Ok(())
}

/// A map's header fields as a list.
fn header_list(map: &http::HeaderMap) -> Vec<Header> {
    map.iter().map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

/// Header fields as a map, without pseudo-headers and those HTTP/2 does not carry.
fn fields(list: &[Header]) -> http::HeaderMap {
    list.iter()
        .filter(|(n, _)| !n.starts_with(b":"))
        .filter(|(n, _)| !matches!(n.as_slice(), b"connection" | b"keep-alive" | b"transfer-encoding" | b"upgrade"))
        .filter_map(|(n, v)| Some((http::HeaderName::from_bytes(n).ok()?, http::HeaderValue::from_bytes(v).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: its 9-byte head, then the payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn recorded_frames_decode_into_requests_and_their_responses() {
        let mut client_hpack = loona_hpack::Encoder::new();
        let mut server_hpack = loona_hpack::Encoder::new();
        let request = |encoder: &mut loona_hpack::Encoder, path: &str| {
            encoder.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"https"),
                (b":path", path.as_bytes()),
                (b"x-id", b"7"),
            ])
        };
        let mut client = PREFACE.to_vec();
        client.extend(frame(4, 0, 0, b"")); // SETTINGS
        client.extend(frame(1, 0x4, 1, &request(&mut client_hpack, "/a")));
        client.extend(frame(1, 0x4 | 0x8, 3, &[&[2][..], &request(&mut client_hpack, "/b"), &[0, 0]].concat()));
        client.extend(frame(0, 0x1, 3, b"body of b"));
        client.extend(frame(0, 0x1, 1, b"body of a"));
        let response = |encoder: &mut loona_hpack::Encoder, status: &[u8]| {
            encoder.encode(vec![(&b":status"[..], status), (b"content-type", b"text/plain")])
        };
        let mut server = frame(4, 0, 0, b"");
        let informational = response(&mut server_hpack, b"103");
        server.extend(frame(1, 0x4, 3, &informational));
        let b = response(&mut server_hpack, b"200");
        server.extend(frame(1, 0x4, 3, &b));
        server.extend(frame(0, 0x1, 3, b"answer to b"));
        let a = response(&mut server_hpack, b"404");
        server.extend(frame(1, 0, 1, &a[..3]));
        server.extend(frame(9, 0x4, 1, &a[3..]));
        let send = |bytes: Vec<u8>| Step::Send { bytes, wildcards: vec![] };
        let connection = Connection {
            stream_id: 5,
            peer: "127.0.0.1:443".parse().unwrap(),
            unix_path: None,
            steps: vec![
                send(client),
                Step::Receive { bytes: server[..40].to_vec(), ts_ns: 10, gate: 0 },
                Step::Receive { bytes: server[40..].to_vec(), ts_ns: 20, gate: 0 },
            ],
            opens_at: 0,
            tls: None,
            piece: None,
        };
        let exchanges = exchanges(&connection).expect("HTTP/2");
        assert_eq!(exchanges.len(), 2);
        let (a, b) = (&exchanges[0], &exchanges[1]);
        assert_eq!(a.request.summary(), "POST /a");
        assert_eq!(a.request.body, b"body of a");
        assert_eq!(a.response.as_ref().unwrap().field(b":status"), b"404");
        assert_eq!(a.answered_ns, 20);
        assert_eq!(b.request.summary(), "POST /b");
        assert_eq!(b.request.field(b"x-id"), b"7");
        let b_response = b.response.as_ref().unwrap();
        assert_eq!((b_response.field(b":status"), b_response.body.as_slice()), (&b"200"[..], &b"answer to b"[..]));
        assert_eq!(b.answered_ns, 10);
        // The same request compares equal; another body or header value does not, a noisy one
        // is reported.
        let noise = Noise::default();
        assert!(compare(&b.request, &b.request, &noise).unwrap().is_empty());
        let other = Message { body: b"body of c".to_vec(), ..b.request.clone() };
        assert_eq!(compare(&b.request, &other, &noise).unwrap_err().0, "different body");
        let mut traced = a.request.clone();
        traced.headers.push((b"traceparent".to_vec(), b"1".to_vec()));
        let mut retraced = a.request.clone();
        retraced.headers.push((b"traceparent".to_vec(), b"2".to_vec()));
        assert_eq!(compare(&traced, &retraced, &noise).unwrap()[0].why, "built-in noisy header");
        assert!(compare(&traced, &a.request, &noise).is_err());
        // Not HTTP/2: none.
        let plain = Connection {
            steps: vec![Step::Send { bytes: b"GET / HTTP/1.1\r\n\r\n".to_vec(), wildcards: vec![] }],
            ..connection
        };
        assert!(super::exchanges(&plain).is_none());
    }
}
