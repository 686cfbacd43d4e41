//! Reads a recording back: the manifest, then every record of every sealed segment in order,
//! each segment checked against the manifest's hash and its header's binding before any of its
//! records is used. An unfinished tail (the recorder died before sealing it) is read as far as
//! it authenticates, and reported.

use std::path::{Path, PathBuf};

use bytes::Buf as _;
use prost::Message as _;

use super::{
    compress, crypt, io_err,
    manifest::{Manifest, SegmentEntry},
    proto::{self, record::Kind as R},
    writer::{partial_name, segment_name},
    StoreError,
};
use crate::keys::Identity;

pub struct Recording {
    pub dir: PathBuf,
    pub manifest: Manifest,
    identity: Identity,
}

/// What reading the segments found besides records.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// The recording was not finished: the unsealed segment (or the last sealed one) and what
    /// could be read of it.
    pub torn_tail: Option<(String, u64)>,
    /// The recording information (command line).
    pub info: Option<proto::RecordingInfo>,
    /// Segments the node agent's spool dropped (name, records): gaps in every stream they held.
    pub evicted: Vec<(String, u64)>,
}

/// One segment's records after its checks.
pub(crate) struct SegmentRecords {
    pub records: Vec<proto::Record>,
    pub end: Option<proto::SegmentEnd>,
    /// The plaintext ended inside a frame or before the segment's end record.
    pub torn_at: Option<u64>,
}

impl Recording {
    pub fn open(dir: &Path, identity: Identity) -> Result<Recording, StoreError> {
        Ok(Recording::with_manifest(dir, Manifest::read(dir)?, identity))
    }

    /// A recording whose manifest the caller has read already.
    pub fn with_manifest(dir: &Path, manifest: Manifest, identity: Identity) -> Recording {
        Recording { dir: dir.to_path_buf(), manifest, identity }
    }

    /// Calls `f` for every record, in recording order.
    pub fn for_each(&self, mut f: impl FnMut(proto::Record)) -> Result<ReadReport, StoreError> {
        let mut report = ReadReport::default();
        let mut prev: Vec<u8> = Vec::new();
        for (index, entry) in self.manifest.segments.iter().enumerate() {
            if entry.evicted {
                report.evicted.push((entry.name.clone(), entry.records));
                prev = crate::hex::decode(&entry.blake3);
                continue;
            }
            let ciphertext = read_sealed(&self.dir, entry)?;
            let (_, records) = self.decode_sealed(&self.dir.join(&entry.name), &ciphertext, index, &prev)?;
            prev = crate::hex::decode(&entry.blake3);
            for record in records {
                take_info(&mut report, record, &mut f);
            }
        }
        if !self.manifest.complete {
            // The segment being written when the recorder stopped: what of it authenticates.
            let index = self.manifest.segments.len();
            for name in [segment_name(index), partial_name(index)] {
                let path = self.dir.join(&name);
                let Ok(ciphertext) = std::fs::read(&path) else { continue };
                let mut read = 0;
                if let Ok(segment) = self.decode(&path, &ciphertext, index, &prev, true) {
                    read = segment.records.len() as u64;
                    for record in segment.records {
                        take_info(&mut report, record, &mut f);
                    }
                }
                report.torn_tail = Some((name, read));
                break;
            }
        }
        Ok(report)
    }

    /// A sealed segment's records and its end record; it must end with that record.
    pub(crate) fn decode_sealed(
        &self,
        path: &Path,
        ciphertext: &[u8],
        index: usize,
        prev_hash: &[u8],
    ) -> Result<(proto::SegmentEnd, Vec<proto::Record>), StoreError> {
        let segment = self.decode(path, ciphertext, index, prev_hash, false)?;
        match segment.end {
            Some(end) if segment.torn_at.is_none() => Ok((end, segment.records)),
            _ => Err(StoreError::Tampered { path: path.to_path_buf(), what: "it ends before its end record".into() }),
        }
    }

