//! Ring-buffer records to typed events. A record that is too short for its kind is reported
//! and skipped, never trusted.

use bytes::{Bytes, BytesMut};
use retrace_common::{
    kind, DataChunk, DatagramAddr, Header, SyscallRecord, TaskRecord, DATAGRAM_ADDR_SIZE, DATA_CHUNK_SIZE, HEADER_SIZE,
    SYSCALL_RECORD_SIZE, TASK_RECORD_SIZE,
};

/// One decoded ring-buffer record.
#[derive(Debug, Clone)]
pub enum Event {
    Chunk {
        chunk: DataChunk,
        payload: Bytes,
    },
    DatagramAddr {
        rec: DatagramAddr,
        addr: Bytes,
    },
    Syscall {
        rec: SyscallRecord,
        aux: Bytes,
    },
    /// A data call's record with its payload (`kind::DATA_CALL`).
    DataCall {
        rec: SyscallRecord,
        payload: Bytes,
    },
    TaskNew(TaskRecord),
    TaskExec {
        rec: TaskRecord,
        path: String,
        /// The new image's AT_RANDOM bytes, where the consumer could read them.
        at_random: Option<[u8; crate::auxv::AT_RANDOM_LEN]>,
    },
    TaskExit(TaskRecord),
}

impl Event {
    pub fn header(&self) -> &Header {
        match self {
            Event::Chunk { chunk, .. } => &chunk.hdr,
            Event::DatagramAddr { rec, .. } => &rec.hdr,
            Event::Syscall { rec, .. } | Event::DataCall { rec, .. } => &rec.hdr,
            Event::TaskNew(rec) | Event::TaskExit(rec) | Event::TaskExec { rec, .. } => &rec.hdr,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed ring-buffer record (kind {kind}, {len} bytes)")]
pub struct DecodeError {
    pub kind: u32,
    pub len: usize,
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked above; T is a plain repr(C) struct of integers.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The `len` bytes after a fixed-size struct, if the record holds them.
fn tail(bytes: &[u8], fixed: usize, len: u32) -> Option<Bytes> {
    let end = fixed.checked_add(len as usize)?;
    bytes.get(fixed..end).map(Bytes::copy_from_slice)
}

/// The two pieces of a `DATA_CALL_SPLIT` payload joined: `extra[0]` bytes at 0, the rest of
/// `captured` at `extra[1]`, all within the record's `len` bytes.
fn split_payload(after: &[u8], rec: &SyscallRecord, len: u32) -> Option<Bytes> {
    let first = usize::try_from(rec.extra[0]).ok()?;
    let second_at = usize::try_from(rec.extra[1]).ok()?;
    let second = usize::try_from(rec.captured).ok()?.checked_sub(first)?;
    let end = second_at.checked_add(second)?;
    if first > second_at || end != len as usize {
        return None;
    }
    let after = after.get(..end)?;
    let mut payload = BytesMut::with_capacity(first + second);
    payload.extend_from_slice(&after[..first]);
    payload.extend_from_slice(&after[second_at..]);
    Some(payload.freeze())
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < HEADER_SIZE {
        return Err(DecodeError { kind: 0, len: bytes.len() });
    }
    let hdr: Header = read(bytes);
    let bad = || DecodeError { kind: hdr.kind, len: bytes.len() };
    let need = |fixed: usize| if bytes.len() < fixed { Err(bad()) } else { Ok(()) };
    match hdr.kind {
        kind::DATA_CHUNK => {
            need(DATA_CHUNK_SIZE)?;
            let payload = tail(bytes, DATA_CHUNK_SIZE, hdr.len).ok_or_else(bad)?;
            Ok(Event::Chunk { chunk: read(bytes), payload })
        }
        kind::DATAGRAM_ADDR => {
            need(DATAGRAM_ADDR_SIZE)?;
            let addr = tail(bytes, DATAGRAM_ADDR_SIZE, hdr.len).ok_or_else(bad)?;
            Ok(Event::DatagramAddr { rec: read(bytes), addr })
        }
        kind::SYSCALL => {
            need(SYSCALL_RECORD_SIZE)?;
            let aux = tail(bytes, SYSCALL_RECORD_SIZE, hdr.len).ok_or_else(bad)?;
            Ok(Event::Syscall { rec: read(bytes), aux })
        }
        kind::DATA_CALL => {
            need(SYSCALL_RECORD_SIZE)?;
            let payload = tail(bytes, SYSCALL_RECORD_SIZE, hdr.len).ok_or_else(bad)?;
            Ok(Event::DataCall { rec: read(bytes), payload })
        }
        kind::DATA_CALL_SPLIT => {
            need(SYSCALL_RECORD_SIZE)?;
            let mut rec: SyscallRecord = read(bytes);
            let pieces = bytes.get(SYSCALL_RECORD_SIZE..).and_then(|after| split_payload(after, &rec, hdr.len));
            let payload = pieces.ok_or_else(bad)?;
            rec.extra = [0, 0];
            Ok(Event::DataCall { rec, payload })
        }
        kind::TASK_NEW | kind::TASK_EXEC | kind::TASK_EXIT => {
            need(TASK_RECORD_SIZE)?;
            let rec: TaskRecord = read(bytes);
            Ok(match hdr.kind {
                kind::TASK_NEW => Event::TaskNew(rec),
                kind::TASK_EXIT => Event::TaskExit(rec),
                _ => {
                    let path = tail(bytes, TASK_RECORD_SIZE, hdr.len).ok_or_else(bad)?;
                    let path = String::from_utf8_lossy(&path).trim_end_matches('\0').to_owned();
                    Event::TaskExec { rec, path, at_random: None }
                }
            })
        }
        _ => Err(bad()),
    }
}
