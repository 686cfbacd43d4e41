//! Redaction and capture rules: built-in detectors, plus what a TOML file adds (header names,
//! JSON keys, custom regexes, allowlisted values, a capture allowlist), compiled into one regex.

use std::path::Path;

use regex::bytes::Regex;
use serde::Deserialize;

use super::{
    anchors::{Anchor, JsonKeys},
    gate::Gate,
    policy::CapturePolicy,
};

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file `{path}`: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("rules file `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("rule `{name}`: invalid regex: {message}")]
    Regex { name: String, message: String },
    #[error("unknown built-in detector `{name}` in `disable` (known: {known})")]
    UnknownDetector { name: String, known: String },
    #[error("capture allowlist: {0}")]
    Capture(String),
}

/// The rules file, as written.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Built-in detectors to switch off (by name).
    #[serde(default)]
    pub disable: Vec<String>,
    /// Values that are never redacted (exact bytes of the matched secret).
    #[serde(default)]
    pub allow: Vec<String>,
    /// More HTTP header names whose values are redacted.
    #[serde(default)]
    pub headers: Vec<String>,
    /// More JSON keys whose string values are redacted (also `key_value` names and XML elements).
    #[serde(default)]
    pub json_keys: Vec<String>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<CustomRule>,
    #[serde(default)]
    pub capture: Option<CaptureSection>,
    /// What replay may find different in HTTP messages (read by `retrace replay --rules`).
    #[serde(default)]
    pub noise: Option<NoiseSection>,
    /// TLS connections: whether their sockets keep the ciphertext.
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

/// `[tls]`: a TLS connection's plaintext is its own stream; `ciphertext = false` keeps its
/// socket's stream as metadata (`not_captured` gaps) from the first plaintext on.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default = "yes")]
    pub ciphertext: bool,
}

fn yes() -> bool {
    true
}

/// Replay's noise rules, compiled: what may differ besides the built-in noisy headers.
#[derive(Debug, Default, Clone)]
pub struct Noise {
    /// Header names (any case).
    pub headers: Vec<String>,
    /// Spans of header values and bodies matching these may differ.
    pub patterns: Vec<Regex>,
}

/// Replay's noise rules as written: HTTP header names whose values may differ, and regexes whose matches
/// in header values and bodies may differ.
#[derive(Debug, Deserialize, serde::Serialize, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoiseSection {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub patterns: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    pub name: String,
    /// Matched on bytes, ASCII classes. With a capture group, only group 1 is redacted.
    pub regex: String,
}

/// Streams whose payload is recorded; every other stream is kept as metadata only.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// Globs of file paths (and unix socket paths).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Socket peers or local addresses: `10.0.0.5:6379`, `10.0.0.0/8`, `:443`, `[::1]:80`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Pipes, terminals and other non-file, non-socket streams.
    #[serde(default)]
    pub pipes: bool,
    /// What getrandom returned (recorded without a `[capture]` section; it can be key material).
    #[serde(default)]
    pub random: bool,
}

const HEADER_NAMES: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-amz-security-token",
];

const JSON_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "api-key",
    "private_key",
    "credential",
    "credentials",
];

/// Names whose values are secrets in `name=value` and `name: value` text (config files, `.env`
/// files, form bodies, query strings), also with a prefix (`DB_PASSWORD`, `aws_secret_access_key`,
/// `spring.datasource.password`). Narrower than the JSON keys: a `pwd`, `passwd` or
/// `credentials` line is more often a working directory, an nsswitch.conf database or a fetch
/// option than a secret.
const KEY_VALUE_NAMES: &[&str] = &[
    "password",
    "secret",
    "client_secret",
    "secret_key",
    "secret_access_key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "api_key",
    "apikey",
    "api-key",
    "private_key",
];

/// Built-in detector names, in match priority order.
pub const BUILT_IN: &[&str] = &[
    "private_key",
    "header",
    "json_key",
    "url_password",
    "key_value",
    "redis_auth",
    "pg_password",
    "scram_proof",
    "line_password",
    "netrc",
    "xml_element",
    "jwt",
    "bearer",
    "aws_access_key",
    "service_token",
    "card",
    "email",
];

