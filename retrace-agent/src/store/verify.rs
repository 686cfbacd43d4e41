//! `verify`: every sealed segment against the manifest (hash, presence, order), and with an
//! identity also its encryption and its binding to the recording and to the segment before it.
//! Each problem names its segment.

use std::path::Path;

use serde::Serialize;

use super::{
    io_err,
    manifest::Manifest,
    reader::{read_sealed, Recording},
    writer::{partial_name, segment_name},
    StoreError,
};
use crate::keys::Identity;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub recording_id: String,
    pub segments: usize,
    /// Whether segments were decrypted (an identity was given) or only hashed.
    pub decrypted: bool,
    pub complete: bool,
    /// What is wrong, one line per problem, each naming its file.
    pub problems: Vec<String>,
    /// The recorder stopped before finishing: the segment it was writing (not an error).
    pub unfinished_tail: Option<String>,
    /// Segments the node agent's spool dropped before upload (a counted gap, not an error).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(dir: &Path, identity: Option<Identity>) -> Result<VerifyReport, StoreError> {
    let manifest = Manifest::read(dir)?;
    let mut report = VerifyReport {
        recording_id: manifest.id.clone(),
        segments: manifest.segments.len(),
        decrypted: identity.is_some(),
        complete: manifest.complete,
        ..Default::default()
    };
    let recording = identity.map(|identity| Recording::with_manifest(dir, manifest.clone(), identity));
    let mut prev = Vec::new();
    let mut saw_last = false;
    for (index, entry) in manifest.segments.iter().enumerate() {
        let mut problem = |what: String| report.problems.push(format!("{}: {what}", entry.name));
        if entry.name != segment_name(index) {
            problem(format!("listed in place {index}, where {} belongs", segment_name(index)));
        }
        if entry.evicted {
            report.evicted.push(entry.name.clone());
            // Its end record is gone with it: whether it was the last one cannot be checked.
            saw_last |= index + 1 == manifest.segments.len();
            prev = crate::hex::decode(&entry.blake3);
            continue;
        }
        match (read_sealed(dir, entry), &recording) {
            (Err(StoreError::Tampered { what, .. }), _) => problem(what),
            (Err(e), _) => return Err(e),
            (Ok(_), None) => {}
            (Ok(ciphertext), Some(rec)) => match rec.decode_sealed(&dir.join(&entry.name), &ciphertext, index, &prev) {
                Ok((end, _)) => {
                    if saw_last {
                        problem("follows the segment marked last".into());
                    }
                    saw_last |= end.last;
                    if end.records != entry.records {
                        problem(format!("holds {} records, the manifest says {}", end.records, entry.records));
                    }
                }
                Err(StoreError::Tampered { what, .. }) => problem(what),
                Err(e) => problem(format!("{e}")),
            },
        }
        prev = crate::hex::decode(&entry.blake3);
    }
    if report.decrypted && manifest.complete && !saw_last {
        report.problems.push("the recording is marked complete but its last segment is missing".into());
    }
    // Segment files the manifest does not list.
    let listed = manifest.segments.len();
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("seg-"))
        .collect();
    entries.sort();
    for name in entries {
        if manifest.segments.iter().any(|s| s.name == name) {
            continue;
        }
        let tail = !manifest.complete && (name == segment_name(listed) || name == partial_name(listed));
        if tail {
            report.unfinished_tail = Some(name);
        } else {
            report.problems.push(format!("{name}: not listed in the manifest (foreign or left over)"));
        }
    }
    Ok(report)
}
