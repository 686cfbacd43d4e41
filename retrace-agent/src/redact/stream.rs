//! Streaming redaction of one direction of one stream. Records are held back only while their
//! last bytes could still be part of a secret that has not fully arrived: the trailing line
//! (at least `HOLD_MIN`, at most `HOLD_MAX` bytes) and any match still open at the end (up to
//! `OPEN_MAX`). So a secret split across reads or ring-buffer chunks is found whole, memory per
//! stream stays bounded, and records keep their boundaries. A large record is not copied into
//! the window whole: only its first `SEAM` bytes join the held-back tail there, the rest is
//! scanned where it lies (as if it had arrived as a second read), and only what is held back
//! after it is copied.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Redactor;
use crate::model::proto;

/// Always held back from the end of what has arrived (multi-line constructs).
const HOLD_MIN: usize = 256;
/// Held back at most, when no match is open: the trailing line up to this.
const HOLD_MAX: usize = 1024;
/// Longest open match held back (a private key block, a long cookie).
const OPEN_MAX: usize = 16 << 10;
/// Records appended without a scan are scanned once the window holds this much.
const SCAN_AT: usize = 256 << 10;
/// Of a large record, the bytes copied into the window behind the held-back tail: more than
/// a scan holds back when no match is open, so the scan of the window moves past the record's
/// start and the rest of the record can be scanned in place. (With a match open there, the
/// rest is copied as for a small record.)
pub(super) const SEAM: usize = HOLD_MAX + 1024 + 1;
/// Records from this size are scanned in place (the window copy was ~6% of the agent's CPU
/// on 1 MiB writes, which reach the agent as 32 KiB records).
pub(super) const IN_PLACE_MIN: usize = 8 << 10;

/// A redacted span, at absolute stream positions.
#[derive(Debug, Clone)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub detector: usize,
    pub placeholder: Vec<u8>,
}

#[derive(Default)]
pub struct StreamRedactor {
    /// Bytes from `window_start` to `end`, after one byte of look-behind if `has_lookbehind`.
    window: Vec<u8>,
    has_lookbehind: bool,
    window_start: u64,
    end: u64,
    /// Records not yet released, in order.
    pending: VecDeque<proto::Data>,
    /// Final spans not yet applied to every record they cover.
    spans: VecDeque<Span>,
    /// Records were appended since the last scan.
    unscanned: bool,
}

