//! The node's spool: recordings wait here (`NAMESPACE/NAME/NODE-TIME/`) until they are
//! uploaded, and each request's status on this node is a JSON file (`status/NAMESPACE.NAME.json`).
//! The spool is bounded (`spool_max_bytes`): past the bound the oldest sealed segments of ended
//! captures are dropped first, each marked `evicted` in its manifest (a counted gap), and
//! running captures end once nothing else can go.

use crate::clock::now_wall_ns;
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde_json::json;

use crate::store::Manifest;

pub struct Spool {
    pub root: PathBuf,
    pub max_bytes: Option<u64>,
    /// Status files are read, merged and replaced under this lock (the capture threads and the
    /// uploader both write them).
    status: Mutex<()>,
    /// Where statuses are also published (the API server's objects).
    pub cluster: std::sync::OnceLock<std::sync::Arc<super::cluster::Cluster>>,
}

/// What eviction dropped.
#[derive(Debug, Default, PartialEq)]
pub struct Evicted {
    pub segments: u64,
    pub bytes: u64,
    pub records: u64,
}

impl Spool {
    pub fn open(root: PathBuf, max_bytes: Option<u64>) -> std::io::Result<Spool> {
        std::fs::create_dir_all(root.join("status"))?;
        Ok(Spool { root, max_bytes, status: Mutex::new(()), cluster: Default::default() })
    }

    /// Where a capture's recording started at `started` (s) goes.
    pub fn recording_dir(&self, namespace: &str, name: &str, leaf: &str) -> PathBuf {
        self.root.join(namespace).join(name).join(leaf)
    }

    /// Every recording in the spool (a folder with a manifest), oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let dirs = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        };
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for namespace in dirs(&self.root).into_iter().filter(|d| !d.ends_with("status")) {
            for name in dirs(&namespace) {
                for recording in dirs(&name) {
                    if let Ok(manifest) = Manifest::read(&recording) {
                        found.push((manifest.started_ns, recording));
                    }
                }
            }
        }
        found.sort();
        found.into_iter().map(|(_, d)| d).collect()
    }

    /// Bytes of every file under the spool.
    pub fn bytes(&self) -> u64 {
        dir_bytes(&self.root)
    }

    /// The capture a recording folder belongs to: (namespace, name).
    pub fn capture_of(&self, recording: &Path) -> Option<(String, String)> {
        let relative = recording.strip_prefix(&self.root).ok()?;
        let mut parts = relative.iter().map(|p| p.to_string_lossy().into_owned());
        Some((parts.next()?, parts.next()?))
    }

    fn status_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("status").join(format!("{namespace}.{name}.json"))
    }

    pub fn read_status(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.status_path(namespace, name)).ok()?).ok()
    }

    /// Sets the request's phase (and fields) on this node, keeping the fields it had; `None`
    /// keeps the phase too.
    pub fn write_status(&self, namespace: &str, name: &str, phase: Option<&str>, fields: serde_json::Value) {
        let _held = self.status.lock().expect("status lock");
        let mut status = self.read_status(namespace, name).unwrap_or_else(|| json!({}));
        if let Some(phase) = phase {
            status["phase"] = json!(phase);
            if phase != "Uploading" && phase != "Recorded" {
                // A reason from an earlier phase no longer holds.
                if let Some(s) = status.as_object_mut() {
                    s.remove("reason");
                }
            }
        }
        status["updated_ns"] = json!(now_wall_ns());
        if let (Some(status), Some(fields)) = (status.as_object_mut(), fields.as_object()) {
            status.extend(fields.clone());
        }
        let path = self.status_path(namespace, name);
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, status.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        if let Some(cluster) = self.cluster.get() {
            let mut public = status.clone();
            if let Some(s) = public.as_object_mut() {
                // The spool's path and the request's fingerprint are the node's business.
                s.remove("recording");
                s.remove("request");
            }
            cluster.publish_status(namespace, name, &public);
        }
    }

    /// Drops the oldest sealed segments of the recordings in `ended` (oldest first) until the
    /// spool is within its bound; whether it is.
    pub fn evict(&self, ended: &[PathBuf], evicted: &mut Evicted) -> bool {
        let Some(max) = self.max_bytes else { return true };
        let mut used = self.bytes();
        for dir in ended {
            if used <= max {
                break;
            }
            let Ok(mut manifest) = Manifest::read(dir) else { continue };
            let mut changed = false;
            for segment in manifest.segments.iter_mut().filter(|s| !s.evicted) {
                if used <= max {
                    break;
                }
                let path = dir.join(&segment.name);
                // Uploaded already (its local copy went then): nothing to drop.
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if std::fs::remove_file(&path).is_ok() {
                    segment.evicted = true;
                    changed = true;
                    used = used.saturating_sub(meta.len());
                    evicted.segments += 1;
                    evicted.bytes += meta.len();
                    evicted.records += segment.records;
                }
            }
            if changed {
                let _ = manifest.write(dir);
            }
        }
        used <= max
    }
}

/// Bytes a recording holds, uploaded or not: its sealed segments (as listed) and the segment
/// being written.
pub fn recording_bytes(dir: &Path) -> u64 {
    let manifest = Manifest::read(dir).unwrap_or_default();
    let listed: u64 = manifest.segments.iter().map(|s| s.bytes).sum();
    let unlisted: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains("seg-") && !manifest.segments.iter().any(|s| s.name == name)
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    listed + unlisted
}

pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => dirs.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
