//! The redactor against canaries of every detector, split at every point.

use bytes::Bytes;

use super::{redact_all, stream::StreamRedactor, Redactor, RulesFile};
use crate::model::proto;

/// (detector, text around it, the secret that must disappear)
pub const CANARIES: &[(&str, &str, &str)] = &[
    ("header", "GET / HTTP/1.1\r\nAuthorization: Bearer sk_live_CANARYhdr0123456789\r\n\r\n", "sk_live_CANARYhdr0123456789"),
    ("header", "Cookie: session=CANARYcookie123abc; theme=dark\r\n", "session=CANARYcookie123abc"),
    ("json_key", "{\"user\": \"bob\", \"password\": \"CANARY-pass-w0rd!\"}", "CANARY-pass-w0rd!"),
    ("url_password", "DATABASE_URL=postgres://admin:CANARYurlpass@db.internal:5432/app", "CANARYurlpass"),
    ("aws_access_key", "aws_access_key_id = AKIACANARY7AWSKEY234\n", "AKIACANARY7AWSKEY234"),
    ("jwt", "id=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQU5BUlkifQ.c2lnbmF0dXJlQ0FOQVJZand0 end", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDQU5BUlkifQ.c2lnbmF0dXJlQ0FOQVJZand0"),
    ("bearer", "use bearer CANARYbearerTok3n99 here", "CANARYbearerTok3n99"),
    ("key_value", "HOST=db\nDB_PASSWORD=CANARYkvPass99 # prod\n", "CANARYkvPass99"),
    ("key_value", "database:\n  password: \"CANARY kv quoted\"\n", "CANARY kv quoted"),
    ("key_value", "[db]\npassword = CANARYiniPass\n", "CANARYiniPass"),
    ("key_value", "users:\n  - api_key: CANARYyamlListKey\n", "CANARYyamlListKey"),
    ("key_value", "grant_type=refresh_token&client_secret=CANARYformSecret&x=1", "CANARYformSecret"),
    ("key_value", "GET /api?user=1&access_token=CANARYqueryTok HTTP/1.1\r\n", "CANARYqueryTok"),
    ("redis_auth", "*2\r\n$4\r\nAUTH\r\n$16\r\nCANARYredisPass1\r\n*1\r\n$4\r\nPING\r\n", "CANARYredisPass1"),
    ("redis_auth", "*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nauth\r\n$3\r\nbob\r\n$15\r\nCANARYhelloPass\r\n", "CANARYhelloPass"),
    ("pg_password", "p\0\0\0\x15CANARYpgPass1234\0", "CANARYpgPass1234"),
    ("line_password", "USER bob\r\nPASS CANARYftpPass!1\r\nSYST\r\n", "CANARYftpPass!1"),
    ("line_password", "EHLO x\r\nAUTH PLAIN AGJvYgBDQU5BUllzbXRwUGFzcw==\r\n", "AGJvYgBDQU5BUllzbXRwUGFzcw=="),
    ("line_password", "a1 LOGIN bob \"CANARY imap pw\"\r\n", "CANARY imap pw"),
    ("line_password", "AUTH PLAIN\r\nAGJvYgBDQU5BUllwbGFpbjI=\r\nLIST\r\n", "AGJvYgBDQU5BUllwbGFpbjI="),
    ("line_password", "AUTH LOGIN\r\nYm9i\r\nQ0FOQVJZbG9naW4=\r\nLIST\r\n", "Q0FOQVJZbG9naW4="),
    ("line_password", "AUTH LOGIN Ym9i\r\nQ0FOQVJZbG9naW4y\r\nLIST\r\n", "Q0FOQVJZbG9naW4y"),
    ("netrc", "machine api.example.com login bob password CANARYnetrcPw\n", "CANARYnetrcPw"),
    ("netrc", "machine h\n  login bob\n  password CANARYnetrc2\n", "CANARYnetrc2"),
    ("xml_element", "<server><id>r</id><password>CANARYxmlPass</password></server>", "CANARYxmlPass"),
    ("xml_element", "<ns1:apiKey>no</ns1:apiKey><wsse:Password>CANARYsoapPw</wsse:Password>", "CANARYsoapPw"),
    ("service_token", "GITHUB_TOKEN ghp_CANARYgithub0123456789abcdefghijklmn used", "ghp_CANARYgithub0123456789abcdefghijklmn"),
    ("service_token", "key sk_live_CANARYstripe0123456789abcd ok", "sk_live_CANARYstripe0123456789abcd"),
    ("service_token", "slack xoxb-CANARY-1234567890-abcdef ok", "xoxb-CANARY-1234567890-abcdef"),
    ("service_token", "g=AIzaCANARYgoogleKey0123456789abcdefghij;", "AIzaCANARYgoogleKey0123456789abcdefghij"),
    ("scram_proof", "p\0\0\0\x6cc=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=CANARYv8JJyurYHWz3AAA7H/Lk0RH0zPnXA=", "CANARYv8JJyurYHWz3AAA7H/Lk0RH0zPnXA="),
    ("private_key", "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEcanaryKEYbodyAAAA\nBBBBcanaryKEYbody2\n-----END RSA PRIVATE KEY-----\n", "MIIEcanaryKEYbodyAAAA"),
    ("card", "card: 4111 1111 1111 1111, exp 12/30", "4111 1111 1111 1111"),
    ("email", "contact canary.user@example.com today", "canary.user@example.com"),
];

fn redactor() -> Redactor {
    Redactor::new(RulesFile::default().compile().unwrap())
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn stream(redactor: &Redactor, chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = StreamRedactor::default();
    let mut out = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let data = proto::Data { offset, payload: Bytes::copy_from_slice(chunk), ..Default::default() };
        offset += chunk.len() as u64;
        s.push(redactor, data, &mut out);
    }
    s.flush(redactor, &mut out);
    let mut bytes = Vec::new();
    let mut next = 0;
    for d in &out {
        assert_eq!(d.offset, next, "records leave in order, whole");
        next += d.payload.len() as u64;
        for r in &d.redactions {
            assert!((r.offset + r.length) as usize <= d.payload.len());
        }
        bytes.extend_from_slice(&d.payload);
    }
    bytes
}

#[test]
fn every_detector_redacts_its_canary_keeping_length() {
    let r = redactor();
    for (detector, text, secret) in CANARIES {
        let (out, spans) = redact_all(&r, text.as_bytes());
        assert_eq!(out.len(), text.len());
        assert!(!find(&out, secret.as_bytes()), "{detector}: {secret} left in {:?}", String::from_utf8_lossy(&out));
        assert!(spans.iter().any(|m| r.rule_name(m.detector) == *detector), "{detector} matched {text:?}");
    }
}

#[test]
fn lookalikes_are_left_alone() {
    let r = redactor();
    for text in [
        "card 4111 1111 1111 1112 fails Luhn",
        "plain words, numbers 12345 and a@b",
        "Content-Length: 42\r\n",
        "PWD=/root\ntoken_type=bearer\npassword_file=/run/pw\n",
        "passwd:         files systemd\nshadow:         files\n",
        "secret = # disable PBM\npassword = ; none\n",
        "    token = next(it)\n    SEC_ERROR_RETRY_OLD_PASSWORD = (BASE + 102),\n",
        "export PASSWORD=$DB_PASS\nsecret: ${VAULT_SECRET}\nsecret:\n  name: x\n",
        "grant_type=refresh_token&scope=read",
        "    tokens = tokenize(line)\n",
        "*2\r\n$3\r\nGET\r\n$4\r\nauth\r\n",
        "p\0\0\0\x10not a pg message\0",
        "pass the salt\nAUTH PLAIN\r\n",
        "ghp_short sk_live_short xox-no AIzaShort <passwordHint>x</passwordHint>",
    ] {
        let (out, _) = redact_all(&r, text.as_bytes());
        assert_eq!(out, text.as_bytes());
    }
}

/// Card layouts are found; numbers that only look like cards to a digit counter (timestamps,
/// `/proc/PID/stat` counters, odd groupings) are not. Every number gets a valid Luhn check
/// digit, so only the layout tells them apart.
#[test]
fn cards_are_told_from_timestamps_and_counters() {
    fn with_check(body: &str) -> String {
        let digits: Vec<u32> = body.chars().filter_map(|c| c.to_digit(10)).collect();
        let sum: u32 =
            digits.iter().rev().enumerate().map(|(i, &d)| if i % 2 == 0 { (d * 2) % 10 + d * 2 / 10 } else { d }).sum();
        format!("{body}{}", (10 - sum % 10) % 10)
    }
    let r = redactor();
    for body in [
        "4111-1111-1111-111",
        "3782 822463 1000",
        "555555555555444",
        "6011 1111 1111 111",
        "2221 0000 0000 000",
        "4111 1111 1111 1111 11",
    ] {
        let card = with_check(body);
        let text = format!("paid with {card} today");
        let (out, _) = redact_all(&r, text.as_bytes());
        assert!(!find(&out, card.as_bytes()), "card {card} left in {:?}", String::from_utf8_lossy(&out));
    }
    for body in [
        "173200000000",
        "173200000000000000",
        "1354 (redis-server) R 1 1354 1354 3481",
        "stat: 2 1354 1354 3481",
        "3 14 1000 6 7 8 9 0 1",
        "4111 1111-1111 111",
        "41 11 11 11 11 11 11",
        "41111 1111 1111 111",
    ] {
        let text = format!("{} end", with_check(body));
        let (out, _) = redact_all(&r, text.as_bytes());
        assert_eq!(String::from_utf8_lossy(&out), text, "not a card");
    }
}

#[test]
fn same_secret_same_placeholder_within_a_recording() {
    let r = redactor();
    let text = b"{\"token\": \"CANARYsameTOKEN42\"}\r\nAuthorization: Bearer CANARYsameTOKEN42\r\n";
    let (out, spans) = redact_all(&r, text);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].placeholder, spans[1].placeholder);
    assert!(!find(&out, b"CANARYsameTOKEN42"));
    // Another recording (another key): another placeholder.
    assert_ne!(redactor().placeholder(b"CANARYsameTOKEN42", b""), spans[0].placeholder);
}

