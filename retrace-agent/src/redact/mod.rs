//! Record-time redaction: secrets in payloads are replaced by placeholders of the same length
//! (so Content-Length and length-prefixed framing still hold), marked in the recording, and
//! derived from the secret with a per-recording key that is never written anywhere, so the same
//! secret gets the same placeholder throughout one recording and cannot be guessed back.
//! Also the capture allowlist (`policy`) and the record stage that applies both (`stage`).

pub mod anchors;
pub mod gate;
pub mod policy;
pub mod rules;
pub mod stage;
pub mod stream;

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

pub use rules::{CheckedRules, Rules, RulesError, RulesFile};
pub use stage::{RedactStage, RedactStats};

/// Compiled rules plus this recording's placeholder key.
#[derive(Clone)]
pub struct Redactor {
    pub rules: Rules,
    key: [u8; 32],
}

/// A match, at window positions (look-behind excluded).
#[derive(Debug, Clone)]
pub struct Match {
    /// Where the whole match starts (the secret may start later).
    pub match_start: usize,
    pub start: usize,
    pub end: usize,
    pub detector: usize,
    pub placeholder: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Found {
    pub spans: Vec<Match>,
    /// A match still open at the end of the window (it may grow): where it starts.
    pub open_from: Option<usize>,
}

impl Redactor {
    pub fn new(rules: Rules) -> Redactor {
        let mut key = [0u8; 32];
        crate::random_bytes(&mut key);
        Redactor { rules, key }
    }

    pub fn rule_name(&self, detector: usize) -> &str {
        &self.rules.detectors[detector].name
    }

    /// Finds secrets in `window[lookbehind..]` (`window[..lookbehind]` is context only). Unless
    /// `finished`, a match reaching the end of the window is reported as open, not as a span.
    /// Each detector searches on its own (three built-ins only around their anchors); overlaps
    /// go to the match that starts first (then to the detector listed first).
    pub fn find(&self, window: &[u8], lookbehind: usize, finished: bool) -> Found {
        // (match start, match end, secret start, secret end, detector)
        let mut candidates: Vec<anchors::Candidate> = Vec::new();
        let mut open: Option<usize> = None;
        let mut take = |found: anchors::Found, candidates: &mut Vec<anchors::Candidate>| match found {
            anchors::Found::None => {}
            anchors::Found::Match(c) => candidates.push(c),
            anchors::Found::Open(at) => open = Some(open.map_or(at, |o: usize| o.min(at))),
        };
        let active = self.rules.gate.active(&window[lookbehind..]);
        for (index, d) in self.rules.detectors.iter().enumerate() {
            if !active.runs(index) {
                continue;
            }
            match &d.matcher {
                rules::Matcher::Regex(re) => {
                    let mut locs = re.capture_locations();
                    let mut pos = lookbehind;
                    while pos <= window.len() {
                        let Some(m) = re.captures_read_at(&mut locs, window, pos) else { break };
                        let (ms, me) = (m.start(), m.end());
                        if me == window.len() && !finished {
                            take(anchors::Found::Open(ms), &mut candidates);
                            break;
                        }
                        let (s, e) = locs.get(d.group).unwrap_or((ms, me));
                        candidates.push((ms, me, s, e, index));
                        pos = if me > ms { me } else { me + 1 };
                    }
                }
                rules::Matcher::Anchored { regex, anchor } => {
                    let mut searcher = anchors::Searcher {
                        regex,
                        caps: regex.create_captures(),
                        window,
                        group: d.group,
                        detector: index,
                        finished,
                        resume: lookbehind,
                    };
                    let mut search = |start: usize, end: usize, anchored: bool| {
                        take(searcher.search(start, end, anchored), &mut candidates);
                    };
                    match anchor {
                        anchors::Anchor::At => anchors::email_regions(window, lookbehind, |s, e| search(s, e, false)),
                        anchors::Anchor::SchemeSeparator => {
                            anchors::url_regions(window, lookbehind, |s, e| search(s, e, false))
                        }
                        anchors::Anchor::JsonKey(keys) => {
                            anchors::json_key_starts(keys, window, lookbehind, |s| search(s, window.len(), true))
                        }
                    }
                }
                rules::Matcher::Card => {
                    let (cards, card_open) = rules::find_cards(window, lookbehind, finished);
                    candidates.extend(cards.into_iter().map(|(s, e)| (s, e, s, e, index)));
                    if let Some(o) = card_open {
                        take(anchors::Found::Open(o), &mut candidates);
                    }
                }
            }
        }
        candidates.sort_unstable_by_key(|c| (c.0, c.4));
        let mut found = Found { spans: Vec::new(), open_from: open.map(|o| o - lookbehind) };
        let mut taken_to = lookbehind;
        for (ms, me, s, e, index) in candidates {
            if ms < taken_to || e <= s {
                continue;
            }
            let d = &self.rules.detectors[index];
            let secret = &window[s..e];
            if !d.check.holds(&window[ms..me], secret) || self.rules.allow.iter().any(|a| a == secret) {
                continue;
            }
            taken_to = me;
            found.spans.push(Match {
                match_start: ms - lookbehind,
                start: s - lookbehind,
                end: e - lookbehind,
                detector: index,
                placeholder: self.placeholder(secret, d.keep),
            });
        }
        found
    }

    /// Same length and character classes as the secret (digits stay digits, letters letters,
    /// `keep` bytes as they are); content from a keyed hash of the secret.
    pub fn placeholder(&self, secret: &[u8], keep: &[u8]) -> Vec<u8> {
        let mut stream = Vec::with_capacity(secret.len() + 32);
        let mut block = 0u32;
        while stream.len() < secret.len() {
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
            mac.update(secret);
            mac.update(&block.to_le_bytes());
            stream.extend_from_slice(&mac.finalize().into_bytes());
            block += 1;
        }
        secret
            .iter()
            .zip(stream)
            .map(|(&b, h)| match b {
                _ if keep.contains(&b) => b,
                b'0'..=b'9' => b'0' + h % 10,
                b'A'..=b'Z' => b'A' + h % 26,
                _ => b'a' + h % 26,
            })
            .collect()
    }
}

/// Redacts a whole buffer at once (export of a single message, tests).
pub fn redact_all(redactor: &Redactor, bytes: &[u8]) -> (Vec<u8>, Vec<Match>) {
    let found = redactor.find(bytes, 0, true);
    let mut out = bytes.to_vec();
    for m in &found.spans {
        out[m.start..m.end].copy_from_slice(&m.placeholder);
    }
    (out, found.spans)
}

#[cfg(test)]
mod tests;
