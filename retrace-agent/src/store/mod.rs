//! The recording on disk: a directory with `manifest.json` and segment files of framed
//! protobuf records (`seg-000000.rtr`, …) that rotate by size and age. Only this module writes
//! recording files.

pub mod manifest;
pub mod reader;
mod segment_file;
pub mod writer;

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/retrace.v1.rs"));
}

pub use manifest::Manifest;
pub use reader::Recording;
pub use writer::{SegmentPolicy, Writer};

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
    #[error("recording format {found} is newer than this retrace understands ({supported})")]
    Version { found: u32, supported: u32 },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { path },
        _ => StoreError::Io { path, source },
    }
}