#[test]
fn a_secret_split_at_any_point_is_found() {
    let r = redactor();
    let all: String = CANARIES.iter().map(|c| c.1).collect::<Vec<_>>().join(" filler\n");
    let text = all.as_bytes();
    let (want, _) = redact_all(&r, text);
    for split in 0..=text.len() {
        let got = stream(&r, &[&text[..split], &text[split..]]);
        assert!(got == want, "split at {split}: {:?}", String::from_utf8_lossy(&got));
    }
    // Byte by byte, and in uneven pieces.
    let bytes: Vec<&[u8]> = text.chunks(1).collect();
    assert!(stream(&r, &bytes) == want, "one byte per read");
    for size in [2, 3, 7, 64, 300] {
        let pieces: Vec<&[u8]> = text.chunks(size).collect();
        assert!(stream(&r, &pieces) == want, "reads of {size} bytes");
    }
}

#[test]
fn long_streams_stay_bounded() {
    let r = redactor();
    let mut s = StreamRedactor::default();
    let mut out = Vec::new();
    let line = vec![b'x'; 4096];
    for i in 0..256u64 {
        let data = proto::Data { offset: i * 4096, payload: Bytes::copy_from_slice(&line), ..Default::default() };
        s.push(&r, data, &mut out);
        assert!(s.held_bytes() <= 4096 + 1024, "holds {} bytes", s.held_bytes());
    }
}

