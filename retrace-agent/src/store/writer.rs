//! Appends records to the current segment and seals segments by size and age. A segment is
//! written under a temporary name as an age stream; sealing finishes the stream, fsyncs it,
//! renames it, fsyncs the directory and only then lists it (with its hash) in the manifest.

use crate::clock::now_wall_ns;
use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use prost::Message as _;

use super::{
    compress::Compressor,
    crypt::{self, EncryptingWriter},
    io_err,
    manifest::{Manifest, SegmentEntry},
    proto::{self, record::Kind as R},
    segment_file::{SealPool, SegmentFile},
    StoreError,
};
use crate::keys::Recipient;

/// When a segment is sealed and a new one started, and how its plaintext is stored.
#[derive(Clone, Copy, Debug)]
pub struct SegmentPolicy {
    /// Plaintext bytes (before compression) after which a segment is sealed.
    pub max_bytes: u64,
    pub max_age: Duration,
    pub compression: Compression,
    /// Threads that seal a segment's chunks and hash its buffers in parallel; 0: the writer
    /// thread seals and one thread hashes (what 2 cores afford).
    pub seal_threads: usize,
}

impl Default for SegmentPolicy {
    /// Sealed at least every second: a crash loses at most about a second of data.
    fn default() -> Self {
        SegmentPolicy {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(1),
            compression: Compression::None,
            seal_threads: 0,
        }
    }
}

/// Compression of segment plaintext before encryption (see `compress.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
}

impl Compression {
    /// As the manifest's `compression` field names it (absent when none).
    pub fn manifest_name(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some("lz4"),
        }
    }

    /// The compression a manifest declares (`Manifest::read` refuses unknown names).
    pub fn of(manifest: &Manifest) -> Compression {
        match manifest.compression {
            Some(_) => Compression::Lz4,
            None => Compression::None,
        }
    }
}

pub fn segment_name(index: usize) -> String {
    format!("seg-{index:06}.age")
}

/// The name a segment has while it is written (an unfinished tail if the recorder died).
pub fn partial_name(index: usize) -> String {
    format!(".seg-{index:06}.age.partial")
}

pub struct Writer {
    dir: PathBuf,
    manifest: Manifest,
    policy: SegmentPolicy,
    recipients: Vec<Recipient>,
    current: Option<Segment>,
    prev_hash: Vec<u8>,
    frame: Vec<u8>,
    pool: Option<SealPool>,
}

struct Segment {
    index: usize,
    path: PathBuf,
    out: SegmentOut,
    /// Plaintext bytes written.
    bytes: u64,
    records: u64,
    opened: Instant,
}

