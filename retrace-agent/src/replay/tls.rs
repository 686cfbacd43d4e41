//! TLS in replay: the replayer is the TLS server the program reached when recorded. A CA made
//! for this replay signs a leaf for the recorded server names (and the peer's address), valid
//! at the replayed time and now; the program trusts it only inside the sandbox (see
//! `trust_paths`). The handshake is terminated here and the recorded plaintext is played over
//! it, so replay compares what the program meant to send, not its ciphertext.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use openssl::{
    asn1::{Asn1Integer, Asn1Time},
    bn::BigNum,
    ec::{EcGroup, EcKey},
    error::ErrorStack,
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    ssl::{AlpnError, ErrorCode, SslAcceptor, SslConnector, SslMethod, SslStream, SslVerifyMode},
    x509::{
        extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName},
        X509Builder, X509Name, X509NameRef, X509,
    },
};

/// The per-replay certificate authority.
pub struct Authority {
    cert: X509,
    key: PKey<Private>,
    /// The validity both the CA and its leaves get: around the recorded time and now.
    not_before: i64,
    not_after: i64,
}

/// How long the program may take over its side of the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the plaintext side closed: how long the program may take to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Authority {
    /// A new CA, valid from a day before the earlier of `recorded_s` and now to a year after
    /// the later (Unix seconds).
    pub fn new(recorded_s: i64) -> Result<Authority, ErrorStack> {
        let now = crate::clock::now_wall_ns() as i64 / 1_000_000_000;
        let not_before = recorded_s.min(now) - 86_400;
        let not_after = recorded_s.max(now) + 365 * 86_400;
        let key = new_key()?;
        let mut cert = certificate("Retrace replay CA (this replay only)", None, &key, (not_before, not_after))?;
        cert.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        cert.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
        cert.sign(&key, MessageDigest::sha256())?;
        Ok(Authority { cert: cert.build(), key, not_before, not_after })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap_or_default()
    }

    /// The CA's subject hash, as OpenSSL names certificates in a hashed folder (`HASH.0`).
    pub fn subject_hash(&self) -> u32 {
        self.cert.subject_name_hash()
    }

    /// A server for `names` (DNS names; the peer's `ip` is always in) offering `alpn`.
    pub fn acceptor(&self, names: &[String], ip: IpAddr, alpn: &[String]) -> Result<SslAcceptor, ErrorStack> {
        let key = new_key()?;
        let common = names.first().cloned().unwrap_or_else(|| ip.to_string());
        let issuer = Some(self.cert.subject_name());
        let mut cert = certificate(&common, issuer, &key, (self.not_before, self.not_after))?;
        let mut san = SubjectAlternativeName::new();
        for name in names.iter().filter(|n| !n.is_empty()) {
            san.dns(name);
        }
        san.ip(&ip.to_string());
        let context = cert.x509v3_context(Some(&self.cert), None);
        let san = san.build(&context)?;
        cert.append_extension(san)?;
        cert.append_extension(BasicConstraints::new().build()?)?;
        cert.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build()?)?;
        cert.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        cert.sign(&self.key, MessageDigest::sha256())?;
        let cert = cert.build();

        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        acceptor.set_private_key(&key)?;
        acceptor.set_certificate(&cert)?;
        acceptor.add_extra_chain_cert(self.cert.clone())?;
        acceptor.check_private_key()?;
        if !alpn.is_empty() {
            let ours = alpn.to_vec();
            acceptor.set_alpn_select_callback(move |_, client| select_protocol(&ours, client).ok_or(AlpnError::NOACK));
        }
        Ok(acceptor.build())
    }
}

/// The first of the recorded protocols the client offers (its wire list), as a slice of it.
fn select_protocol<'a>(ours: &[String], client: &'a [u8]) -> Option<&'a [u8]> {
    for wanted in ours {
        let mut rest = client;
        while let Some((&len, tail)) = rest.split_first() {
            let (name, next) = tail.split_at_checked(len as usize)?;
            if name == wanted.as_bytes() {
                return Some(name);
            }
            rest = next;
        }
    }
    None
}

/// An X.509 v3 certificate for `common_name` and `key`, valid over `(not_before, not_after)`
/// (Unix seconds), issued by `issuer` (None: by itself); extensions and signature to add.
fn certificate(
    common_name: &str,
    issuer: Option<&X509NameRef>,
    key: &PKey<Private>,
    (not_before, not_after): (i64, i64),
) -> Result<X509Builder, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();
    let mut cert = X509::builder()?;
    cert.set_version(2)?;
    let serial = serial()?;
    cert.set_serial_number(&serial)?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(issuer.unwrap_or(&name))?;
    cert.set_pubkey(key)?;
    let (from, until) = (Asn1Time::from_unix(not_before as _)?, Asn1Time::from_unix(not_after as _)?);
    cert.set_not_before(&from)?;
    cert.set_not_after(&until)?;
    Ok(cert)
}

fn new_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn serial() -> Result<Asn1Integer, ErrorStack> {
    let mut bytes = [0u8; 16];
    crate::random_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    BigNum::from_slice(&bytes)?.to_asn1_integer()
}

/// Whether the program's first bytes on `sock` are a TLS ClientHello (peeked, not consumed);
/// waits up to `wait` for them.
pub fn client_hello_first(sock: &TcpStream, wait: Duration) -> bool {
    let _ = sock.set_read_timeout(Some(wait));
    let mut first = [0u8; 3];
    // SAFETY: recv into a buffer we own, of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), first.as_mut_ptr().cast(), first.len(), libc::MSG_PEEK) };
    n >= 3 && first[0] == 0x16 && first[1] == 3
}

