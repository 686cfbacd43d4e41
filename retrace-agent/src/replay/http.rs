//! HTTP/1.x-aware comparison, for what virtualisation does not make equal: a recorded message
//! and the program's are compared start line, header names in order, and body, while the
//! values of noisy headers (dates, ETags, request ids, cookie expiry; more from the rules
//! file's `[noise]`) may differ. Each message is read by its own framing (Content-Length or
//! chunked), so a noisy value of another length does not shift the stream. Every difference
//! ignored is reported with why.

use serde::Serialize;

use super::script::{first_difference, redacted};

pub use crate::redact::rules::Noise;

/// Header names whose values differ between runs of an unchanged program.
const NOISY_HEADERS: &[&str] = &[
    "date",
    "expires",
    "last-modified",
    "age",
    "etag",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-amz-id-2",
    "cf-ray",
    "server-timing",
    "x-runtime",
    "x-response-time",
    "traceparent",
    "grpc-timeout",
];
/// A message head longer than this is no HTTP we compare.
const HEAD_MAX: usize = 64 * 1024;

/// A difference ignored as noise.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ignored {
    /// The header, or `body`.
    pub field: String,
    pub expected: String,
    pub actual: String,
    pub why: String,
}

/// The end of the program's bytes, as far as one comparison is concerned.
pub trait Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Gives back bytes read past the message.
    fn unread(&mut self, bytes: &[u8]);
}

/// How a comparison of one recorded send ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes of the program's consumed.
    pub consumed: usize,
    /// First real difference: offset in the program's bytes, what, expected, actual.
    pub difference: Option<(usize, &'static str, Vec<u8>, Vec<u8>)>,
    /// What the difference could be noise in.
    pub learn: Option<super::report::Learn>,
    pub ignored: Vec<Ignored>,
}

/// Whether `recorded` starts like an HTTP/1.x request or response.
pub fn is_http(recorded: &[u8]) -> bool {
    let line = recorded.split(|&b| b == b'\n').next().unwrap_or_default();
    line.starts_with(b"HTTP/1.") || (line.ends_with(b"HTTP/1.1\r") || line.ends_with(b"HTTP/1.0\r"))
}

/// One message: head (with its CRLFCRLF) and body, framed.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Message {
    fn start_line(&self) -> &[u8] {
        self.head.split(|&b| b == b'\n').next().unwrap_or_default()
    }

    /// (lower-case name, value, where the value starts in the head).
    fn headers(&self) -> Vec<(String, &[u8], usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        for (i, line) in self.head.split(|&b| b == b'\n').enumerate() {
            let line_start = at;
            at += line.len() + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':').filter(|_| i > 0) else { continue };
            let value = &line[colon + 1..];
            let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            out.push((name, &value[start..], line_start + colon + 1 + start));
        }
        out
    }

    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers().into_iter().find(|(n, ..)| n == name).map(|(_, v, _)| v.to_vec())
    }
}

/// Where a message's body ends, given the bytes after its head: Some(len), or None while more
/// bytes are needed. `rest_is_body`: a response without framing runs to the end.
fn body_len(head: &Message, after: &[u8], rest_is_body: bool) -> Option<usize> {
    let status = head.start_line().split(|&b| b == b' ').nth(1).unwrap_or_default();
    if head.start_line().starts_with(b"HTTP/1.") && (status.starts_with(b"1") || status == b"204" || status == b"304") {
        return Some(0);
    }
    let chunked = head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with(b"chunked"));
    if chunked {
        let mut at = 0;
        loop {
            let line_end = after[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = std::str::from_utf8(&after[at..line_end]).ok()?.split(';').next()?.trim().to_owned();
            let size = usize::from_str_radix(&size, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let end = after[at..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| at + p + 4);
                return if after[at..].starts_with(b"\r\n") { Some(at + 2) } else { end };
            }
            at += size + 2;
            if at > after.len() {
                return None;
            }
        }
    }
    if let Some(len) = head.header("content-length").and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()) {
        return (after.len() >= len).then_some(len);
    }
    if head.start_line().starts_with(b"HTTP/1.") && rest_is_body {
        return Some(after.len());
    }
    Some(0)
}

