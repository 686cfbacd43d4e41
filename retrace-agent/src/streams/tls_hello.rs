//! What a TLS handshake says in the clear: the ClientHello's server name and offered
//! application protocols, the ServerHello's version and chosen protocol (TLS 1.2; TLS 1.3
//! sends the choice encrypted).

/// What was learned from one socket's handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub sni: String,
    pub alpn_offered: Vec<String>,
    pub alpn: String,
    pub version: String,
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// Whether `bytes` start like a TLS handshake record (a library may read its 5-byte header
/// alone).
pub fn looks_like_handshake(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == HANDSHAKE && bytes[1] == 3 && bytes[2] <= 4
}

/// Learns from the first bytes one way of a connection (a ClientHello or a ServerHello); false
/// if they are not a TLS handshake.
pub fn learn(hello: &mut Hello, bytes: &[u8]) -> bool {
    if bytes.len() < 6 || !looks_like_handshake(bytes) {
        return false;
    }
    let record_len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
    let body = &bytes[5..bytes.len().min(5 + record_len)];
    let mut r = Reader(body);
    let Some(kind) = r.u8() else { return true };
    let _len = r.take(3);
    match kind {
        CLIENT_HELLO => client_hello(hello, r),
        SERVER_HELLO => server_hello(hello, r),
        _ => None,
    };
    true
}

fn client_hello(hello: &mut Hello, mut r: Reader) -> Option<()> {
    let legacy = r.u16()?;
    hello.version = version_name(legacy);
    r.take(32)?;
    let session = r.u8()? as usize;
    r.take(session)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    extensions(r, |kind, mut e| {
        match kind {
            EXT_SERVER_NAME => {
                let _list = e.u16()?;
                if e.u8()? == 0 {
                    let n = e.u16()? as usize;
                    hello.sni = String::from_utf8_lossy(e.take(n)?).into_owned();
                }
            }
            EXT_ALPN => hello.alpn_offered = protocols(e)?,
            _ => {}
        }
        Some(())
    })
}

fn server_hello(hello: &mut Hello, mut r: Reader) -> Option<()> {
    hello.version = version_name(r.u16()?);
    r.take(32)?;
    let session = r.u8()? as usize;
    r.take(session)?;
    r.take(3)?; // cipher suite, compression
    extensions(r, |kind, mut e| {
        match kind {
            EXT_SUPPORTED_VERSIONS => hello.version = version_name(e.u16()?),
            EXT_ALPN => hello.alpn = protocols(e)?.into_iter().next().unwrap_or_default(),
            _ => {}
        }
        Some(())
    })
}

fn extensions(mut r: Reader, mut each: impl FnMut(u16, Reader) -> Option<()>) -> Option<()> {
    let total = r.u16()? as usize;
    let mut r = Reader(r.take(total.min(r.0.len()))?);
    while let (Some(kind), Some(len)) = (r.u16(), r.u16()) {
        let data = r.take(len as usize)?;
        let _ = each(kind, Reader(data));
    }
    Some(())
}

fn protocols(mut r: Reader) -> Option<Vec<String>> {
    let total = r.u16()? as usize;
    let mut r = Reader(r.take(total)?);
    let mut out = Vec::new();
    while let Some(n) = r.u8() {
        out.push(String::from_utf8_lossy(r.take(n as usize)?).into_owned());
    }
    Some(out)
}

fn version_name(v: u16) -> String {
    match v {
        0x0304 => "TLSv1.3".into(),
        0x0303 => "TLSv1.2".into(),
        0x0302 => "TLSv1.1".into(),
        0x0301 => "TLSv1.0".into(),
        other => format!("0x{other:04x}"),
    }
}

/// The protocol the first plaintext bytes show, among those offered (TLS 1.3 hides the
/// server's choice). The first bytes either way: the client's, or a server's that speaks first.
pub fn infer_alpn(offered: &[String], first: &[u8]) -> Option<String> {
    let has = |p: &str| offered.iter().any(|o| o == p);
    if (first.starts_with(b"PRI * HTTP/2.0") || is_h2_settings(first)) && has("h2") {
        return Some("h2".into());
    }
    let http1 = first.windows(6).take(64).any(|w| w == b"HTTP/1");
    if http1 && has("http/1.1") {
        return Some("http/1.1".into());
    }
    (offered.len() == 1).then(|| offered[0].clone())
}

/// An HTTP/2 server's first frame: SETTINGS (type 4) on stream 0, no flags, whole settings.
fn is_h2_settings(first: &[u8]) -> bool {
    let Some(header) = first.get(..9) else { return false };
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    header[3] == 4 && header[4] == 0 && header[5..9] == [0; 4] && len.is_multiple_of(6)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as OpenSSL 3 sends it for `curl https://example.test` (trimmed to the
    /// extensions read here).
    fn client_hello_bytes() -> Vec<u8> {
        let mut ext = Vec::new();
        let name = b"example.test";
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
        let list: Vec<u8> = alpn.iter().flat_map(|p| [&[p.len() as u8][..], p].concat()).collect();
        ext.extend_from_slice(&[0, 16]);
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend_from_slice(&list);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_client_hello_gives_its_server_name_and_protocols() {
        let mut hello = Hello::default();
        assert!(learn(&mut hello, &client_hello_bytes()));
        assert_eq!(hello.sni, "example.test");
        assert_eq!(hello.alpn_offered, ["h2", "http/1.1"]);
        assert_eq!(infer_alpn(&hello.alpn_offered, b"GET / HTTP/1.1\r\n").as_deref(), Some("http/1.1"));
        assert_eq!(infer_alpn(&hello.alpn_offered, b"PRI * HTTP/2.0\r\n").as_deref(), Some("h2"));
    }

    #[test]
    fn truncated_or_foreign_bytes_are_no_handshake() {
        let full = client_hello_bytes();
        for n in 0..full.len() {
            let mut hello = Hello::default();
            let _ = learn(&mut hello, &full[..n]);
        }
        assert!(!learn(&mut Hello::default(), b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn the_protocol_shows_in_the_first_plaintext_either_way() {
        let offered = vec!["h2".to_string(), "http/1.1".to_string()];
        assert_eq!(infer_alpn(&offered, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").as_deref(), Some("h2"));
        // A server's SETTINGS frame: two settings (12 bytes).
        let settings = [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0];
        assert_eq!(infer_alpn(&offered, &settings).as_deref(), Some("h2"));
        assert_eq!(infer_alpn(&offered[1..], &settings), Some("http/1.1".into()), "the only one offered");
        assert_eq!(infer_alpn(&offered, b"HTTP/1.1 200 OK\r\n").as_deref(), Some("http/1.1"));
        assert_eq!(infer_alpn(&offered, b"\0\0\x05\x04\0\0\0\0\0hello"), None, "not whole settings");
    }
}