/// What must hold for a match beyond the regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    /// 13 to 19 digits with a valid Luhn checksum.
    Luhn,
    /// At least this many bytes (kept out of the regex: counted repetitions multiply the
    /// states of the combined automaton).
    MinLen(usize),
    /// A PostgreSQL message: the match is its type byte, then its length (4 bytes, big-endian,
    /// counting itself and the body), which must be the rest of the match exactly.
    PgMessage,
}

impl Check {
    /// Whether the match `whole` (with `secret` inside it) is one.
    pub fn holds(self, whole: &[u8], secret: &[u8]) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => luhn(secret),
            Check::MinLen(n) => secret.len() >= n,
            Check::PgMessage => {
                whole.len() >= 5
                    && u32::from_be_bytes([whole[1], whole[2], whole[3], whole[4]]) as usize == whole.len() - 1
            }
        }
    }
}

/// How a detector finds candidates.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// A regex of its own: each detector keeps its literal prefilter (header names, `"key"`,
    /// `eyJ`, `AKIA`, `@`...), which one combined regex loses, so most bytes are skipped at
    /// memchr speed.
    Regex(Regex),
    /// A built-in whose regex runs only where its anchor says (see `anchors`).
    Anchored { regex: regex_automata::meta::Regex, anchor: Anchor },
    /// Digit runs, scanned by hand: a regex for them runs a byte at a time.
    Card,
}

/// One detector, compiled.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    pub matcher: Matcher,
    /// Capture group holding the secret (0: the whole match).
    pub group: usize,
    /// Bytes kept as they are in the placeholder (structure, not secret).
    pub keep: &'static [u8],
    pub check: Check,
}

/// Everything the redactor needs, compiled.
#[derive(Debug, Clone)]
pub struct Rules {
    /// In priority order: of two matches starting at the same byte, the first detector wins.
    pub detectors: Vec<Detector>,
    pub allow: Vec<Vec<u8>>,
    pub capture: Option<CapturePolicy>,
    /// Sockets that carry TLS keep their ciphertext (`[tls] ciphertext`).
    pub tls_ciphertext: bool,
    /// Which detectors a window needs, from one search for all their literals.
    pub gate: Gate,
}

fn escape_names(names: impl IntoIterator<Item = String>) -> String {
    names.into_iter().map(|n| regex::escape(&n.to_ascii_lowercase())).collect::<Vec<_>>().join("|")
}

