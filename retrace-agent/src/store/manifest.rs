//! `manifest.json`: what the recording is, its segments, and how it ended.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_err, StoreError};

/// Written for uncompressed recordings; compressed ones are written as `COMPRESSED_VERSION`, so
/// a reader that predates compression refuses them instead of misreading them.
pub const FORMAT_VERSION: u32 = 2;
pub const COMPRESSED_VERSION: u32 = 3;
pub const MANIFEST: &str = "manifest.json";

/// The format version a manifest with this `compression` field is written as.
pub fn format_version(compression: Option<&str>) -> u32 {
    if compression.is_some() {
        COMPRESSED_VERSION
    } else {
        FORMAT_VERSION
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format_version: u32,
    /// Random id of this recording.
    pub id: String,
    /// `launch` or `attach`.
    pub mode: String,
    /// The program's file name (the full command line is inside the encryption).
    pub program: String,
    pub root_pid: u32,
    /// Wall clock, ns since the epoch.
    pub started_ns: u64,
    pub ended_ns: Option<u64>,
    /// Sealed segments, in order, with the hash of each file.
    pub segments: Vec<SegmentEntry>,
    /// False while recording, or if the recorder died.
    pub complete: bool,
    /// Exit status of the launched command or root process, if known.
    pub exit_status: Option<i32>,
    /// The recorder stopped the command (SIGINT, SIGTERM or `--duration`): its exit status
    /// says how it was stopped, not how it would have ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_by_recorder: bool,
    /// When the recorder sent that stop (wall clock, ns since the epoch): the replayed clock
    /// reads it when the replayer stops the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ns: Option<u64>,
    pub ring_buffer_bytes: u64,
    pub max_payload: Option<u64>,
    pub hostname: String,
    pub kernel: String,
    /// age recipients (public keys) the segments are encrypted to.
    pub recipients: Vec<String>,
    /// Wall clock, ns since the epoch, after which `retrace gc` deletes the recording.
    pub expires_ns: u64,
    /// Names of the redaction rules applied at record time.
    pub redaction_rules: Vec<String>,
    /// Whether a capture allowlist limited which streams keep their payload.
    pub capture_allowlist: bool,
    /// How segment plaintext is compressed before encryption (`lz4`), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// The recording this one was exported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_from: Option<String>,
}

/// One sealed segment file.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct SegmentEntry {
    pub name: String,
    /// BLAKE3 of the file (its ciphertext), hex (`b3sum` prints the same).
    pub blake3: String,
    pub bytes: u64,
    /// Records inside, segment header and end excluded.
    pub records: u64,
    /// The node agent's spool dropped this segment before it could be uploaded (the spool
    /// reached its bound while object storage was away): its records are a counted gap. Its
    /// hash stays, so the segments after it still verify against it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
}

impl Manifest {
    pub fn expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
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
        let expected = format_version(manifest.compression.as_deref());
        if manifest.format_version != expected {
            return Err(StoreError::Version { found: manifest.format_version, supported: expected });
        }
        let lz4 = super::writer::Compression::Lz4.manifest_name();
        if let Some(other) = manifest.compression.as_deref().filter(|c| Some(*c) != lz4) {
            return Err(StoreError::Compression { found: other.to_owned() });
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
