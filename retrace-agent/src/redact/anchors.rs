//! Where three built-in detectors look. Their regexes, searching a whole window on their own,
//! run a regex engine at every `@` (email), every `:` (URL userinfo) or every `"` (JSON keys):
//! up to 1.8 s/GB on random bytes and 0.8 s/GB on JSON. Here a memchr finds those bytes, a
//! check of the bytes around each one drops almost all of them, and the regex runs only on the
//! small region that can hold a match. The other built-ins keep the regex crate's own literal
//! prefilters (header names, `eyJ`, `AKIA`...), which already skip most bytes.

use regex_automata::{meta::Regex, util::captures::Captures, Anchored, Input};

/// How an anchored built-in finds its candidates.
#[derive(Debug, Clone)]
pub enum Anchor {
    /// An email: an `@` with a local-part byte before it and a domain byte after it.
    At,
    /// A URL with userinfo: `://` after a scheme.
    SchemeSeparator,
    /// A quoted JSON key from the list, found from the `:` after it.
    JsonKey(JsonKeys),
}

/// Longest region searched after a `://` (a userinfo longer than this is not found).
const URL_REGION: usize = 4096;
/// Whitespace allowed between a key's closing quote and its colon.
const JSON_GAP: usize = 64;

/// The JSON keys, for a quick check of the bytes before a `:`.
#[derive(Debug, Clone)]
pub struct JsonKeys {
    /// Lowercase keys.
    keys: Vec<Vec<u8>>,
    /// For each first byte, a bit per key length (63: longer) some key has: most keys in a
    /// document are dropped by this lookup.
    shapes: Box<[u64; 256]>,
    longest: usize,
}

impl JsonKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> JsonKeys {
        let keys: Vec<Vec<u8>> =
            keys.into_iter().map(|k| k.to_ascii_lowercase().into_bytes()).filter(|k| !k.is_empty()).collect();
        let mut shapes = Box::new([0u64; 256]);
        for k in &keys {
            shapes[usize::from(k[0])] |= 1 << k.len().min(63);
        }
        let longest = keys.iter().map(Vec::len).max().unwrap_or(0);
        JsonKeys { keys, shapes, longest }
    }

    /// Where the opening quote of a listed key ending just before the `:` at `colon` is.
    fn key_before(&self, window: &[u8], from: usize, colon: usize) -> Option<usize> {
        let mut close = colon;
        let gap_end = colon.saturating_sub(JSON_GAP).max(from);
        while close > gap_end && matches!(window[close - 1], b' ' | b'\t' | b'\r' | b'\n') {
            close -= 1;
        }
        if close <= from || window[close - 1] != b'"' {
            return None;
        }
        let close = close - 1;
        let earliest = close.saturating_sub(self.longest + 1).max(from);
        let open = (earliest..close).rev().find(|&i| window[i] == b'"')?;
        let key = &window[open + 1..close];
        if key.is_empty() || self.shapes[usize::from(key[0].to_ascii_lowercase())] & (1 << key.len().min(63)) == 0 {
            return None;
        }
        self.keys.iter().any(|k| k.eq_ignore_ascii_case(key)).then_some(open)
    }
}

/// A candidate: (match start, match end, secret start, secret end, detector).
pub type Candidate = (usize, usize, usize, usize, usize);

/// What one regex search at a candidate gave.
pub enum Found {
    None,
    Match(Candidate),
    /// A match reaching the end of a window that may still grow, starting here.
    Open(usize),
}

/// One detector's regex over one window.
pub struct Searcher<'a> {
    pub regex: &'a Regex,
    pub caps: Captures,
    pub window: &'a [u8],
    /// Capture group holding the secret.
    pub group: usize,
    pub detector: usize,
    /// No more bytes come after the window.
    pub finished: bool,
    /// Where the last match ended: the next one starts there at the earliest, as when one
    /// regex walks the whole window (a match may then start inside a run of local-part bytes).
    pub resume: usize,
}

impl Searcher<'_> {
    /// Runs the regex on `window[start..end]` (anchored at `start` or not), with the bytes
    /// around the range as context for `\b`.
    pub fn search(&mut self, start: usize, end: usize, anchored: bool) -> Found {
        if (anchored && start < self.resume) || self.resume >= end {
            return Found::None;
        }
        let start = start.max(self.resume);
        let input =
            Input::new(self.window).range(start..end).anchored(if anchored { Anchored::Yes } else { Anchored::No });
        self.regex.search_captures(&input, &mut self.caps);
        let Some(m) = self.caps.get_match() else { return Found::None };
        if m.end() == self.window.len() && !self.finished {
            return Found::Open(m.start());
        }
        let (s, e) = self.caps.get_group(self.group).map_or((m.start(), m.end()), |g| (g.start, g.end));
        self.resume = if m.end() > m.start() { m.end() } else { m.end() + 1 };
        Found::Match((m.start(), m.end(), s, e, self.detector))
    }
}

fn email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn email_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn url_scheme(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-')
}

/// Regions around each `@` that can hold an email: from the start of the local-part run to one
/// byte past the domain run.
pub fn email_regions(window: &[u8], from: usize, mut each: impl FnMut(usize, usize)) {
    for at in memchr::memchr_iter(b'@', &window[from..]).map(|i| i + from) {
        if at == from || at + 1 >= window.len() {
            // Nothing before it in this window, or the domain has not arrived: the hold-back
            // keeps the tail, so the `@` is seen again with more around it.
            if at + 1 >= window.len() {
                break;
            }
            continue;
        }
        if !email_local(window[at - 1]) || !(window[at + 1].is_ascii_alphanumeric() || window[at + 1] == b'-') {
            continue;
        }
        let mut end = at + 1;
        while end < window.len() && email_domain(window[end]) {
            end += 1;
        }
        // A domain ends in a dot and two letters; unless the run may still grow, without
        // them there is no email here (most `@` in binary or random text stop at this check,
        // so it comes before the walk back over the local part).
        let tld = |w: &[u8]| w[0] == b'.' && w[1].is_ascii_alphabetic() && w[2].is_ascii_alphabetic();
        if end < window.len() && !window[at + 1..end].windows(3).any(tld) {
            continue;
        }
        let mut start = at - 1;
        while start > from && email_local(window[start - 1]) {
            start -= 1;
        }
        each(start, (end + 1).min(window.len()));
    }
}

/// Opening quotes of listed JSON keys followed by a `:` (the match starts there).
pub fn json_key_starts(keys: &JsonKeys, window: &[u8], from: usize, mut each: impl FnMut(usize)) {
    for colon in memchr::memchr_iter(b':', &window[from..]).map(|i| i + from) {
        if let Some(open) = keys.key_before(window, from, colon) {
            each(open);
        }
    }
}

/// Regions around each `://` that can hold a URL with userinfo: from the start of the scheme
/// run to the first `/` or whitespace after it (at most `URL_REGION` bytes on).
pub fn url_regions(window: &[u8], from: usize, mut each: impl FnMut(usize, usize)) {
    for sep in memchr::memmem::find_iter(&window[from..], b"://").map(|i| i + from) {
        if sep == from || !url_scheme(window[sep - 1]) {
            continue;
        }
        let mut start = sep - 1;
        while start > from && url_scheme(window[start - 1]) {
            start -= 1;
        }
        let limit = (sep + 3 + URL_REGION).min(window.len());
        let end = window[sep + 3..limit]
            .iter()
            .position(|&b| b == b'/' || b.is_ascii_whitespace())
            .map_or(limit, |i| sep + 3 + i + 1);
        each(start, end);
    }
}