pub(crate) fn built_in_pattern(name: &str, file: &RulesFile) -> (String, &'static [u8], Check) {
    match name {
        // The key body up to its END line, or to the end of what has arrived so far (then the
        // match is still open and the stream holds it back until the END line comes).
        "private_key" => (
            r"-----BEGIN[A-Z ]* PRIVATE KEY-----((?s:.)*?)(?:-----END[A-Z ]* PRIVATE KEY-----|\z)".into(),
            b"\r\n",
            Check::None,
        ),
        "header" => {
            let names = escape_names(HEADER_NAMES.iter().map(|s| s.to_string()).chain(file.headers.iter().cloned()));
            (
                format!(r"(?i:\b(?:{names})[ \t]*:[ \t]*(?:(?:bearer|basic|token|digest|negotiate)[ \t]+)?)([^\r\n]+)"),
                b"",
                Check::None,
            )
        }
        "json_key" => {
            let keys = escape_names(json_keys(file));
            (format!(r#""(?i:{keys})"[ \t\r\n]*:[ \t\r\n]*"((?:[^"\\\r\n]|\\.)+)""#), b"", Check::None)
        }
        "url_password" => (r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]+:([^@/\s]+)@".into(), b"", Check::None),
        // `password=x`, `export DB_PASSWORD=x` and `token: x` at a line's start (config, .env,
        // INI, a form body after its blank line), `api_key: x` indented (YAML), `?token=x` and
        // `&client_secret=x` anywhere (query strings, forms). An indented `=` is code (`token =
        // next(it)`, `FOO_TOKEN = 22,`), not config. A quoted value is redacted inside its
        // quotes (kept, so the file still parses); a `$...` value is a reference and `#...` or
        // `;...` a comment, not a secret.
        "key_value" => {
            let key = format!(r"(?:[A-Za-z0-9]+[_.\-])*(?i:{})", escape_names(key_value_names(file)));
            let value = r#"("[^"\r\n]+"|'[^'\r\n]+'|[^\s"'&$#;][^\s&]*)"#;
            (
                format!(
                    r"(?:(?m:^)(?:export[ \t]+)?{key}[ \t]*[=:]|(?m:^)[ \t]*(?:-[ \t]+)?{key}:|[?&]{key}=)[ \t]*{value}"
                ),
                b"\"'",
                Check::None,
            )
        }
        // Redis AUTH (`AUTH password`, `AUTH user password`) and HELLO's AUTH, as RESP arrays:
        // the last argument.
        "redis_auth" => (
            r"(?i:\*2\r\n\$4\r\nauth|\$4\r\nauth\r\n\$[0-9]+\r\n[^\r\n]*)\r\n\$[0-9]+\r\n([^\r\n]+)".into(),
            b"",
            Check::None,
        ),
        // PostgreSQL's PasswordMessage for password and md5 authentication: `p`, its length,
        // the password (or md5 hash, which is as good as one against that server) and a NUL.
        "pg_password" => (r"p\x00\x00\x00[\x06-\xff]([^\x00]+)\x00".into(), b"", Check::PgMessage),
        // SCRAM's client proof (RFC 5802: PostgreSQL, MongoDB, Kafka, IMAP): with the salt and
        // nonces on the wire, it lets a password be guessed offline.
        "scram_proof" => (r"c=[A-Za-z0-9+/=]+,r=[\x21-\x2b\x2d-\x7e]+,p=([A-Za-z0-9+/]+=*)".into(), b"", Check::None),
        // Line protocols' logins, one command per CRLF line: FTP's and POP3's `PASS secret`;
        // SMTP's, POP3's and IMAP's `AUTH PLAIN base64` (user and password), on its line or the
        // next; `AUTH LOGIN`'s password line (after the user's line, or after the command if
        // that carried the user); IMAP's `tag LOGIN user password`.
        "line_password" => (
            concat!(
                r"(?m:^)(?i:pass[ \t]+|auth[ \t]+plain(?:[ \t]+|\r\n)|auth[ \t]+login[ \t]+[^ \t\r\n]+\r\n",
                r"|auth[ \t]+login\r\n[^\r\n]*\r\n|[a-z0-9.]+[ \t]+login[ \t]+[^ \t\r\n]+[ \t]+)([^\r\n]+)\r\n"
            )
            .into(),
            b"\"",
            Check::None,
        ),
        // .netrc (curl, git, ftp): `machine host login user password secret`, on one line or
        // several.
        "netrc" => (r"\blogin[ \t\r\n]+[^ \t\r\n]+[ \t\r\n]+password[ \t\r\n]+([^ \t\r\n]+)".into(), b"", Check::None),
        // `<password>x</password>` (Maven's settings.xml, SOAP), namespaced or not, for the
        // secret-named keys.
        "xml_element" => {
            (format!(r"<(?:[A-Za-z0-9_\-]+:)?(?i:{})>([^<]+)</", escape_names(key_value_names(file))), b"", Check::None)
        }
        "jwt" => (r"\b(eyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)".into(), b".", Check::None),
        "bearer" => (r"(?i:\bbearer[ \t]+)([A-Za-z0-9._~+/\-]+=*)".into(), b"", Check::MinLen(8)),
        "aws_access_key" => (r"\b((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})\b".into(), b"", Check::None),
        // Tokens that name their service by a prefix: GitHub (classic and fine-grained),
        // GitLab, Slack, Stripe (secret and restricted), Google API keys, npm, SendGrid.
        "service_token" => (
            concat!(
                r"\b(gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,100}|glpat-[A-Za-z0-9_\-]{20,}",
                r"|xox[abprs]-[A-Za-z0-9\-]{10,}|[sr]k_live_[A-Za-z0-9]{20,}|AIza[A-Za-z0-9_\-]{35}",
                r"|npm_[A-Za-z0-9]{36}|SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})\b"
            )
            .into(),
            b"",
            Check::None,
        ),
        // Found by `find_cards`; the pattern documents what it finds.
        "card" => (
            r"\b([2-6][0-9]{12,18}|[2-6][0-9]{3}(?: [0-9]{3,6}){2,4}|[2-6][0-9]{3}(?:-[0-9]{3,6}){2,4})\b".into(),
            b" -",
            Check::Luhn,
        ),
        "email" => (
            r"\b([A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z][A-Za-z]+)\b".into(),
            b"@.",
            Check::None,
        ),
        _ => unreachable!("listed in BUILT_IN"),
    }
}

/// A rules file and its compiled form, made once: whoever takes one (the recorder, the shared
/// probes, export) redacts with it without compiling it again, and a bad file fails before
/// anything is recorded or read.
#[derive(Debug, Clone)]
pub struct CheckedRules {
    file: RulesFile,
    compiled: Rules,
}

impl CheckedRules {
    pub fn file(&self) -> &RulesFile {
        &self.file
    }

    pub fn compiled(&self) -> &Rules {
        &self.compiled
    }
}

impl Default for CheckedRules {
    /// Every built-in detector, nothing else.
    fn default() -> CheckedRules {
        RulesFile::default().check().expect("the built-in rules compile")
    }
}

impl RulesFile {
    /// Compiles the rules (once): errors name what is wrong.
    pub fn check(self) -> Result<CheckedRules, RulesError> {
        let compiled = self.compile()?;
        Ok(CheckedRules { file: self, compiled })
    }

    pub fn read(path: &Path) -> Result<RulesFile, RulesError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read { path: p.clone(), source })?;
        toml::from_str(&text).map_err(|e| RulesError::Parse {
            path: p,
            message: e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "),
        })
    }

    /// The noise rules, compiled.
    pub fn noise(&self) -> Result<Noise, RulesError> {
        let section = self.noise.clone().unwrap_or_default();
        let patterns = section
            .patterns
            .iter()
            .map(|p| Regex::new(&format!("(?-u:{p})")).map_err(|e| regex_error("noise", e)))
            .collect::<Result<_, _>>()?;
        Ok(Noise { headers: section.headers, patterns })
    }

    /// Noise rules as written, compiled (the noise section of a file that holds only that).
    pub fn compile_noise(section: &NoiseSection) -> Result<Noise, RulesError> {
        RulesFile { noise: Some(section.clone()), ..Default::default() }.noise()
    }

    /// The names of the rules this file turns on (for the manifest).
    pub fn rule_names(&self) -> Vec<String> {
        BUILT_IN
            .iter()
            .filter(|n| !self.disable.iter().any(|d| d == *n))
            .map(|n| n.to_string())
            .chain(self.rules.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// This file with every built-in on and no allowlisted values: what `export` applies.
    pub fn strictest(&self) -> RulesFile {
        RulesFile { disable: Vec::new(), allow: Vec::new(), ..self.clone() }
    }

    pub fn compile(&self) -> Result<Rules, RulesError> {
        for d in &self.disable {
            if !BUILT_IN.contains(&d.as_str()) {
                return Err(RulesError::UnknownDetector { name: d.clone(), known: BUILT_IN.join(", ") });
            }
        }
        let mut detectors = Vec::new();
        let mut triggers = Vec::new();
        let compile =
            |name: &str, pattern: &str| Regex::new(&format!("(?-u:{pattern})")).map_err(|e| regex_error(name, e));
        for name in BUILT_IN {
            if self.disable.iter().any(|d| d == name) {
                continue;
            }
            let (pattern, keep, check) = built_in_pattern(name, self);
            let matcher = match (*name, anchor_of(name, self)) {
                ("card", _) => Matcher::Card,
                (_, Some(anchor)) => Matcher::Anchored { regex: compile_anchored(name, &pattern)?, anchor },
                (_, None) => Matcher::Regex(compile(name, &pattern)?),
            };
            detectors.push(Detector { name: name.to_string(), matcher, group: 1, keep, check });
            triggers.push(trigger_literals(name, self));
        }
        for rule in &self.rules {
            let regex = compile(&rule.name, &rule.regex)?;
            let group = usize::from(regex.captures_len() > 1);
            detectors.push(Detector {
                name: rule.name.clone(),
                matcher: Matcher::Regex(regex),
                group,
                keep: b"",
                check: Check::None,
            });
            triggers.push(None);
        }
        let capture = self.capture.as_ref().map(CapturePolicy::new).transpose().map_err(RulesError::Capture)?;
        Ok(Rules {
            detectors,
            allow: self.allow.iter().map(|a| a.as_bytes().to_vec()).collect(),
            capture,
            tls_ciphertext: self.tls.as_ref().is_none_or(|t| t.ciphertext),
            gate: Gate::new(&triggers),
        })
    }
}

/// The JSON keys whose values are redacted: built in, then the rules file's.
fn json_keys(file: &RulesFile) -> impl Iterator<Item = String> + '_ {
    JSON_KEYS.iter().map(|s| s.to_string()).chain(file.json_keys.iter().cloned())
}

/// The `name=value` names whose values are redacted: built in, then the rules file's JSON keys
/// (a key named secret in JSON is one in a config file or a form too).
fn key_value_names(file: &RulesFile) -> impl Iterator<Item = String> + '_ {
    KEY_VALUE_NAMES.iter().map(|s| s.to_string()).chain(file.json_keys.iter().cloned())
}

