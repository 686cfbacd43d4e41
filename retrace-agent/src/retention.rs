//! Retention: every recording carries an expiry; `gc` deletes the expired ones under a folder.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::store::{manifest::MANIFEST, Manifest, StoreError};

/// Parses `7d`, `12h`, `30m`, `45s` (a plain number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return Err(format!("`{text}` is not a duration: use a number with s, m, h, d or w (e.g. 7d)")),
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!("`{text}` is not a duration: use a positive number with s, m, h, d or w (e.g. 7d)")),
    }
}

/// A recording found under a store folder.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub manifest: Result<Manifest, String>,
}

/// Every recording (folder with a manifest) under `store`, the store itself included, a few
/// levels deep; symlinks are not followed.
pub fn find_recordings(store: &Path) -> Result<Vec<Found>, StoreError> {
    let mut found = Vec::new();
    let mut queue = vec![(store.to_path_buf(), 0)];
    if !store.is_dir() {
        return Err(StoreError::NotFound { path: store.to_path_buf() });
    }
    while let Some((dir, depth)) = queue.pop() {
        if dir.join(MANIFEST).is_file() {
            let manifest = Manifest::read(&dir).map_err(|e| e.to_string());
            found.push(Found { dir, manifest });
            continue;
        }
        if depth >= 4 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}