impl Writer {
    /// Creates the recording directory (it must not hold a recording yet) and its manifest.
    pub fn create(
        dir: &Path,
        mut manifest: Manifest,
        recipients: Vec<Recipient>,
        policy: SegmentPolicy,
    ) -> Result<Writer, StoreError> {
        if dir.join(super::manifest::MANIFEST).exists() {
            return Err(StoreError::Exists { path: dir.to_path_buf() });
        }
        manifest.compression = policy.compression.manifest_name().map(str::to_owned);
        manifest.format_version = super::manifest::format_version(manifest.compression.as_deref());
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        // Recordings are readable by their owner only (the ciphertext too: metadata).
        let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        manifest.write(dir)?;
        let pool = match policy.seal_threads {
            0 => None,
            n => Some(std::sync::Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("retrace-seal-{i}"))
                    .build()
                    .map_err(|e| io_err(dir)(std::io::Error::other(e.to_string())))?,
            )),
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            manifest,
            policy,
            recipients,
            current: None,
            prev_hash: Vec::new(),
            frame: Vec::with_capacity(64 << 10),
            pool,
        })
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Writes a record; seals the segment first when it is full (its age is checked by `tick`).
    pub fn append(&mut self, mut record: proto::Record) -> Result<(), StoreError> {
        if self.current.as_ref().is_some_and(|s| s.is_full(&self.policy)) {
            self.seal(false)?;
        }
        if self.current.is_none() {
            self.open_segment()?;
        }
        let segment = self.current.as_mut().expect("segment opened above");
        segment.records += 1;
        self.frame.clear();
        match &mut record.kind {
            // Payloads go from the consumer's buffer to the encryptor: only the frame header is
            // encoded here (the payload field last, as protobuf allows).
            Some(R::Data(d)) => {
                let payload = std::mem::take(&mut d.payload);
                frame_data_header(d, payload.len(), &mut self.frame);
                segment.out.write_all(&self.frame).map_err(io_err(&segment.path))?;
                segment.out.write_all(&payload).map_err(io_err(&segment.path))?;
                segment.bytes += (self.frame.len() + payload.len()) as u64;
            }
            _ => write_frame(segment, &record, &mut self.frame)?,
        }
        Ok(())
    }

    /// Seals the segment if it is old enough even when nothing is being written.
    pub fn tick(&mut self) -> Result<(), StoreError> {
        let due =
            self.current.as_ref().is_some_and(|s| s.is_full(&self.policy) || s.opened.elapsed() >= self.policy.max_age);
        if due {
            self.seal(false)?;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), StoreError> {
        let index = self.manifest.segments.len();
        let path = self.dir.join(partial_name(index));
        let file = SegmentFile::create(&path, self.pool.clone()).map_err(io_err(&path))?;
        let encrypted = crypt::encrypt_to(&self.recipients, file).map_err(io_err(&path))?;
        let out = match self.policy.compression {
            Compression::None => SegmentOut::Plain(encrypted),
            Compression::Lz4 => SegmentOut::Lz4(Compressor::new(encrypted)),
        };
        let mut segment = Segment { index, path, out, bytes: 0, records: 0, opened: Instant::now() };
        let header = proto::Record {
            kind: Some(R::SegmentHeader(proto::SegmentHeader {
                recording_id: self.manifest.id.clone(),
                index: index as u32,
                prev_hash: self.prev_hash.clone(),
                ts_ns: now_wall_ns(),
            })),
        };
        write_frame(&mut segment, &header, &mut self.frame)?;
        self.current = Some(segment);
        Ok(())
    }

    /// Ends the segment's age stream, makes it durable under its final name and lists it.
    fn seal(&mut self, last: bool) -> Result<(), StoreError> {
        let Some(mut segment) = self.current.take() else { return Ok(()) };
        let end = proto::Record { kind: Some(R::SegmentEnd(proto::SegmentEnd { records: segment.records, last })) };
        write_frame(&mut segment, &end, &mut self.frame)?;
        let path = segment.path.clone();
        // Waits for the disk thread's writes and fsync (a failed fsync is not retried).
        let sealed = segment.out.finish().and_then(|file| file.seal()).map_err(io_err(&path))?;
        let name = segment_name(segment.index);
        let final_path = self.dir.join(&name);
        std::fs::rename(&path, &final_path).map_err(io_err(&final_path))?;
        sync_dir(&self.dir)?;
        self.manifest.segments.push(SegmentEntry {
            name,
            blake3: crate::hex::encode(&sealed.digest),
            bytes: sealed.bytes,
            records: segment.records,
            evicted: false,
        });
        self.prev_hash = sealed.digest.to_vec();
        self.manifest.write(&self.dir)
    }

    /// Seals the last segment and marks the recording complete.
    pub fn finish(
        mut self,
        ended_ns: u64,
        exit_status: Option<i32>,
        stopped_by_recorder: bool,
        stopped_ns: Option<u64>,
    ) -> Result<Manifest, StoreError> {
        if self.current.is_none() {
            self.open_segment()?;
        }
        self.seal(true)?;
        if let Some(pool) = &self.pool {
            // The pool's threads, each asked for its CPU so far (they live as long as the pool).
            crate::stages::SEAL_POOL.add_cpu_ns(pool.broadcast(|_| crate::stages::thread_cpu_ns()).into_iter().sum());
        }
        self.manifest.ended_ns = Some(ended_ns);
        self.manifest.exit_status = exit_status;
        self.manifest.stopped_by_recorder = stopped_by_recorder;
        self.manifest.stopped_ns = stopped_ns;
        self.manifest.complete = true;
        self.manifest.write(&self.dir)?;
        Ok(self.manifest)
    }
}