fn regex_error(name: &str, e: impl std::fmt::Display) -> RulesError {
    RulesError::Regex { name: name.to_owned(), message: one_line(&e.to_string()) }
}

/// Literals one of which (ASCII case ignored) lies inside every match of a built-in; `None`
/// for the card scanner (digits only) and email (its one-byte anchor, `@`, is found by memchr
/// faster than by any gate). Keep in step with `built_in_pattern`.
fn trigger_literals(name: &str, file: &RulesFile) -> Option<Vec<Vec<u8>>> {
    let bytes = |names: &[&str]| names.iter().map(|n| n.as_bytes().to_vec()).collect();
    match name {
        "private_key" => Some(bytes(&["-----BEGIN"])),
        "header" => Some(
            HEADER_NAMES
                .iter()
                .map(|s| s.to_string())
                .chain(file.headers.iter().cloned())
                .map(String::into_bytes)
                .collect(),
        ),
        "json_key" => Some(json_keys(file).map(String::into_bytes).collect()),
        "url_password" => Some(bytes(&["://"])),
        "key_value" => Some(key_value_names(file).map(String::into_bytes).collect()),
        "redis_auth" => Some(bytes(&["\nauth\r\n"])),
        "pg_password" => Some(bytes(&["p\0\0\0"])),
        "scram_proof" => Some(bytes(&[",p="])),
        "line_password" => Some(bytes(&["pass", "plain", "login"])),
        "netrc" => Some(bytes(&["password"])),
        "xml_element" => Some(key_value_names(file).map(String::into_bytes).collect()),
        "service_token" => Some(bytes(&[
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
            "glpat-",
            "xox",
            "k_live_",
            "aiza",
            "npm_",
            "sg.",
        ])),
        "jwt" => Some(bytes(&["eyJ"])),
        "bearer" => Some(bytes(&["bearer"])),
        "aws_access_key" => Some(bytes(&["AKIA", "ASIA", "ABIA", "ACCA"])),
        _ => None,
    }
}

