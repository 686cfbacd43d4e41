//! `manifest.json`: what the recording is, its segments, and how it ended.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_err, StoreError};

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format_version: u32,
    /// Random id of this recording.
    pub id: String,
    /// `launch` or `attach`.
    pub mode: String,
    /// The launched command line (argv), or the attached process's cmdline.
    pub command: Vec<String>,
    pub root_pid: u32,
    /// Wall clock, ns since the epoch.
    pub started_ns: u64,
    pub ended_ns: Option<u64>,
    /// Segment file names, in order.
    pub segments: Vec<String>,
    /// False while recording, or if the recorder died.
    pub complete: bool,
    /// Exit status of the launched command or root process, if known.
    pub exit_status: Option<i32>,
    pub ring_buffer_bytes: u64,
    pub max_payload: Option<u64>,
    pub hostname: String,
    pub kernel: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, StoreError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { path: dir.to_path_buf() })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| StoreError::Manifest { path: path.clone(), source })?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(StoreError::Version { found: manifest.format_version, supported: FORMAT_VERSION });
        }
        Ok(manifest)
    }

    /// Atomically replaces the manifest (temp file, fsync, rename, fsync the directory).
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let tmp = dir.join(".manifest.json.tmp");
        let path = dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(self).expect("manifest serialises");
        super::writer::write_durably(&tmp, &text)?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        super::writer::sync_dir(dir)
    }
}
