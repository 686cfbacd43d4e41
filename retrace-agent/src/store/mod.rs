//! The recording on disk: a directory with `manifest.json` and segment files (`seg-000000.age`,
//! …), each an age file of framed protobuf records bound to its recording, sealed by size and
//! at least every second. Only this module writes recording files.

pub mod compress;
pub mod crypt;
pub mod manifest;
pub mod reader;
pub mod remote;
mod segment_file;
pub mod verify;
pub mod writer;

// The record model lives in `model`; these paths stay for readers of the store.
pub use crate::model::{proto, proto_text};

pub use manifest::{Manifest, SegmentEntry};
pub use reader::Recording;
pub use writer::{Compression, SegmentPolicy, Writer};

use std::path::PathBuf;

/// Errors of the recording store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no recording at `{path}` (no manifest.json): check the path given to -o")]
    NotFound { path: PathBuf },
    #[error("`{path}` already holds a recording; choose another -o or remove it")]
    Exists { path: PathBuf },
    #[error(
        "no space left on the device holding `{path}`: recording stopped; what was written before is kept and readable"
    )]
    DiskFull { path: PathBuf },
    #[error("failed to access `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt manifest `{path}`")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("corrupt record in `{path}` at byte {offset}")]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("recording format {found} is not the one this retrace reads ({supported})")]
    Version { found: u32, supported: u32 },
    #[error("the recording's segments are compressed with `{found}`, which this retrace cannot read: use the retrace that wrote it")]
    Compression { found: String },
    #[error("cannot decrypt `{path}` with the identity given ({reason}): it is encrypted to {recipients}; give the matching --identity")]
    Decrypt { path: PathBuf, reason: String, recipients: String },
    #[error("`{path}` fails verification: {what} (run `retrace verify` for the whole recording)")]
    Tampered { path: PathBuf, what: String },
    #[error("the recording expired at {when}: it is due for deletion (`retrace gc`); export a copy before it expires to keep it")]
    Expired { when: String },
    #[error("the audit log could not be written, so nothing was done: {0}")]
    Audit(String),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { path },
        _ => StoreError::Io { path, source },
    }
}