#[test]
fn custom_rules_and_allowlist() {
    let file: RulesFile = toml::from_str(
        r#"
        allow = ["ops@example.com"]
        disable = ["card"]
        headers = ["X-Session"]
        json_keys = ["ssn"]
        [[rule]]
        name = "customer"
        regex = 'cust=(C-[0-9]{6})'
        "#,
    )
    .unwrap();
    let r = Redactor::new(file.compile().unwrap());
    let text = b"X-Session: abcdef\r\n{\"ssn\": \"123-45-6789\"} cust=C-123456 ops@example.com 4111111111111111";
    let (out, _) = redact_all(&r, text);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("abcdef") && !out.contains("123-45-6789") && !out.contains("C-123456"), "{out}");
    assert!(out.contains("cust=") && out.contains("ops@example.com") && out.contains("4111111111111111"), "{out}");
    let bad: Result<RulesFile, _> = toml::from_str("unknown = 1");
    assert!(bad.is_err());
    let bad = RulesFile { disable: vec!["nope".into()], ..Default::default() };
    assert!(bad.compile().is_err());
}

/// `cargo test --release -p retrace-agent redaction_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn redaction_throughput() {
    let disable: Vec<String> =
        std::env::var("DISABLE").unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    let r = Redactor::new(RulesFile { disable, ..Default::default() }.compile().unwrap());
    let base64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec();
    // Random printable ASCII (redis-benchmark's values): an `@` every 95 bytes.
    let printable: Vec<u8> = (b'!'..=b'~').collect();
    let texts = [("base64-like", base64), ("printable", printable)].map(|(name, alphabet)| {
        let text: Vec<u8> = (0..64u64 << 20)
            .map(|i| {
                let pick = (i.wrapping_mul(0x9E3779B97F4A7C15) >> 32) as usize % alphabet.len();
                if i % 101 == 100 {
                    b'\n'
                } else {
                    alphabet[pick]
                }
            })
            .collect();
        (name, text)
    });
    // Every byte value, as the bench's pump writes them (`pump ... pattern`).
    let pattern = ("binary (the pump's pattern)", (0..64u64 << 20).map(|i| (i * 31 + 7) as u8).collect());
    // Compressed or encrypted payloads (TLS ciphertext is kept beside its plaintext).
    let random = ("random", (0..64u64 << 20).map(|i| (i.wrapping_mul(0x9E3779B97F4A7C15) >> 56) as u8).collect());
    for (name, text) in texts.into_iter().chain([pattern, random]) {
        let mut s = StreamRedactor::default();
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        for (i, chunk) in text.chunks(32 << 10).enumerate() {
            let offset = (i * (32 << 10)) as u64;
            s.push(&r, proto::Data { offset, payload: Bytes::copy_from_slice(chunk), ..Default::default() }, &mut out);
            out.clear();
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("redaction: {:.0} MB/s on {name} text", text.len() as f64 / secs / 1e6);
    }
}