impl StreamRedactor {
    pub fn held_bytes(&self) -> usize {
        self.pending.iter().map(|d| d.payload.len()).sum()
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn owes_scan(&self) -> bool {
        self.unscanned
    }

    /// Takes one record; appends the records that are final now to `out`.
    pub fn push(&mut self, redactor: &Redactor, data: proto::Data, out: &mut Vec<proto::Data>) {
        self.append(redactor, data, out);
        self.scan_appended(redactor, out);
    }

    /// Takes one record without scanning it yet (unless the window is large): a stream that
    /// gets many small records in one batch is scanned once, not once per record (each scan
    /// also goes over the held-back tail again). Returns whether a scan is owed.
    pub fn append(&mut self, redactor: &Redactor, data: proto::Data, out: &mut Vec<proto::Data>) -> bool {
        if data.offset != self.end || (self.pending.is_empty() && self.window.is_empty()) {
            // Discontinuity (a gap) or a fresh start: what came before is final.
            self.flush(redactor, out);
            self.window.clear();
            self.has_lookbehind = false;
            self.window_start = data.offset;
            self.end = data.offset;
        }
        if data.payload.len() >= IN_PLACE_MIN {
            let payload = data.payload.clone();
            self.pending.push_back(data);
            if self.scan_large(redactor, &payload) {
                self.release(redactor, out, self.window_start);
                return false;
            }
        } else {
            self.window.extend_from_slice(&data.payload);
            self.end += data.payload.len() as u64;
            self.pending.push_back(data);
            self.unscanned = true;
        }
        if self.window.len() >= SCAN_AT {
            self.scan_appended(redactor, out);
        }
        self.unscanned
    }

    /// Scans a large record that starts at `self.end`: its first `SEAM` bytes together with
    /// what the window holds, then the rest in place, and keeps what is held back after it.
    /// False when a match open at the seam kept the rest in the window, unscanned.
    fn scan_large(&mut self, redactor: &Redactor, payload: &[u8]) -> bool {
        let record_start = self.end;
        self.window.extend_from_slice(&payload[..SEAM]);
        self.end += payload.len() as u64;
        self.scan(redactor, false);
        // Unless a match is open, the scan held back less than `SEAM`, so it moved past the
        // record's start, and the byte before the new window start (the look-behind) is in
        // the record too.
        let Some(at) = self.window_start.checked_sub(record_start + 1).map(|at| at as usize) else {
            // A match is open from before the record's seam: the rest joins the window.
            self.window.extend_from_slice(&payload[SEAM..]);
            self.unscanned = true;
            return false;
        };
        let rest = &payload[at..];
        let next = self.scan_slice(redactor, rest, 1, false);
        self.window.clear();
        self.window.extend_from_slice(&rest[next..]);
        self.has_lookbehind = true;
        self.window_start += next as u64;
        true
    }

    /// Scans what was appended since the last scan; appends the records final now to `out`.
    pub fn scan_appended(&mut self, redactor: &Redactor, out: &mut Vec<proto::Data>) {
        if self.unscanned {
            self.scan(redactor, false);
            self.release(redactor, out, self.window_start);
        }
    }

    /// Everything held is final (idle stream, gap, close, end of recording).
    pub fn flush(&mut self, redactor: &Redactor, out: &mut Vec<proto::Data>) {
        if self.pending.is_empty() {
            return;
        }
        self.scan(redactor, true);
        self.release(redactor, out, self.end);
    }

    /// Finds the spans that are final in the window, records them, and moves the window to
    /// where the next scan must start.
    fn scan(&mut self, redactor: &Redactor, finished: bool) {
        self.unscanned = false;
        let lb = usize::from(self.has_lookbehind);
        let window = std::mem::take(&mut self.window);
        let next = self.scan_slice(redactor, &window, lb, finished);
        self.window = window;
        if next > 0 {
            let keep_from = lb + next - 1;
            self.window.drain(..keep_from);
            self.has_lookbehind = true;
        }
        self.window_start += next as u64;
    }

    /// Scans `bytes` (`bytes[..lb]` is look-behind; the rest starts at `window_start`), records
    /// the spans that are final, and returns how far (after the look-behind) the next scan
    /// starts. Does not move `window_start`.
    fn scan_slice(&mut self, redactor: &Redactor, bytes: &[u8], lb: usize, finished: bool) -> usize {
        let data_len = bytes.len() - lb;
        // Where matches stop being final: the held-back tail.
        let mut final_upto = if finished {
            data_len
        } else {
            let line_start = memchr::memrchr(b'\n', &bytes[lb..]).map_or(0, |i| i + 1);
            line_start.min(data_len.saturating_sub(HOLD_MIN)).max(data_len.saturating_sub(HOLD_MAX))
        };
        let mut last_end = 0;
        let found = redactor.find(bytes, lb, finished);
        if let Some(open) = found.open_from {
            final_upto = final_upto.min(open.max(data_len.saturating_sub(OPEN_MAX)));
        }
        for m in found.spans {
            if m.match_start >= final_upto {
                break;
            }
            last_end = last_end.max(m.end);
            self.spans.push_back(Span {
                start: self.window_start + m.start as u64,
                end: self.window_start + m.end as u64,
                detector: m.detector,
                placeholder: m.placeholder,
            });
        }
        // The next scan starts after the final part and after any span already taken.
        final_upto.max(last_end).min(data_len)
    }

    /// Releases the records that end at or before `upto` (absolute), with their spans applied.
    fn release(&mut self, redactor: &Redactor, out: &mut Vec<proto::Data>, upto: u64) {
        while let Some(front) = self.pending.front() {
            let start = front.offset;
            let end = start + front.payload.len() as u64;
            if end > upto {
                break;
            }
            let mut data = self.pending.pop_front().expect("front exists");
            let mut payload: Option<Vec<u8>> = None;
            for span in self.spans.iter().filter(|s| s.start < end && s.end > start) {
                let from = span.start.max(start);
                let to = span.end.min(end);
                let buf = payload.get_or_insert_with(|| data.payload.to_vec());
                let at = (from - start) as usize;
                let src = &span.placeholder[(from - span.start) as usize..(to - span.start) as usize];
                buf[at..at + src.len()].copy_from_slice(src);
                data.redactions.push(proto::Redaction {
                    offset: at as u32,
                    length: src.len() as u32,
                    rule: redactor.rule_name(span.detector).to_owned(),
                });
            }
            if let Some(buf) = payload {
                data.payload = Bytes::from(buf);
            }
            while self.spans.front().is_some_and(|s| s.end <= end) {
                self.spans.pop_front();
            }
            out.push(data);
        }
    }
}