    /// Decrypts a segment and checks its header: this recording, this place, after this
    /// previous segment.
    pub(crate) fn decode(
        &self,
        path: &Path,
        ciphertext: &[u8],
        index: usize,
        prev_hash: &[u8],
        tail: bool,
    ) -> Result<SegmentRecords, StoreError> {
        let plain = crypt::decrypt(path, ciphertext, &self.identity, &self.manifest.recipients)?;
        if plain.truncated && !tail {
            return Err(StoreError::Tampered {
                path: path.to_path_buf(),
                what: "its encryption does not verify".into(),
            });
        }
        let corrupt = |offset| StoreError::Corrupt { path: path.to_path_buf(), offset };
        let (frames, truncated) = match self.manifest.compression {
            None => (plain.bytes, plain.truncated),
            // A block cut short can only be the end of an unsealed tail's age stream.
            Some(_) => {
                let (frames, cut) = compress::decompress(&plain.bytes).map_err(corrupt)?;
                (frames, plain.truncated || cut)
            }
        };
        let (records, torn_at) = parse_frames(&frames).map_err(corrupt)?;
        let mut records = records.into_iter();
        let tampered = |what: String| StoreError::Tampered { path: path.to_path_buf(), what };
        match records.next().and_then(|r| r.kind) {
            Some(R::SegmentHeader(h)) => {
                if h.recording_id != self.manifest.id {
                    return Err(tampered(format!(
                        "it belongs to recording {}, not {}",
                        h.recording_id, self.manifest.id
                    )));
                }
                if h.index as usize != index {
                    return Err(tampered(format!(
                        "it is segment {} of its recording, found in place {index}",
                        h.index
                    )));
                }
                if h.prev_hash != prev_hash {
                    return Err(tampered("it does not follow the segment before it".into()));
                }
            }
            _ if tail && frames.is_empty() => {
                return Ok(SegmentRecords { records: Vec::new(), end: None, torn_at: Some(0) })
            }
            _ => return Err(tampered("it has no segment header".into())),
        }
        let mut out: Vec<proto::Record> = records.collect();
        let end = match out.last().and_then(|r| r.kind.as_ref()) {
            Some(R::SegmentEnd(e)) => {
                let e = *e;
                out.pop();
                if e.records != out.len() as u64 {
                    return Err(tampered(format!("it holds {} records, its end record says {}", out.len(), e.records)));
                }
                Some(e)
            }
            _ => None,
        };
        let torn_at = torn_at.or(if truncated { Some(frames.len() as u64) } else { None });
        Ok(SegmentRecords { records: out, end, torn_at })
    }
}

/// A listed segment's file, checked against the manifest's hash: missing, truncated or
/// changed files are `Tampered` errors that say which.
pub(crate) fn read_sealed(dir: &Path, entry: &SegmentEntry) -> Result<Vec<u8>, StoreError> {
    let path = dir.join(&entry.name);
    let tampered = |what: String| StoreError::Tampered { path: path.clone(), what };
    let ciphertext = match std::fs::read(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(tampered("missing".into())),
        Err(e) => return Err(io_err(&path)(e)),
    };
    if crypt::hash_hex(&ciphertext) != entry.blake3 {
        return Err(tampered(if (ciphertext.len() as u64) < entry.bytes {
            format!("truncated ({} of {} bytes)", ciphertext.len(), entry.bytes)
        } else {
            "its bytes differ from the hash in the manifest (changed, reordered or replaced)".into()
        }));
    }
    Ok(ciphertext)
}

fn take_info(report: &mut ReadReport, record: proto::Record, f: &mut impl FnMut(proto::Record)) {
    if let Some(R::Info(info)) = &record.kind {
        report.info = Some(info.clone());
    }
    f(record)
}

/// Splits plaintext into records. A frame cut short at the end is reported by its offset;
/// a frame that does not decode is an error at its offset.
pub fn parse_frames(data: &[u8]) -> Result<(Vec<proto::Record>, Option<u64>), u64> {
    let mut records = Vec::new();
    let mut buf = data;
    while buf.has_remaining() {
        let offset = (data.len() - buf.len()) as u64;
        let mut probe = buf;
        let len = match prost::encoding::decode_varint(&mut probe) {
            Ok(len) if (probe.len() as u64) >= len => len as usize,
            _ => return Ok((records, Some(offset))),
        };
        let record = proto::Record::decode(&probe[..len]).map_err(|_| offset)?;
        buf = &probe[len..];
        records.push(record);
    }
    Ok((records, None))
}
