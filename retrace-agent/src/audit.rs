//! The audit log: JSON lines, append-only and hash-chained. Each entry carries the hash of the
//! one before it and its own hash over its content, and a head file names the last entry, so
//! an edited, removed, reordered or cut-off entry breaks the chain. An action that cannot be
//! logged does not happen: callers log first.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the audit log `{path}` ({source}); fix its folder or set RETRACE_AUDIT_LOG")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the audit log `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a state folder for the audit log: set XDG_STATE_HOME, HOME or RETRACE_AUDIT_LOG")]
    NoStateDir,
}

/// One line of the log. Field order is the hashed order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub seq: u64,
    /// Wall clock, RFC 3339 UTC.
    pub time: String,
    pub uid: u32,
    pub user: String,
    pub host: String,
    pub pid: u32,
    /// record_start, record_stop, read, verify, export, gc_delete, keygen...
    pub action: String,
    /// Recording directory (absolute when known).
    pub recording: String,
    pub recording_id: String,
    pub detail: String,
    /// Hash of the previous entry (empty for the first).
    pub prev: String,
    pub hash: String,
}

impl Entry {
    fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let text = serde_json::to_vec(&unhashed).expect("entry serialises");
        crate::hex::encode(&Sha256::digest(&text))
    }
}

/// What an action is about.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub recording: String,
    pub recording_id: String,
    pub detail: String,
}

impl Subject {
    pub fn recording(dir: &Path, id: &str) -> Subject {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Subject { recording: abs.display().to_string(), recording_id: id.to_owned(), detail: String::new() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Subject {
        self.detail = detail.into();
        self
    }
}

/// `RETRACE_AUDIT_LOG`, else `$XDG_STATE_HOME/retrace/audit.jsonl` (`~/.local/state/...`).
pub fn default_path() -> Result<PathBuf, AuditError> {
    if let Some(p) = std::env::var_os("RETRACE_AUDIT_LOG").filter(|v| !v.is_empty()) {
        return Ok(p.into());
    }
    Ok(crate::xdg_retrace_dir("XDG_STATE_HOME", ".local/state").ok_or(AuditError::NoStateDir)?.join("audit.jsonl"))
}

fn head_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".head");
    log.with_file_name(name)
}

/// Appends one entry (under an exclusive lock) and returns it.
pub fn log(path: &Path, action: &str, subject: &Subject) -> Result<Entry, AuditError> {
    let werr = |source| AuditError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).map_err(werr)?;
    // SAFETY: flock on our own fd; released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(werr(std::io::Error::last_os_error()));
    }
    let last = last_entry(&mut file).map_err(werr)?;
    let (uid, user) = whoami();
    let mut entry = Entry {
        seq: last.as_ref().map_or(0, |e| e.seq + 1),
        time: rfc3339_now(),
        uid,
        user,
        host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        pid: std::process::id(),
        action: action.to_owned(),
        recording: subject.recording.clone(),
        recording_id: subject.recording_id.clone(),
        detail: subject.detail.clone(),
        prev: last.map(|e| e.hash).unwrap_or_default(),
        hash: String::new(),
    };
    entry.hash = entry.compute_hash();
    let mut line = serde_json::to_vec(&entry).expect("entry serialises");
    line.push(b'\n');
    file.write_all(&line).and_then(|_| file.sync_data()).map_err(werr)?;
    let head = head_path(path);
    let tmp = head.with_extension("head.tmp");
    fs::write(&tmp, format!("{} {}\n", entry.seq, entry.hash)).and_then(|_| fs::rename(&tmp, &head)).map_err(werr)?;
    Ok(entry)
}

/// The last entry of the log, read from its end.
fn last_entry(file: &mut File) -> std::io::Result<Option<Entry>> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(1 << 16);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => serde_json::from_str(line)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("last entry unreadable: {e}"))),
        None => Ok(None),
    }
}

/// What `audit verify` found.
#[derive(Debug, Default, Serialize)]
pub struct ChainReport {
    pub entries: u64,
    pub problems: Vec<String>,
}

pub fn verify(path: &Path) -> Result<ChainReport, AuditError> {
    let text = fs::read_to_string(path).map_err(|source| AuditError::Read { path: path.to_path_buf(), source })?;
    let mut report = ChainReport::default();
    let mut prev: Option<Entry> = None;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let entry: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(_) => {
                report.problems.push(format!("line {line_no}: not an audit entry"));
                continue;
            }
        };
        report.entries += 1;
        if entry.compute_hash() != entry.hash {
            report
                .problems
                .push(format!("line {line_no} (seq {}): edited (its hash does not match its content)", entry.seq));
        }
        let want_seq = prev.as_ref().map_or(0, |p| p.seq + 1);
        if entry.seq != want_seq {
            report.problems.push(format!(
                "line {line_no}: seq {} where {want_seq} was due (an entry was removed or the order changed)",
                entry.seq
            ));
        }
        let want_prev = prev.as_ref().map(|p| p.hash.clone()).unwrap_or_default();
        if entry.prev != want_prev {
            report.problems.push(format!("line {line_no} (seq {}): does not chain to the entry before it", entry.seq));
        }
        prev = Some(entry);
    }
    match fs::read_to_string(head_path(path)) {
        Ok(head) => {
            let last = prev.as_ref().map(|e| format!("{} {}", e.seq, e.hash)).unwrap_or_default();
            if head.trim() != last {
                report.problems.push(format!(
                    "the log ends at seq {} but its head file names `{}`: entries were cut off the end",
                    prev.as_ref().map_or(-1, |e| e.seq as i64),
                    head.trim()
                ));
            }
        }
        Err(_) if prev.is_none() => {}
        Err(_) => report.problems.push("the head file is missing".into()),
    }
    Ok(report)
}

fn whoami() -> (u32, String) {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string());
    (uid.as_raw(), user)
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let ns = crate::clock::now_wall_ns();
    rfc3339(ns)
}

pub fn rfc3339(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns % 1_000_000_000 / 1_000_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_000_000_123_000_000), "2026-11-18T11:06:40.123Z");
        assert_eq!(super::rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }
}
