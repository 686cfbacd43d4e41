//! One pass over a window decides which detectors can match in it at all. Most built-ins need
//! a literal of their own (a header name, a JSON key, `://`, `eyJ`, `bearer`, `AKIA`,
//! `-----BEGIN`), so a single search for all of them replaces six searches, each with its own
//! set-up, on every record: small records (a redis command, an HTTP header block) paid more for
//! the set-ups than for the scanning. The window is folded to lowercase first so that a
//! case-sensitive SIMD searcher (Teddy) can look for every literal at once; an Aho-Corasick
//! automaton with case folding has no such prefilter and walks every byte.

use std::cell::RefCell;

use aho_corasick::{packed, AhoCorasick, AhoCorasickBuilder, MatchKind, Span};

/// Detectors past this index are never gated (they always run).
const GATED_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct Gate {
    /// Lowercase literals.
    literals: Vec<Vec<u8>>,
    /// The longest literal's length.
    longest: usize,
    finder: Option<Finder>,
    /// For each literal, the detectors (bits) that need it.
    needed_by: Vec<u64>,
    /// Detectors that run on every window (no literal of their own).
    always: u64,
    /// Every detector that is gated by some literal.
    gated: u64,
}

#[derive(Debug, Clone)]
enum Finder {
    /// Finds the leftmost literal start from a position; the gate restarts one byte later so
    /// that overlapping literals are all seen. Two builds of the same literals: Teddy's fat
    /// form (16 buckets, 16 bytes a step) has fewer false candidates on text, its slim form
    /// (8 buckets, 32 bytes a step) runs faster over binary bytes, where candidates are rare
    /// either way. Measured (`redaction_throughput`, 40 literals): fat 2.7 GB/s on base64-like
    /// text against 2.2 slim, 2.2 on printable text against 1.7; slim 3.8 on random bytes
    /// against 3.1. Each fold block picks one by a sample of its bytes.
    Teddy { text: packed::Searcher, binary: packed::Searcher },
    /// Where Teddy cannot be built (no SIMD, too many literals).
    Automaton(AhoCorasick),
}

/// Which detectors to run, by index.
#[derive(Debug, Clone, Copy)]
pub struct Active {
    bits: u64,
}

impl Active {
    pub fn runs(&self, detector: usize) -> bool {
        detector >= GATED_MAX || self.bits & (1 << detector) != 0
    }
}

/// The window is folded and searched this many bytes at a time, so the folded copy stays in
/// the L1 cache between being written and being searched (windows reach 256 KiB and more).
const FOLD_BLOCK: usize = 8 << 10;

