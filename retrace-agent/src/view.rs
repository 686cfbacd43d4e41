//! Read-side views of a recording: the stream table, one direction of one stream, the
//! timeline.

use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use crate::{
    store::{
        proto::{self, record::Kind as R, Direction, GapReason},
        proto_text,
        reader::ReadReport,
        Recording, StoreError,
    },
    streams::kind_name,
};

/// One line of `retrace streams`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StreamRow {
    pub id: u64,
    pub kind: &'static str,
    pub pid: u32,
    pub fd: i32,
    pub path: String,
    pub local: String,
    pub peer: String,
    pub origin: String,
    pub joined_mid_stream: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub lost_bytes_in: u64,
    pub lost_bytes_out: u64,
    pub closed: bool,
    /// TLS streams: the socket stream carrying the records, and the handshake's details.
    #[serde(skip_serializing_if = "is_zero")]
    pub carrier: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_library: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sni: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alpn: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tls_version: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn stream_table(rec: &Recording) -> Result<(Vec<StreamRow>, ReadReport), StoreError> {
    let mut rows: BTreeMap<u64, StreamRow> = BTreeMap::new();
    let report = rec.for_each(|record| match record.kind {
        Some(R::Stream(info)) => {
            let row = rows.entry(info.id).or_default();
            row.id = info.id;
            row.kind = kind_name(info.kind());
            row.pid = info.pid;
            row.fd = info.fd;
            row.path = info.path;
            row.local = info.local;
            row.peer = info.peer;
            row.origin = info.origin;
            row.joined_mid_stream = info.joined_mid_stream;
            row.carrier = info.carrier;
            row.tls_library = info.tls_library;
            row.sni = info.sni;
            row.alpn = info.alpn;
            row.tls_version = info.tls_version;
        }
        Some(R::Data(d)) => {
            if let Some(row) = rows.get_mut(&d.stream_id) {
                match d.direction() {
                    Direction::In => row.bytes_in += d.payload.len() as u64,
                    _ => row.bytes_out += d.payload.len() as u64,
                }
            }
        }
        Some(R::Gap(g)) => {
            if let Some(row) = rows.get_mut(&g.stream_id) {
                match g.direction() {
                    Direction::In => row.lost_bytes_in += g.length,
                    _ => row.lost_bytes_out += g.length,
                }
            }
        }
        Some(R::Close(c)) => {
            if let Some(row) = rows.get_mut(&c.stream_id) {
                row.closed = true;
            }
        }
        _ => {}
    })?;
    Ok((rows.into_values().collect(), report))
}

/// What `cat` wrote.
#[derive(Debug, Default)]
pub struct CatReport {
    pub found: bool,
    pub bytes: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
}

/// Writes one direction of one stream's recorded bytes, in order. Gaps are skipped (and
/// counted): the output is exactly what was recorded.
pub fn cat(rec: &Recording, stream: u64, dir: Direction, out: &mut impl Write) -> Result<CatReport, CatError> {
    let mut report = CatReport::default();
    let mut write_err = None;
    rec.for_each(|record| match record.kind {
        Some(R::Stream(info)) if info.id == stream => report.found = true,
        Some(R::Data(d)) if d.stream_id == stream && d.direction() == dir && write_err.is_none() => {
            report.bytes += d.payload.len() as u64;
            if let Err(e) = out.write_all(&d.payload) {
                write_err = Some(e);
            }
        }
        Some(R::Gap(g)) if g.stream_id == stream && g.direction() == dir => {
            report.gaps += 1;
            report.gap_bytes += g.length;
        }
        _ => {}
    })?;
    if let Some(e) = write_err {
        return Err(CatError::Write(e));
    }
    out.flush().map_err(CatError::Write)?;
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
pub enum CatError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("failed to write output")]
    Write(#[source] std::io::Error),
}

/// One timeline entry, as printed by `inspect`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEntry {
    Counters(proto::Counters),
    Stream(proto::StreamInfo),
    Syscall(proto::Syscall),
    Data {
        ts_ns: u64,
        stream_id: u64,
        direction: &'static str,
        offset: u64,
        len: usize,
        syscall: String,
        pid: u32,
        tid: u32,
        preview: String,
        /// Spans replaced by placeholders: (offset in payload, length, rule).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        redactions: Vec<(u32, u32, String)>,
    },
    Gap {
        ts_ns: u64,
        stream_id: u64,
        direction: &'static str,
        offset: u64,
        length: u64,
        reason: &'static str,
        syscall: String,
    },
    Close(proto::StreamClose),
    Process(proto::Process),
}

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
        Direction::Unspecified => "?",
    }
}

pub fn gap_reason_name(r: GapReason) -> &'static str {
    match r {
        GapReason::RingFull => "ring_full",
        GapReason::MaxPayload => "max_payload",
        GapReason::RateLimit => "rate_limit",
        GapReason::Fault => "fault",
        GapReason::InKernelCopy => "in_kernel_copy",
        GapReason::RecordDropped => "record_dropped",
        GapReason::NotCaptured => "not_captured",
        GapReason::Unspecified => "unknown",
    }
}

/// The timeline, drop counters first.
pub fn timeline(rec: &Recording) -> Result<(Vec<TimelineEntry>, ReadReport), StoreError> {
    let mut counters = None;
    let mut entries = Vec::new();
    let report = rec.for_each(|record| {
        let entry = match record.kind {
            Some(R::Counters(c)) => {
                counters = Some(c);
                return;
            }
            Some(R::Stream(s)) => TimelineEntry::Stream(s),
            Some(R::Syscall(s)) => TimelineEntry::Syscall(s),
            Some(R::Data(d)) => TimelineEntry::Data {
                ts_ns: d.ts_ns,
                stream_id: d.stream_id,
                direction: direction_name(d.direction()),
                offset: d.offset,
                len: d.payload.len(),
                syscall: proto_text::text(&d.syscall).into_owned(),
                pid: d.pid,
                tid: d.tid,
                preview: preview(&d.payload),
                redactions: d.redactions.iter().map(|r| (r.offset, r.length, r.rule.clone())).collect(),
            },
            Some(R::Gap(g)) => TimelineEntry::Gap {
                ts_ns: g.ts_ns,
                stream_id: g.stream_id,
                direction: direction_name(g.direction()),
                offset: g.offset,
                length: g.length,
                reason: gap_reason_name(g.reason()),
                syscall: proto_text::text(&g.syscall).into_owned(),
            },
            Some(R::Close(c)) => TimelineEntry::Close(c),
            Some(R::Process(p)) => TimelineEntry::Process(p),
            Some(R::SegmentHeader(_) | R::SegmentEnd(_) | R::Info(_)) | None => return,
        };
        entries.push(entry);
    })?;
    if let Some(c) = counters {
        entries.insert(0, TimelineEntry::Counters(c));
    }
    Ok((entries, report))
}

/// The first bytes of a payload, printable.
pub fn preview(bytes: &[u8]) -> String {
    bytes.iter().take(48).map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect()
}