/// Every detector but the card scanner finds exactly what its regex finds searching the whole
/// buffer on its own, on random bytes mixed with secrets and near misses: neither the anchors
/// (email, URL password, JSON key) nor the literal gate lose a match.
#[test]
fn each_detector_finds_what_its_regex_finds_searching_the_whole_buffer() {
    const PIECES: &[&str] = &[
        "bob@example.com",
        "a.b-c+d%e_f@sub.example.co.uk",
        "x@y",
        "@example.com",
        "me@host.c0m",
        "me@@x.org",
        "postgres://admin:pw@db:5432/app",
        "https://user:p:a:ss@h.io/x",
        "s3+x.y://u:p@b",
        "://u:p@h",
        "ftp://nouser@h",
        "\"password\":\"hunter2\"",
        "\"PassWord\" :\t\"x\\\"y\"",
        "\"token\"\r\n:\n\"abc\"",
        "\"tokens\":\"no\"",
        "\"api-key\": \"k\"",
        "{\"secret\":\"\"}",
        "\"credentials\": 12",
        "\"SessionId\":\"s1\"",
        "\npassword=x",
        "&token=abc&",
        "?api_key=",
        "  DB_PASSWORD: \"p w\"",
        "export secret='s'",
        "- token: $X",
        "sessionid = 'q'",
        "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n",
        "$4\r\nauth\r\n$1\r\nu\r\n$2\r\npw",
        "p\0\0\0\x0bsecret\0",
        "p\0\0\0\x09pw\0",
        "c=biws,r=abc,p=QUJD=",
        "<password>p</password>",
        "<x:token>t</x:token>",
        "<passwords>no</passwords>",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
        "npm_0123456789abcdefghijklmnopqrstuvwxyZ",
        "xoxp-1234567890",
        "rk_live_abcdefghijklmnopqrst",
        "login u password p",
        "login  u\n password\tq",
        "PASS x\r\n",
        "\npass  y\r\n",
        "AUTH PLAIN\r\n",
        "AUTH PLAIN\r\nx\r\n",
        "AUTH LOGIN\r\nu\r\np\r\n",
        "auth login u\r\np\r\n",
        "t LOGIN u p\r\n",
        "a LOGIN \"u\" \"p w\"\r\n",
        "Authorization: Bearer abcdefgh123",
        "COOKIE:a=b",
        "x-auth-token:\tt0k",
        "X-Session: 42",
        "proxy-authorization",
        "bearer  short",
        "bearer\tabcdefghij",
        "BEARER abcdefghijk==",
        "eyJhbGciOi.eyJzdWIiOi.sig_-x",
        "eyJonly.part",
        "AKIAABCDEFGHIJKLMNOP",
        "ASIA0123456789ABCDEF0",
        "akiaabcdefghijklmnop",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----abc",
        " ",
        "\n",
        "\"",
        ":",
        "@",
        "/",
    ];
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for name in super::rules::BUILT_IN.iter().filter(|n| **n != "card") {
        let file = RulesFile {
            disable: super::rules::BUILT_IN.iter().filter(|d| *d != name).map(|d| d.to_string()).collect(),
            headers: vec!["X-Session".into()],
            json_keys: vec!["sessionid".into()],
            ..Default::default()
        };
        let redactor = Redactor::new(file.compile().unwrap());
        let (pattern, _, check) = super::rules::built_in_pattern(name, &file);
        let whole = regex::bytes::Regex::new(&format!("(?-u:{pattern})")).unwrap();
        for _ in 0..3000 {
            let mut buf = Vec::new();
            while buf.len() < 400 {
                if next() % 3 == 0 {
                    buf.extend_from_slice(PIECES[next() as usize % PIECES.len()].as_bytes());
                } else {
                    // Mostly text-like bytes, some binary.
                    let b = next() as u8;
                    buf.push(if b < 200 { b' ' + b % 95 } else { b });
                }
            }
            let expected: Vec<(usize, usize)> = whole
                .captures_iter(&buf)
                .map(|c| (c.get(0).unwrap().range(), c.get(1).unwrap().range()))
                .filter(|(m, g)| g.end > g.start && check.holds(&buf[m.clone()], &buf[g.clone()]))
                .map(|(_, g)| (g.start, g.end))
                .collect();
            let found: Vec<(usize, usize)> =
                redactor.find(&buf, 0, true).spans.iter().map(|m| (m.start, m.end)).collect();
            assert_eq!(found, expected, "{name} on {:?}", String::from_utf8_lossy(&buf));
        }
    }
}