/// Splits the recorded bytes into messages (each with where it starts); the rest (not HTTP)
/// is returned raw, with where it starts.
fn recorded_messages(recorded: &[u8]) -> (Vec<(usize, Message)>, usize) {
    let mut messages = Vec::new();
    let mut at = 0;
    while is_http(&recorded[at..]) {
        let rest = &recorded[at..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else { break };
        let head = Message { head: rest[..end].to_vec(), body: Vec::new() };
        let Some(len) = body_len(&head, &rest[end..], true) else { break };
        messages.push((at, Message { head: head.head, body: rest[end..end + len].to_vec() }));
        at += end + len;
    }
    (messages, at)
}

/// Reads one message from the program, framed by its own head; None if it closed or sent
/// no HTTP. `expected_body`: how long to read an unframed body for.
fn read_message(source: &mut dyn Source, got: &mut Vec<u8>, expected_body: usize) -> Option<Message> {
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if got.len() > HEAD_MAX {
            return None;
        }
        match source.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    };
    let head = Message { head: got[..head_end].to_vec(), body: Vec::new() };
    let unframed = head.header("content-length").is_none() && head.header("transfer-encoding").is_none();
    loop {
        let after = &got[head_end..];
        let len = if unframed && head.start_line().starts_with(b"HTTP/1.") {
            (after.len() >= expected_body).then_some(expected_body)
        } else {
            body_len(&head, after, false)
        };
        if let Some(len) = len {
            let body = after[..len].to_vec();
            let rest = after[len..].to_vec();
            got.truncate(head_end + len);
            source.unread(&rest);
            return Some(Message { head: head.head, body });
        }
        match source.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            // Closed: what came is the body.
            _ => return Some(Message { head: head.head, body: got[head_end..].to_vec() }),
        }
    }
}

/// The value with every noise pattern's matches blanked, for comparison.
fn blank(value: &[u8], noise: &Noise) -> Vec<u8> {
    let mut out = value.to_vec();
    for pattern in &noise.patterns {
        out = pattern.replace_all(&out, &b"\x00"[..]).into_owned();
    }
    out
}

/// A Set-Cookie value without its expiry attributes.
fn cookie_without_expiry(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let kept: Vec<&str> = text
        .split(';')
        .filter(|a| {
            let a = a.trim().to_ascii_lowercase();
            !a.starts_with("expires=") && !a.starts_with("max-age=")
        })
        .collect();
    kept.join(";").into_bytes()
}

/// Why header `name` (lower case) may have value `actual` where `expected` was recorded, if it
/// may.
pub fn noise_in(name: &str, expected: &[u8], actual: &[u8], noise: &Noise) -> Option<&'static str> {
    if NOISY_HEADERS.contains(&name) {
        Some("built-in noisy header")
    } else if noise.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        Some("noise rule (header)")
    } else if name == "set-cookie" && cookie_without_expiry(expected) == cookie_without_expiry(actual) {
        Some("cookie expiry")
    } else if !noise.patterns.is_empty() && blank(expected, noise) == blank(actual, noise) {
        Some("noise rule (pattern)")
    } else {
        None
    }
}