/// How a built-in is anchored (`None`: its regex searches the whole window).
fn anchor_of(name: &str, file: &RulesFile) -> Option<Anchor> {
    match name {
        "json_key" => Some(Anchor::JsonKey(JsonKeys::new(json_keys(file)))),
        "url_password" => Some(Anchor::SchemeSeparator),
        "email" => Some(Anchor::At),
        _ => None,
    }
}

/// A built-in's regex on bytes (not UTF-8), searched at its anchors.
fn compile_anchored(name: &str, pattern: &str) -> Result<regex_automata::meta::Regex, RulesError> {
    regex_automata::meta::Regex::builder()
        .syntax(regex_automata::util::syntax::Config::new().utf8(false))
        .configure(regex_automata::meta::Regex::config().utf8_empty(false))
        .build(&format!("(?-u:{pattern})"))
        .map_err(|e| regex_error(name, e))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Luhn checksum over the digits of `bytes` (separators ignored).
pub fn luhn(bytes: &[u8]) -> bool {
    let digits: Vec<u32> = bytes.iter().filter(|b| b.is_ascii_digit()).map(|b| u32::from(b - b'0')).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Runs of 13 to 19 digits, optionally separated by single spaces or dashes, between word
/// boundaries: `(match start, match end)` from `from`, and where a run reaching the end of `hay`
/// starts (it may go on) unless `finished`.
pub fn find_cards(hay: &[u8], from: usize, finished: bool) -> (Vec<(usize, usize)>, Option<usize>) {
    scan_cards(hay, from, finished, Skip::best())
}

/// How the card scanner classifies 64 bytes at a time to skip them (the tests hold each way to
/// `Skip::None`, byte by byte only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Byte by byte (the tests' reference).
    #[cfg_attr(not(test), allow(dead_code))]
    None,
    /// Four 16-byte SSE2 lanes (every x86_64 CPU).
    Sse2,
    /// One 64-byte AVX-512BW compare to a mask: 13 GB/s against 9.3 for SSE2 on one core here
    /// (the scanner was 4.5% of the machine's CPU at 1 GB/s of capture).
    Avx512,
}

impl Skip {
    /// The fastest way this CPU has (checked once; the standard library caches the answer).
    pub(crate) fn best() -> Skip {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return Skip::Avx512;
        }
        Skip::Sse2
    }
}