/// The card scanner's 64-byte skips (SSE2 and, where the CPU has it, AVX-512) find exactly what
/// its byte-by-byte scan finds, on digit-heavy random text, from any start, with the window
/// finished or not.
#[test]
fn the_card_scanner_skips_nothing_it_should_find() {
    use super::rules::Skip;
    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const BYTES: &[u8] = b"0123456789 -- a_.\n";
    for _ in 0..20000 {
        let len = (next() % 300) as usize;
        let digit_share = next() % 100;
        let hay: Vec<u8> = (0..len)
            .map(|_| {
                if next() % 100 < digit_share {
                    b'0' + (next() % 10) as u8
                } else {
                    BYTES[next() as usize % BYTES.len()]
                }
            })
            .collect();
        let from = if len == 0 { 0 } else { (next() as usize) % len };
        let finished = next() % 2 == 0;
        let byte_by_byte = super::rules::scan_cards(&hay, from, finished, Skip::None);
        for skip in [Skip::Sse2, Skip::best()] {
            assert_eq!(
                super::rules::scan_cards(&hay, from, finished, skip),
                byte_by_byte,
                "{skip:?} on {:?} from {from} finished {finished}",
                String::from_utf8_lossy(&hay)
            );
        }
    }
}

/// The record stage scans a stream once per batch: canaries split into records at every
/// size, with batches ending at varying points, come out whole, in order and redacted exactly
/// as the whole text is.
#[test]
fn a_batch_of_small_records_is_redacted_like_the_whole_text() {
    use super::RedactStage;
    use proto::record::Kind as R;
    let r = redactor();
    for (detector, text, _) in CANARIES {
        let (expected, _) = redact_all(&r, text.as_bytes());
        for size in 1..=text.len() {
            let mut stage = RedactStage::new(r.clone());
            let mut out = Vec::new();
            let info = proto::StreamInfo { id: 7, kind: proto::StreamKind::Tcp as i32, ..Default::default() };
            stage.push(proto::Record { kind: Some(R::Stream(info)) }, &mut out);
            for (i, chunk) in text.as_bytes().chunks(size).enumerate() {
                let data = proto::Data {
                    stream_id: 7,
                    direction: proto::Direction::Out as i32,
                    offset: (i * size) as u64,
                    payload: Bytes::copy_from_slice(chunk),
                    ..Default::default()
                };
                stage.push(proto::Record { kind: Some(R::Data(data)) }, &mut out);
                if i % (size % 5 + 2) == 0 {
                    stage.end_batch(&mut out);
                }
            }
            stage.finish(&mut out);
            let mut bytes = Vec::new();
            for record in &out {
                if let Some(R::Data(d)) = &record.kind {
                    assert_eq!(d.offset, bytes.len() as u64, "{detector}: records leave in order, whole");
                    bytes.extend_from_slice(&d.payload);
                }
            }
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&expected),
                "{detector} in records of {size} bytes"
            );
        }
    }
}

