//! The record stage between stream rebuilding and the writer: applies the capture allowlist
//! (payloads of other streams become `not_captured` gaps) and streaming redaction. Data records
//! of a stream may leave later than records of other streams; within a stream direction the
//! order of data and gaps is kept.

use crate::FastMap as HashMap;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{stream::StreamRedactor, Redactor};
use crate::model::proto::{self, record::Kind as R, Direction, GapReason, StreamKind};

/// A stream idle this long has what it holds back released.
const IDLE_FLUSH: Duration = Duration::from_millis(500);

#[derive(Default)]
struct StreamState {
    allowed: bool,
    datagram: bool,
    dirs: [StreamRedactor; 2],
    last_push: Option<Instant>,
    /// Some of its payload was left out by the allowlist.
    withheld: bool,
    /// A socket carrying TLS whose ciphertext is left out (`[tls] ciphertext = false`).
    ciphertext_only: bool,
}

/// What redaction did, for the recording's summary and export notes.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RedactStats {
    /// Redacted pieces (a span split over two records counts twice) and bytes, per rule.
    pub by_rule: BTreeMap<String, (u64, u64)>,
    /// Payload bytes not recorded because of the capture allowlist.
    pub not_captured_bytes: u64,
    pub not_captured_streams: u64,
}

pub struct RedactStage {
    redactor: Redactor,
    streams: HashMap<u64, StreamState>,
    pub stats: RedactStats,
    released: Vec<proto::Data>,
    /// Stream directions with records appended but not scanned yet (see `end_batch`).
    unscanned: Vec<(u64, usize)>,
    /// The time at the last tick: when records were pushed, to within a batch (reading the
    /// clock per record was 4% of the agent's CPU on small records).
    clock: Instant,
}

fn dir_index(d: Direction) -> usize {
    usize::from(d == Direction::Out)
}

impl RedactStage {
    pub fn new(redactor: Redactor) -> RedactStage {
        RedactStage {
            redactor,
            streams: HashMap::default(),
            stats: RedactStats::default(),
            released: Vec::new(),
            unscanned: Vec::new(),
            clock: Instant::now(),
        }
    }

    pub fn push(&mut self, record: proto::Record, out: &mut Vec<proto::Record>) {
        match record.kind {
            Some(R::Stream(ref info)) => {
                let allowed = self.redactor.rules.capture.as_ref().is_none_or(|p| p.allows(info));
                if info.kind() == StreamKind::Tls && info.carrier != 0 && !self.redactor.rules.tls_ciphertext {
                    let carrier = self.streams.entry(info.carrier).or_default();
                    carrier.ciphertext_only = true;
                    carrier.allowed = false;
                }
                let state = self.streams.entry(info.id).or_default();
                state.allowed = allowed && !state.ciphertext_only;
                state.datagram = info.kind() == StreamKind::Udp;
                out.push(record);
            }
            Some(R::Data(data)) => self.data(data, out),
            Some(R::Info(mut info)) => {
                // A command line can carry secrets too (`curl -H 'Authorization: ...'`).
                for arg in &mut info.command {
                    let (clean, _) = super::redact_all(&self.redactor, arg.as_bytes());
                    *arg = String::from_utf8_lossy(&clean).into_owned();
                }
                out.push(proto::Record { kind: Some(R::Info(info)) });
            }
            Some(R::Gap(ref gap)) => {
                self.flush_dir(gap.stream_id, gap.direction(), out);
                out.push(record);
            }
            Some(R::Close(ref close)) => {
                if let Some(mut state) = self.streams.remove(&close.stream_id) {
                    for dir in &mut state.dirs {
                        dir.flush(&self.redactor, &mut self.released);
                    }
                    self.emit(out);
                }
                out.push(record);
            }
            _ => out.push(record),
        }
    }

    fn data(&mut self, data: proto::Data, out: &mut Vec<proto::Record>) {
        let policy = self.redactor.rules.capture.as_ref();
        let state = self.streams.entry(data.stream_id).or_insert_with(|| StreamState {
            // A stream never described (should not happen): allowed only without an allowlist.
            allowed: policy.is_none(),
            ..Default::default()
        });
        let allowed = state.allowed || (state.datagram && policy.is_some_and(|p| p.allows_addr(&data.addr)));
        if !allowed {
            if !state.withheld {
                state.withheld = true;
                self.stats.not_captured_streams += 1;
            }
            self.stats.not_captured_bytes += data.payload.len() as u64;
            out.push(proto::Record {
                kind: Some(R::Gap(proto::Gap {
                    stream_id: data.stream_id,
                    direction: data.direction,
                    ts_ns: data.ts_ns,
                    offset: data.offset,
                    length: data.payload.len() as u64,
                    reason: GapReason::NotCaptured as i32,
                    syscall: data.syscall,
                })),
            });
            return;
        }
        state.last_push = Some(self.clock);
        let (stream, dir) = (data.stream_id, dir_index(data.direction()));
        let redactor = &mut state.dirs[dir];
        if state.datagram {
            // Each datagram stands alone: no secret spans two of them.
            redactor.push(&self.redactor, data, &mut self.released);
            redactor.flush(&self.redactor, &mut self.released);
        } else {
            let was_owed = redactor.owes_scan();
            if redactor.append(&self.redactor, data, &mut self.released) && !was_owed {
                self.unscanned.push((stream, dir));
            }
        }
        self.emit(out);
    }

    /// Scans every stream direction that got records since the last call: the caller's batch
    /// of records is in.
    pub fn end_batch(&mut self, out: &mut Vec<proto::Record>) {
        for (stream, dir) in std::mem::take(&mut self.unscanned) {
            if let Some(state) = self.streams.get_mut(&stream) {
                state.dirs[dir].scan_appended(&self.redactor, &mut self.released);
            }
        }
        self.emit(out);
    }

    fn flush_dir(&mut self, stream: u64, dir: Direction, out: &mut Vec<proto::Record>) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state.dirs[dir_index(dir)].flush(&self.redactor, &mut self.released);
            self.emit(out);
        }
    }

    /// Releases what idle streams hold back, so a quiet stream's data reaches the disk (and
    /// a crash loses at most about a second).
    pub fn tick(&mut self, out: &mut Vec<proto::Record>) {
        self.end_batch(out);
        let now = Instant::now();
        self.clock = now;
        for state in self.streams.values_mut() {
            if state.last_push.is_some_and(|t| now.duration_since(t) >= IDLE_FLUSH)
                && state.dirs.iter().any(|d| !d.is_idle())
            {
                for dir in &mut state.dirs {
                    dir.flush(&self.redactor, &mut self.released);
                }
            }
        }
        self.emit(out);
    }

    /// Releases everything (end of recording).
    pub fn finish(&mut self, out: &mut Vec<proto::Record>) {
        let mut ids: Vec<u64> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let state = self.streams.get_mut(&id).expect("listed");
            for dir in &mut state.dirs {
                dir.flush(&self.redactor, &mut self.released);
            }
        }
        self.emit(out);
    }

    fn emit(&mut self, out: &mut Vec<proto::Record>) {
        out.reserve(self.released.len());
        for data in self.released.drain(..) {
            for r in &data.redactions {
                let e = self.stats.by_rule.entry(r.rule.clone()).or_default();
                e.0 += 1;
                e.1 += u64::from(r.length);
            }
            out.push(proto::Record { kind: Some(R::Data(data)) });
        }
    }
}