pub(crate) fn scan_cards(hay: &[u8], from: usize, finished: bool, skip: Skip) -> (Vec<(usize, usize)>, Option<usize>) {
    match skip {
        #[cfg(target_arch = "x86_64")]
        Skip::Avx512 if std::arch::is_x86_feature_detected!("avx512bw") => {
            // SAFETY: the CPU has AVX-512BW (checked just above).
            unsafe { scan_cards_avx512(hay, from, finished) }
        }
        Skip::None => scan_cards_with(hay, from, finished, None::<fn(&[u8; 64]) -> u64>),
        _ => scan_cards_with(hay, from, finished, Some(card_byte_mask)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn scan_cards_avx512(hay: &[u8], from: usize, finished: bool) -> (Vec<(usize, usize)>, Option<usize>) {
    scan_cards_with(hay, from, finished, Some(|block: &[u8; 64]| card_byte_mask_avx512(block)))
}

/// The scan, inlined into each caller so the AVX-512 mask inlines into its loop.
#[inline(always)]
fn scan_cards_with(
    hay: &[u8],
    from: usize,
    finished: bool,
    block_mask: Option<impl Fn(&[u8; 64]) -> u64>,
) -> (Vec<(usize, usize)>, Option<usize>) {
    let mut found = Vec::new();
    let mut i = from;
    while i < hay.len() {
        // A card is at least 13 bytes of digits and separators in a row: 64 bytes at a time,
        // find where such a run starts; none in the first 52 positions skips them all.
        if let (Some(block), Some(block_mask)) = (hay.get(i..i + 64), &block_mask) {
            let starts = run13_starts(block_mask(block.try_into().expect("64 bytes")));
            if starts == 0 {
                i += 52;
                continue;
            }
            i += starts.trailing_zeros() as usize;
        }
        // Byte by byte near a candidate and at the end: if byte i+12 is neither, no card
        // starts in i..=i+12.
        if i + 12 < hay.len() && !card_byte(hay[i + 12]) {
            i += 13;
            continue;
        }
        // Digits inside a word (after a letter) never start a card.
        if !hay[i].is_ascii_digit() || (i > 0 && is_word(hay[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = start;
        let mut digits = 0;
        loop {
            if j < hay.len() && hay[j].is_ascii_digit() {
                digits += 1;
                j += 1;
            } else if j + 1 < hay.len() && (hay[j] == b' ' || hay[j] == b'-') && hay[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        // A separator at the very end may be followed by more digits.
        let at_end = j == hay.len() || (j + 1 == hay.len() && (hay[j] == b' ' || hay[j] == b'-'));
        if at_end && !finished {
            return (found, Some(start));
        }
        if (13..=19).contains(&digits) && (j == hay.len() || !is_word(hay[j])) && card_layout(&hay[start..j]) {
            found.push((start, j));
        }
        i = j.max(start + 1);
    }
    (found, None)
}

/// Whether a run of 13–19 digits is laid out like a payment card: it starts with a digit of the
/// banking and travel ranges (2–6: Mastercard, Amex/Diners/JCB, Visa, Mastercard, Discover/
/// UnionPay), and when it has separators they are all the same, between 3 to 5 groups: the
/// first of 4 digits, the rest of 3–6 (4-4-4-4, 4-6-5, 4-4-4-4-3). Millisecond and nanosecond
/// timestamps (1…) and space-separated counters such as `/proc/PID/stat` fields are not cards.
fn card_layout(run: &[u8]) -> bool {
    if !(b'2'..=b'6').contains(&run[0]) {
        return false;
    }
    let Some(&sep) = run.iter().find(|b| !b.is_ascii_digit()) else { return true };
    let mut groups = 0;
    for (k, group) in run.split(|&b| !b.is_ascii_digit()).enumerate() {
        let fits = if k == 0 { group.len() == 4 } else { (3..=6).contains(&group.len()) };
        if !fits {
            return false;
        }
        groups += 1;
    }
    (3..=5).contains(&groups) && run.iter().all(|&b| b.is_ascii_digit() || b == sep)
}

/// A digit or a separator: a byte that can be part of a card number.
fn card_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// Bit k set: `block[k]` is a digit, a space or a dash.
fn card_byte_mask(block: &[u8; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
            _mm_sub_epi8,
        };
        let mut mask = 0u64;
        for (k, lane) in block.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of x86_64; the load reads the 16 bytes of `lane`.
            let bits = unsafe {
                let v = _mm_loadu_si128(lane.as_ptr().cast::<__m128i>());
                let t = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
                let digit = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t);
                let space = _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8));
                let dash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'-' as i8));
                _mm_movemask_epi8(_mm_or_si128(digit, _mm_or_si128(space, dash))) as u16
            };
            mask |= u64::from(bits) << (16 * k);
        }
        mask
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        block.iter().enumerate().fold(0u64, |m, (k, &b)| m | (u64::from(card_byte(b)) << k))
    }
}

/// `card_byte_mask` in one 64-byte compare.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn card_byte_mask_avx512(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        _mm512_cmpeq_epi8_mask, _mm512_cmple_epu8_mask, _mm512_loadu_si512, _mm512_set1_epi8, _mm512_sub_epi8,
    };
    // SAFETY: the load reads the 64 bytes of `block`; the rest works on registers.
    unsafe {
        let v = _mm512_loadu_si512(block.as_ptr().cast());
        let digit = _mm512_cmple_epu8_mask(_mm512_sub_epi8(v, _mm512_set1_epi8(b'0' as i8)), _mm512_set1_epi8(9));
        digit
            | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b' ' as i8))
            | _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'-' as i8))
    }
}

/// Bit k set: bits k..k+13 of `mask` are all set (a run of 13 starts at k).
fn run13_starts(mask: u64) -> u64 {
    let mut r = mask & (mask >> 1); // runs of 2
    r &= r >> 2; // 4
    r &= r >> 4; // 8
    r & (r >> 5) // 13
}
