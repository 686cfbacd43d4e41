//! `retrace replay --denoise`: replays an unchanged program more than once and keeps what
//! differed as noise, in `noise.toml` beside the recording (read by every later replay of
//! it). A header whose value differed becomes a noisy header; a span of a body or an output
//! line that differed becomes a pattern: the token that differed, as a character class, after
//! the text just before it (`id: [0-9]+`).

use std::{
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::report::{Learn, ReplayReport};
use crate::redact::rules::NoiseSection;

/// The learned noise, beside the recording.
pub fn path(recording: &Path) -> PathBuf {
    recording.join("noise.toml")
}

/// Adds to `section` what the report's differences say is noise; how many rules are new.
pub fn learn(report: &ReplayReport, section: &mut NoiseSection) -> usize {
    let differences = report
        .exchanges
        .iter()
        .filter_map(|e| e.difference.as_ref())
        .chain(report.outputs.iter().filter_map(|o| o.difference.as_ref()));
    let mut new = 0;
    for learn in differences.filter_map(|d| d.learn.as_ref()) {
        match learn {
            Learn::Header(name) => {
                if !section.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                    section.headers.push(name.clone());
                    new += 1;
                }
            }
            Learn::Text { expected, actual } => {
                if let Some(p) = pattern(expected, actual).filter(|p| !section.patterns.contains(p)) {
                    section.patterns.push(p);
                    new += 1;
                }
            }
        }
    }
    new
}

fn token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// A regex for the token where `expected` and `actual` first differ, anchored by up to 16
/// bytes of the text before it on its line (whole words); None where nothing anchors it or
/// no token differs (a pattern for any number anywhere would hide real changes).
pub fn pattern(expected: &[u8], actual: &[u8]) -> Option<String> {
    let at = expected.iter().zip(actual).position(|(e, a)| e != a).unwrap_or(expected.len().min(actual.len()));
    let start = expected[..at].iter().rposition(|&b| !token(b)).map_or(0, |p| p + 1);
    let end = |s: &[u8]| s[at..].iter().position(|&b| !token(b)).map_or(s.len(), |p| at + p);
    let (e, a) = (&expected[start..end(expected)], &actual[start..end(actual)]);
    if e.is_empty() || a.is_empty() {
        return None;
    }
    let all = |f: fn(&u8) -> bool| e.iter().all(f) && a.iter().all(f);
    let class = if all(u8::is_ascii_digit) {
        "[0-9]+"
    } else if all(u8::is_ascii_hexdigit) {
        "[0-9a-fA-F]+"
    } else {
        "[A-Za-z0-9_-]+"
    };
    let line = expected[..start].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut from = start.saturating_sub(16).max(line);
    // Whole words: a cut word is dropped.
    if from > line && token(expected[from - 1]) {
        from = expected[from..start].iter().position(|&b| !token(b)).map_or(start, |p| from + p);
    }
    let anchor = std::str::from_utf8(&expected[from..start]).ok()?;
    if anchor.trim().is_empty() {
        return None;
    }
    Some(format!("{}{class}", regex::escape(anchor)))
}

/// Writes the learned noise beside the recording.
pub fn save(recording: &Path, section: &NoiseSection) -> std::io::Result<PathBuf> {
    #[derive(serde::Serialize)]
    struct File<'a> {
        noise: &'a NoiseSection,
    }
    let text = toml::to_string(&File { noise: section }).map_err(std::io::Error::other)?;
    let path = path(recording);
    let header = "# Learned by `retrace replay --denoise`: what differed between replays of the unchanged program.\n";
    // Its anchors are recorded text: readable by the recording's owner only.
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut file, format!("{header}{text}").as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_differing_token_becomes_a_pattern_anchored_by_the_words_before_it() {
        let p = |e: &str, a: &str| pattern(e.as_bytes(), a.as_bytes());
        assert_eq!(
            p(";; opcode: QUERY, status: NOERROR, id: 46790", ";; opcode: QUERY, status: NOERROR, id: 59762")
                .as_deref(),
            Some(r": NOERROR, id: [0-9]+")
        );
        assert_eq!(p("token=9f3a done", "token=0c1d done").as_deref(), Some("token=[0-9a-fA-F]+"));
        assert_eq!(p("(1796407203) Received", "(1796407204) Received").as_deref(), Some(r"\([0-9]+"));
        assert_eq!(p("session abc-Z9 ok", "session q-77 ok").as_deref(), Some("session [A-Za-z0-9_-]+"));
        // Nothing before the token on its line: no pattern.
        assert_eq!(p("1234\n", "5678\n"), None);
        // The regex matches both texts where they differ.
        let re = regex::Regex::new(&p("x: a1 id=77 y", "x: a1 id=78 y").unwrap()).unwrap();
        assert!(re.is_match("x: a1 id=77 y") && re.is_match("x: a1 id=78 y"));
    }
}