/// A segment's age stream, behind the compressor when there is one.
enum SegmentOut {
    Plain(EncryptingWriter),
    Lz4(Compressor<EncryptingWriter>),
}

impl SegmentOut {
    /// Ends the compression and the age stream; waits for the disk thread's writes.
    fn finish(self) -> std::io::Result<SegmentFile> {
        match self {
            SegmentOut::Plain(out) => out.finish(),
            SegmentOut::Lz4(out) => out.finish()?.finish(),
        }
    }
}

impl Write for SegmentOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SegmentOut::Plain(out) => out.write(buf),
            SegmentOut::Lz4(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Segment {
    fn is_full(&self, policy: &SegmentPolicy) -> bool {
        self.bytes >= policy.max_bytes
    }
}

fn write_frame(segment: &mut Segment, record: &proto::Record, frame: &mut Vec<u8>) -> Result<(), StoreError> {
    frame.clear();
    record.encode_length_delimited(frame).expect("Vec grows");
    segment.out.write_all(frame).map_err(io_err(&segment.path))?;
    segment.bytes += frame.len() as u64;
    Ok(())
}

/// Encodes the frame of `Record { data: d }` where `d`'s payload, `payload_len` bytes, was taken
/// out: up to, and including, the payload's tag and length; the payload bytes themselves follow.
/// Decodes as the same message as prost's own encoding.
fn frame_data_header(d: &proto::Data, payload_len: usize, out: &mut Vec<u8>) {
    use prost::{encoding, Message as _};
    let payload_key_len = encoding::key_len(8) + encoding::encoded_len_varint(payload_len as u64);
    let data_len = d.encoded_len() + payload_key_len + payload_len;
    let record_len = encoding::key_len(2) + encoding::encoded_len_varint(data_len as u64) + data_len;
    encoding::encode_varint(record_len as u64, out);
    encoding::encode_key(2, encoding::WireType::LengthDelimited, out);
    encoding::encode_varint(data_len as u64, out);
    d.encode(out).expect("Vec grows");
    encoding::encode_key(8, encoding::WireType::LengthDelimited, out);
    encoding::encode_varint(payload_len as u64, out);
}

pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn direct_frames_decode_like_prost_frames() {
        for (payload_len, addr) in [(1, ""), (512, "127.0.0.1:53"), (100_000, "127.0.0.1:53"), (70_000, "")] {
            let data = proto::Data {
                stream_id: 7,
                direction: proto::Direction::Out as i32,
                ts_ns: 1_700_000_000_123_456_789,
                pid: 42,
                tid: 43,
                syscall: "writev".into(),
                offset: 1 << 40,
                file_offset: Some(1 << 33),
                payload: bytes::Bytes::from((0..payload_len).map(|i| i as u8).collect::<Vec<_>>()),
                msg_index: 2,
                addr: addr.into(),
                redactions: vec![proto::Redaction { offset: 3, length: 9, rule: "jwt".into() }],
            };
            let mut frame = Vec::new();
            let without_payload = proto::Data { payload: bytes::Bytes::new(), ..data.clone() };
            frame_data_header(&without_payload, data.payload.len(), &mut frame);
            frame.extend_from_slice(&data.payload);
            let record = proto::Record { kind: Some(proto::record::Kind::Data(data)) };
            let decoded = proto::Record::decode_length_delimited(&frame[..]).expect("decodes");
            assert_eq!(decoded, record);
            assert_eq!(
                frame.len(),
                record.encoded_len() + prost::encoding::encoded_len_varint(record.encoded_len() as u64)
            );
        }
    }
}