/// Large records are scanned in place past their first bytes: secrets anywhere in them (at
/// their start, at the seam where the in-place scan begins, split between two large records,
/// a long key block held open across records) come out as when the whole text is redacted.
#[test]
fn large_records_scanned_in_place_are_redacted_like_the_whole_text() {
    use super::stream::{IN_PLACE_MIN, SEAM};
    let r = redactor();
    let key_body: String = (0..60).map(|i| format!("MIIE{i:02}canaryLONGkeyBODY{}\n", "A".repeat(40))).collect();
    let long_key = format!("-----BEGIN RSA PRIVATE KEY-----\n{key_body}-----END RSA PRIVATE KEY-----\n");
    let secrets: Vec<String> =
        CANARIES.iter().map(|c| c.1.to_string()).chain([long_key.clone(), "card 4111111111111111 ok".into()]).collect();
    // Filler with and without newlines, secrets placed around the seam and record edges.
    let mut text = Vec::new();
    let mut marks = vec![0, SEAM - 40, SEAM - 1, SEAM + 7, IN_PLACE_MIN - 30, IN_PLACE_MIN + 3, 3 * IN_PLACE_MIN / 2];
    marks.extend((1..12).map(|i| i * IN_PLACE_MIN / 3 + i * 977));
    for (i, &mark) in marks.iter().enumerate() {
        while text.len() < mark {
            let filler: &[u8] = if i % 2 == 0 { b"filler line of log text 0123\n" } else { b"no-newline-filler-" };
            text.extend_from_slice(filler);
        }
        text.extend_from_slice(secrets[i % secrets.len()].as_bytes());
    }
    text.extend_from_slice(&b"tail\n".repeat(100));
    let (want, spans) = redact_all(&r, &text);
    assert!(spans.len() >= marks.len(), "the text holds its secrets");
    let n = text.len();
    let cuts: Vec<Vec<usize>> = vec![
        vec![n],
        (1..).map(|i| i * IN_PLACE_MIN).take_while(|&c| c < n).chain([n]).collect(),
        vec![10, 100, IN_PLACE_MIN + 10, 2 * IN_PLACE_MIN + SEAM, n - 5, n],
        (1..).map(|i| i * (IN_PLACE_MIN + 4099)).take_while(|&c| c < n).chain([n]).collect(),
    ];
    for (k, m) in marks.iter().enumerate().take(8) {
        // Each secret cut in two between two large records.
        let cut = m + secrets[k % secrets.len()].len() / 2;
        let got = stream(&r, &[&text[..cut], &text[cut..]]);
        assert!(got == want, "cut inside secret {k} at {cut}");
    }
    for c in cuts {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &end in &c {
            pieces.push(&text[at..end]);
            at = end;
        }
        let got = stream(&r, &pieces);
        assert!(got == want, "records cut at {c:?}");
    }
}