thread_local! {
    /// The block folded to lowercase (kept to avoid an allocation per record).
    static FOLDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Gate {
    /// `triggers[i]`: literals, one of which (ASCII case ignored) occurs inside every match of
    /// detector `i`; `None` when it has none.
    pub fn new(triggers: &[Option<Vec<Vec<u8>>>]) -> Gate {
        let mut literals: Vec<Vec<u8>> = Vec::new();
        let mut needed_by: Vec<u64> = Vec::new();
        let mut always = 0u64;
        let mut gated = 0u64;
        for (index, trigger) in triggers.iter().enumerate().take(GATED_MAX) {
            let bit = 1u64 << index;
            match trigger {
                Some(lits) if !lits.is_empty() && lits.iter().all(|l| !l.is_empty()) => {
                    gated |= bit;
                    for lit in lits {
                        let lit = lit.to_ascii_lowercase();
                        match literals.iter().position(|l| *l == lit) {
                            Some(at) => needed_by[at] |= bit,
                            None => {
                                literals.push(lit);
                                needed_by.push(bit);
                            }
                        }
                    }
                }
                _ => always |= bit,
            }
        }
        let (literals, needed_by) = drop_containing(literals, needed_by);
        let finder = (!literals.is_empty()).then(|| {
            // `only_teddy_fat` is hidden in aho-corasick's docs (kept for its benchmarks): where
            // a build is refused (fat needs AVX2), the crate's own choice serves both.
            let build = |fat: Option<bool>| {
                let mut config = packed::Config::new();
                config.match_kind(packed::MatchKind::LeftmostFirst).only_teddy_fat(fat);
                config.builder().extend(&literals).build()
            };
            let teddy = build(None).map(|chosen| Finder::Teddy {
                text: build(Some(true)).unwrap_or_else(|| chosen.clone()),
                binary: build(Some(false)).unwrap_or(chosen),
            });
            match teddy {
                Some(teddy) => teddy,
                None => Finder::Automaton(
                    AhoCorasickBuilder::new()
                        .match_kind(MatchKind::Standard)
                        .build(&literals)
                        .expect("a few hundred short literals always build"),
                ),
            }
        });
        let longest = literals.iter().map(Vec::len).max().unwrap_or(0);
        Gate { literals, longest, finder, needed_by, always, gated }
    }

    /// The detectors that can match somewhere in `hay` (the part of a window where matches
    /// may lie).
    pub fn active(&self, hay: &[u8]) -> Active {
        let Some(finder) = &self.finder else { return Active { bits: self.always } };
        FOLDED.with_borrow_mut(|folded| {
            let want = hay.len().min(FOLD_BLOCK);
            if folded.len() < want {
                folded.resize(want, 0);
            }
            self.search(finder, hay, folded)
        })
    }

    fn search(&self, finder: &Finder, hay: &[u8], folded: &mut [u8]) -> Active {
        let mut bits = self.always;
        let all = |bits: u64| bits & self.gated == self.gated;
        // Blocks overlap by one byte less than the longest literal: a literal that does not fit
        // in one block starts inside the next one's overlap and fits there.
        let mut start = 0;
        while start < hay.len() {
            let end = (start + FOLD_BLOCK).min(hay.len());
            let block = &mut folded[..end - start];
            for (f, b) in block.iter_mut().zip(&hay[start..end]) {
                *f = b.to_ascii_lowercase();
            }
            match finder {
                Finder::Teddy { text, binary } => {
                    let teddy = if looks_binary(block) { binary } else { text };
                    let mut at = 0;
                    while let Some(m) = teddy.find_in(&block[..], Span::from(at..block.len())) {
                        let rest = &block[m.start()..];
                        for (lit, needed_by) in self.literals.iter().zip(&self.needed_by) {
                            if rest.starts_with(lit) {
                                bits |= needed_by;
                            }
                        }
                        if all(bits) {
                            return Active { bits };
                        }
                        at = m.start() + 1;
                    }
                }
                Finder::Automaton(ac) => {
                    for m in ac.find_overlapping_iter(&block[..]) {
                        bits |= self.needed_by[m.pattern().as_usize()];
                        if all(bits) {
                            return Active { bits };
                        }
                    }
                }
            }
            if end == hay.len() {
                break;
            }
            start = end - (self.longest - 1).min(end - start - 1);
        }
        Active { bits }
    }
}

/// Leaves out each literal that contains a shorter one (`x-auth-token` holds `token`): the
/// shorter is found wherever the longer is, so it takes over the longer's detectors. Fewer
/// literals keep Teddy (at most 64) with room for a rules file's names, and check faster.
fn drop_containing(literals: Vec<Vec<u8>>, mut needed_by: Vec<u64>) -> (Vec<Vec<u8>>, Vec<u64>) {
    let contains =
        |hay: &[u8], needle: &[u8]| hay.len() > needle.len() && hay.windows(needle.len()).any(|w| w == needle);
    let mut keep = vec![true; literals.len()];
    for long in 0..literals.len() {
        // The shortest literal inside it, so that a chain (a ⊃ b ⊃ c) ends at c.
        let inner = (0..literals.len())
            .filter(|&short| contains(&literals[long], &literals[short]))
            .min_by_key(|&short| literals[short].len());
        if let Some(short) = inner {
            needed_by[short] |= needed_by[long];
            keep[long] = false;
        }
    }
    literals.into_iter().zip(needed_by).zip(keep).filter(|(_, keep)| *keep).map(|(pair, _)| pair).unzip()
}

/// Whether a block's first bytes are mostly not ASCII (compressed, encrypted, media).
fn looks_binary(block: &[u8]) -> bool {
    let sample = &block[..block.len().min(256)];
    sample.iter().filter(|&&b| b >= 0x80).count() * 4 > sample.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detector_runs_only_where_one_of_its_literals_occurs() {
        let gate = Gate::new(&[
            Some(vec![b"Authorization".to_vec(), b"cookie".to_vec()]),
            None,
            Some(vec![b"token".to_vec()]),
            Some(vec![b"@".to_vec()]),
        ]);
        assert!(matches!(gate.finder, Some(Finder::Teddy { .. })));
        let a = gate.active(b"GET / HTTP/1.1\r\nCOOKIE: x\r\n");
        assert!(a.runs(0) && a.runs(1) && !a.runs(2) && !a.runs(3));
        // Overlapping literals are all seen.
        let a = gate.active(b"x-auth-token@");
        assert!(!a.runs(0) && a.runs(1) && a.runs(2) && a.runs(3));
        let a = gate.active(b"");
        assert!(!a.runs(0) && a.runs(1) && !a.runs(2) && !a.runs(3));
        // Far detectors always run.
        assert!(a.runs(GATED_MAX + 3));
    }

    /// Both Teddy builds find every literal: blocks of text and of binary bytes, with literals
    /// at every place of the block.
    #[test]
    fn text_and_binary_blocks_find_the_same_literals() {
        let literals: Vec<Vec<u8>> = (0..40).map(|i| format!("lit{i:02}x").into_bytes()).collect();
        let gate = Gate::new(&[Some(literals[..20].to_vec()), Some(literals[20..].to_vec())]);
        let Some(Finder::Teddy { .. }) = gate.finder else { return }; // no SIMD Teddy here
        for (kind, filler) in [("text", b'.'), ("binary", 0xe7u8)] {
            for at in (0..FOLD_BLOCK + 40).step_by(7) {
                let mut hay = vec![filler; FOLD_BLOCK + 64];
                hay[at..at + 6].copy_from_slice(b"LIT27X");
                assert_eq!(looks_binary(&hay), kind == "binary");
                let a = gate.active(&hay);
                assert!(!a.runs(0) && a.runs(1), "{kind}: literal at {at}");
            }
        }
    }

    #[test]
    fn a_literal_across_a_fold_block_end_is_found() {
        let gate = Gate::new(&[Some(vec![b"Authorization".to_vec()]), Some(vec![b"x".to_vec()])]);
        for finder in ["teddy", "automaton"] {
            let mut gate = gate.clone();
            if finder == "automaton" {
                gate.finder = Some(Finder::Automaton(AhoCorasick::new(&gate.literals).unwrap()));
            }
            for block_end in [FOLD_BLOCK, 2 * FOLD_BLOCK - (gate.longest - 1)] {
                for at in block_end - gate.longest..=block_end {
                    let mut hay = vec![b'.'; 3 * FOLD_BLOCK];
                    hay[at..at + 13].copy_from_slice(b"AUTHORIZATION");
                    let a = gate.active(&hay);
                    assert!(a.runs(0) && !a.runs(1), "{finder}: literal at {at}");
                }
            }
        }
    }

    /// The built-in detectors' literals fit Teddy (at most 64), with room for a rules file's
    /// names: past 64 the gate falls back to an automaton that walks every byte.
    #[test]
    fn the_built_in_literals_fit_teddy_with_room_to_spare() {
        let rules = crate::redact::RulesFile::default().compile().unwrap();
        let gate = &rules.gate;
        assert!(matches!(gate.finder, Some(Finder::Teddy { .. })));
        assert!(gate.literals.len() <= 40, "{} literals", gate.literals.len());
    }

    #[test]
    fn too_many_literals_for_teddy_fall_back_to_an_automaton() {
        let many: Vec<Vec<u8>> = (0..300).map(|i| format!("Key{i}x").into_bytes()).collect();
        let gate = Gate::new(&[Some(many), Some(vec![b"key1".to_vec()])]);
        assert!(matches!(gate.finder, Some(Finder::Automaton(_))));
        let a = gate.active(b"..KEY17X..");
        assert!(a.runs(0) && a.runs(1));
        let a = gate.active(b"..key2x..");
        assert!(a.runs(0) && !a.runs(1));
        let a = gate.active(b"..key..");
        assert!(!a.runs(0) && !a.runs(1));
    }
}