/// Why a handshake failed, in the program's terms.
#[derive(Debug)]
pub struct Refused {
    /// The program refused the replay's certificate (pinning, compiled-in roots).
    pub untrusted: bool,
    pub detail: String,
}

/// Terminates the program's TLS on `sock` and returns a local socket that carries its
/// plaintext (a thread relays between the two until both ends close).
pub fn terminate(acceptor: &SslAcceptor, sock: TcpStream) -> Result<TcpStream, Refused> {
    let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let tls = acceptor.accept(sock).map_err(|e| {
        let detail = e.to_string();
        // The client's alerts when it does not accept the chain: unknown CA, bad or
        // unsupported certificate; or a plain close once it had the certificate (node, Go):
        // the handshake only starts after the program's ClientHello came in.
        let untrusted = [
            "unknown ca",
            "bad certificate",
            "certificate unknown",
            "unsupported certificate",
            "decrypt error",
            "access denied",
            "unexpected eof",
        ]
        .iter()
        .any(|alert| detail.to_ascii_lowercase().contains(alert));
        Refused { untrusted, detail }
    })?;
    let (ours, theirs) = local_pair().map_err(|e| Refused { untrusted: false, detail: e.to_string() })?;
    std::thread::spawn(move || relay(tls, ours));
    Ok(theirs)
}

/// The replayer as a TLS client of the program (a recorded server's inbound connection): any
/// certificate is taken (the program's own, as recorded), with the recorded server name and
/// protocol. Returns a local socket carrying the plaintext, like `terminate`.
pub fn connect(sock: TcpStream, sni: &str, alpn: &str) -> Result<TcpStream, String> {
    let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut connector = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    connector.set_verify(SslVerifyMode::NONE);
    if !alpn.is_empty() {
        let wire = [&[alpn.len() as u8][..], alpn.as_bytes()].concat();
        connector.set_alpn_protos(&wire).map_err(|e| e.to_string())?;
    }
    let mut config = connector.build().configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(!sni.is_empty());
    let name = if sni.is_empty() { "localhost" } else { sni };
    let tls = config.connect(name, sock).map_err(|e| e.to_string())?;
    let (ours, theirs) = local_pair().map_err(|e| e.to_string())?;
    std::thread::spawn(move || relay(tls, ours));
    Ok(theirs)
}

/// A connected pair of loopback TCP sockets.
fn local_pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    Ok((a, b))
}

/// Moves plaintext between the TLS session and the local socket, both non-blocking, until
/// both sides are done.
fn relay(mut tls: SslStream<TcpStream>, mut plain: TcpStream) {
    let _ = tls.get_ref().set_nonblocking(true);
    let _ = plain.set_nonblocking(true);
    let mut buf = vec![0u8; 1 << 16];
    let mut to_tls: Vec<u8> = Vec::new();
    let (mut tls_done, mut plain_done) = (false, false);
    let mut plain_closed_at = None;
    loop {
        let mut progress = false;
        if !tls_done {
            match tls.ssl_read(&mut buf) {
                Ok(0) => tls_done = true,
                Ok(n) => {
                    if write_all(&mut plain, &buf[..n]).is_err() {
                        break;
                    }
                    progress = true;
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(_) => tls_done = true,
            }
            if tls_done {
                let _ = plain.shutdown(std::net::Shutdown::Write);
            }
        }
        if to_tls.is_empty() && !plain_done {
            match plain.read(&mut buf) {
                Ok(0) => {
                    plain_done = true;
                    plain_closed_at = Some(Instant::now());
                    let _ = tls.shutdown();
                }
                Ok(n) => to_tls.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    plain_done = true;
                    plain_closed_at = Some(Instant::now());
                }
            }
        }
        if !to_tls.is_empty() {
            match tls.ssl_write(&to_tls) {
                Ok(n) => {
                    to_tls.drain(..n);
                    progress = true;
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
                Err(_) => {
                    to_tls.clear();
                    tls_done = true;
                }
            }
        }
        if tls_done && plain_done && to_tls.is_empty() {
            break;
        }
        if plain_closed_at.is_some_and(|t| t.elapsed() > CLOSE_TIMEOUT) {
            break;
        }
        if !progress {
            let mut fds = [
                libc::pollfd { fd: tls.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: plain.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            if !to_tls.is_empty() {
                fds[0].events |= libc::POLLOUT;
            }
            // SAFETY: poll on two fds we own, for at most 20 ms.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 20) };
        }
    }
    let _ = tls.get_ref().shutdown(std::net::Shutdown::Both);
}

fn write_all(sock: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match sock.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                let mut fd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: poll on one fd we own.
                unsafe { libc::poll(&mut fd, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where programs look for trusted CAs: bundle files (Debian, RHEL, Alpine, SUSE...).
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
    "/usr/lib/ssl/cert.pem",
];

/// Hashed certificate folders (OpenSSL's `SSL_CERT_DIR` layout).
pub const SYSTEM_CERT_DIRS: &[&str] = &["/etc/ssl/certs", "/usr/lib/ssl/certs"];

/// Whether a file holds PEM certificates (a CA file the program read when recorded).
pub fn holds_certificates(content: &[u8]) -> bool {
    memchr::memmem::find(content, b"-----BEGIN CERTIFICATE-----").is_some()
}