/// Whether two bodies differ only where noise patterns match.
pub fn noise_in_body(expected: &[u8], actual: &[u8], noise: &Noise) -> bool {
    !noise.patterns.is_empty() && blank(expected, noise) == blank(actual, noise)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// Compares the recorded send with what the program sends, message by message. `wildcards`:
/// spans of `recorded` redacted at record time (offset, length), which match anything.
pub fn compare(recorded: &[u8], wildcards: &[(usize, usize)], source: &mut dyn Source, noise: &Noise) -> Outcome {
    let (messages, raw_at) = recorded_messages(recorded);
    let raw_rest = &recorded[raw_at..];
    let mut outcome = Outcome::default();
    for (msg_at, expected) in &messages {
        let mut got = Vec::new();
        let Some(actual) = read_message(source, &mut got, expected.body.len()) else {
            let what = if got.is_empty() { "the program sent less" } else { "different bytes" };
            outcome.difference = Some((outcome.consumed, what, expected.head.clone(), got.clone()));
            outcome.consumed += got.len();
            return outcome;
        };
        let base = outcome.consumed;
        outcome.consumed += got.len();
        let differ =
            |what: &'static str, e: &[u8], a: &[u8], at: usize| Some((base + at, what, e.to_vec(), a.to_vec()));
        if expected.start_line() != actual.start_line() {
            outcome.difference = differ("different start line", expected.start_line(), actual.start_line(), 0);
            return outcome;
        }
        let (eh, ah) = (expected.headers(), actual.headers());
        for i in 0..eh.len().max(ah.len()) {
            let at = actual.head.len().min(expected.start_line().len());
            let (Some((en, ev, ev_at)), Some((an, av, _))) = (eh.get(i), ah.get(i)) else {
                let e = eh.get(i).map(|(n, v, _)| [n.as_bytes(), b": ", v].concat()).unwrap_or_default();
                let a = ah.get(i).map(|(n, v, _)| [n.as_bytes(), b": ", v].concat()).unwrap_or_default();
                outcome.difference = differ("different headers", &e, &a, at);
                return outcome;
            };
            if en != an {
                outcome.difference = differ("different header", en.as_bytes(), an.as_bytes(), at);
                return outcome;
            }
            // Content-Length follows the body, compared below; a redacted value matches anything.
            if ev == av || en == "content-length" || redacted(wildcards, msg_at + ev_at, msg_at + ev_at + ev.len()) {
                continue;
            }
            match noise_in(en, ev, av, noise) {
                Some(why) => outcome.ignored.push(Ignored {
                    field: en.clone(),
                    expected: text(ev),
                    actual: text(av),
                    why: why.into(),
                }),
                None => {
                    outcome.difference = differ("different header value", ev, av, at);
                    outcome.learn = Some(super::report::Learn::Header(en.clone()));
                    return outcome;
                }
            }
        }
        let body_at = msg_at + expected.head.len();
        let same_body = expected.body.len() == actual.body.len()
            && first_difference(&expected.body, &actual.body, wildcards, body_at).is_none();
        if !same_body {
            if noise_in_body(&expected.body, &actual.body, noise) {
                outcome.ignored.push(Ignored {
                    field: "body".into(),
                    expected: text(&expected.body),
                    actual: text(&actual.body),
                    why: "noise rule (pattern)".into(),
                });
            } else {
                let at = expected.body.iter().zip(&actual.body).position(|(e, a)| e != a);
                let at = at.unwrap_or(expected.body.len().min(actual.body.len()));
                outcome.difference =
                    differ("different body", &expected.body[at..], &actual.body[at..], actual.head.len() + at);
                outcome.learn =
                    Some(super::report::Learn::Text { expected: expected.body.clone(), actual: actual.body.clone() });
                return outcome;
            }
        }
    }
    // Bytes after the last message: compared as they are.
    if !raw_rest.is_empty() {
        let mut got = vec![0u8; raw_rest.len()];
        let mut filled = 0;
        while filled < got.len() {
            match source.read(&mut got[filled..]) {
                Ok(n) if n > 0 => filled += n,
                _ => break,
            }
        }
        if let Some(at) = first_difference(raw_rest, &got[..filled], wildcards, raw_at) {
            outcome.difference =
                Some((outcome.consumed + at, "different bytes", raw_rest[at..].to_vec(), got[at..filled].to_vec()));
        } else if filled < raw_rest.len() {
            outcome.difference =
                Some((outcome.consumed + filled, "the program sent less", raw_rest[filled..].to_vec(), Vec::new()));
        }
        outcome.consumed += filled;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use regex::bytes::Regex;

    use super::*;

    struct Bytes(Vec<u8>, usize);
    impl Source for Bytes {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len() - self.1).min(7); // small reads, like a socket
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
        fn unread(&mut self, bytes: &[u8]) {
            self.1 -= bytes.len();
        }
    }

    fn response(date: &str, etag: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nServer: x\r\nDate: {date}\r\nETag: \"{etag}\"\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn noisy_headers_may_differ_in_value_and_length_and_are_reported() {
        let recorded = [response("Fri, 04 Dec 2026 16:00:00 GMT", "a1", "hello"), response("x", "b", "again")].concat();
        let actual =
            [response("Sat, 05 Dec 2026 09:30:00 GMT", "a1-long", "hello"), response("y", "b", "again")].concat();
        let mut source = Bytes(actual.clone(), 0);
        let outcome = compare(&recorded, &[], &mut source, &Noise::default());
        assert!(outcome.difference.is_none(), "{:?}", outcome.difference);
        assert_eq!(outcome.consumed, actual.len());
        let fields: Vec<&str> = outcome.ignored.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["date", "etag", "date"]);
        // A different body is a difference; so is a header that is not noise.
        let mut source = Bytes(response("d", "a1", "HELLO"), 0);
        let outcome = compare(&response("d", "a1", "hello"), &[], &mut source, &Noise::default());
        assert_eq!(outcome.difference.as_ref().map(|d| d.1), Some("different body"));
        let changed = response("d", "a1", "hello").into_iter().collect::<Vec<u8>>();
        let changed = String::from_utf8(changed).unwrap().replace("Server: x", "Server: y").into_bytes();
        let mut source = Bytes(changed, 0);
        let outcome = compare(&response("d", "a1", "hello"), &[], &mut source, &Noise::default());
        assert_eq!(outcome.difference.as_ref().map(|d| d.1), Some("different header value"));
        // The rules file's header names and patterns.
        let noise = Noise { headers: vec!["Server".into()], patterns: vec![Regex::new(r"id=\d+").unwrap()] };
        let recorded = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 9\r\n\r\nid=1 ok\r\n".to_vec();
        let mut source = Bytes(b"HTTP/1.1 200 OK\r\nServer: y\r\nContent-Length: 10\r\n\r\nid=22 ok\r\n".to_vec(), 0);
        let outcome = compare(&recorded, &[], &mut source, &noise);
        assert!(outcome.difference.is_none(), "{:?}", outcome.difference);
        let whys: Vec<&str> = outcome.ignored.iter().map(|i| i.why.as_str()).collect();
        assert_eq!(whys, ["noise rule (header)", "noise rule (pattern)"]);
        // A span redacted at record time (a cookie, a token) matches anything.
        let recorded = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=XXXXXXXX\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let mut source = Bytes(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=a1b2c3d4\r\nContent-Length: 2\r\n\r\nok".to_vec(), 0);
        let outcome = compare(&recorded, &[(29, 8)], &mut source, &Noise::default());
        assert!(outcome.difference.is_none() && outcome.ignored.is_empty(), "{:?}", outcome.difference);
    }

    #[test]
    fn chunked_bodies_are_framed() {
        let recorded =
            b"HTTP/1.1 200 OK\r\nDate: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
        let actual =
            b"HTTP/1.1 200 OK\r\nDate: bbbb\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nNEXT".to_vec();
        let mut source = Bytes(actual, 0);
        let outcome = compare(&recorded, &[], &mut source, &Noise::default());
        assert!(outcome.difference.is_none(), "{:?}", outcome.difference);
        let mut rest = [0u8; 4];
        assert_eq!(source.read(&mut rest).unwrap(), 4, "the next bytes are left for the next step");
        assert_eq!(&rest, b"NEXT");
    }
}
