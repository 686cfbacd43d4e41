//! Command-line interface: one file per subcommand; no capture logic lives here.

mod agent;
mod audit;
mod capture;
mod cat;
mod export;
mod gc;
mod inspect;
mod keygen;
mod record;
mod replay;
mod resume_guard;
mod size;
mod streams;
mod upload;
mod verify;

use std::{os::unix::fs::DirBuilderExt as _, path::PathBuf};

use clap::{Parser, Subcommand};
use retrace_agent::{
    audit::{self as audit_log, Subject},
    keys, Manifest, Recording, StoreError,
};

#[derive(Parser)]
#[command(name = "retrace", version, about = "Record what a process reads and writes, byte for byte")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a command (after `--`) or a running process (`--pid`).
    Record(record::Args),
    /// List the streams (files, connections, pipes) of a recording.
    Streams(streams::Args),
    /// Write the raw bytes of one direction of one stream to stdout.
    Cat(cat::Args),
    /// Print the timeline: drop counters first, then one event per line.
    Inspect(inspect::Args),
    /// Run a program in a sandbox against a recording: recorded peers answer it, recorded
    /// files feed it, nothing else is reachable.
    Replay(replay::Args),
    /// Make an age identity (private key, mode 0600) and print its recipient (public key).
    Keygen(keygen::Args),
    /// Check every sealed segment of a recording; report an unfinished tail.
    Verify(verify::Args),
    /// Write a sanitised, re-encrypted copy of a recording for one recipient.
    Export(export::Args),
    /// Delete every expired recording under a folder.
    Gc(gc::Args),
    /// Copy a recording to S3-compatible object storage (segments, then the manifest).
    Upload(upload::Args),
    /// Run as a node agent: record what capture requests select, upload, serve metrics.
    Agent(agent::Args),
    /// Capture requests for node agents (start, list, stop).
    #[command(subcommand)]
    Capture(capture::Command),
    /// The audit log of every recording access.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Started by `record --backpressure`: continues the processes it paused if it dies.
    #[command(hide = true)]
    ResumeGuard(resume_guard::Args),
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if !matches!(cli.command, Command::Record(_) | Command::Agent(_)) {
        // Readers end quietly when their reader goes away (`retrace streams rec | head`).
        // SAFETY: restores the default disposition before any output.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Record(args) => record::run(args),
        Command::Streams(args) => streams::run(args),
        Command::Cat(args) => cat::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Export(args) => export::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Upload(args) => upload::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Capture(cmd) => capture::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::ResumeGuard(args) => resume_guard::run(args),
    }
}

/// Logs `action` on `subject` to the audit log; the action must not happen if this fails.
pub fn audit(action: &str, subject: Subject) -> anyhow::Result<()> {
    let path = audit_log::default_path()?;
    audit_log::log(&path, action, &subject).map_err(|e| StoreError::Audit(e.to_string()))?;
    Ok(())
}

/// The recording a reading command opens, and the identity to decrypt it with.
#[derive(clap::Args)]
pub struct Source {
    /// Recording directory (or s3://BUCKET/PREFIX: fetched into a private temporary folder).
    pub recording: PathBuf,
    /// age identity file to decrypt with (default: your retrace identity).
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
}

impl Source {
    /// Opens the recording to read it: refuses an expired one, logs the read (`what`), then
    /// decrypts with the identity given (or the default one).
    pub fn open(&self, what: &str) -> anyhow::Result<Recording> {
        let local = local_copy(&self.recording)?;
        let manifest = Manifest::read(&local)?;
        let now = retrace_agent::clock::now_wall_ns();
        if manifest.expired(now) {
            return Err(StoreError::Expired { when: audit_log::rfc3339(manifest.expires_ns) }.into());
        }
        let identity = keys::identity_for_reading(self.identity.as_deref())?;
        audit("read", Subject::recording(&self.recording, &manifest.id).detail(what))?;
        Ok(Recording::with_manifest(&local, manifest, identity))
    }
}

/// Recordings fetched from object storage for this command, removed when it ends.
static FETCHED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Where to read the recording at `path`: itself, or for `s3://bucket/prefix` a private local
/// copy (ciphertext, as stored), removed by `cleanup`.
pub fn local_copy(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if !retrace_agent::store::remote::is_remote(path) {
        return Ok(path.to_owned());
    }
    let url = path.to_string_lossy();
    let remote = retrace_agent::store::remote::Remote::open(&url)?;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    remove_stale_copies();
    let dir = std::env::temp_dir().join(format!("retrace-fetch-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| anyhow::anyhow!("cannot make a folder for {url} in {}: {e}", dir.display()))?;
    FETCHED.lock().expect("fetched").push(dir.clone());
    remote.fetch(&dir)?;
    Ok(dir)
}

/// Copies left by commands that were killed (a reader piped into `head` ends by SIGPIPE).
fn remove_stale_copies() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("retrace-fetch-").and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the local copies of fetched recordings.
pub fn cleanup() {
    for dir in FETCHED.lock().expect("fetched").drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn warn_unfinished(report: &retrace_agent::store::reader::ReadReport) {
    if let Some((segment, records)) = &report.torn_tail {
        eprintln!(
            "retrace: warning: recording unfinished (the recorder stopped without sealing it): {records} records read from its unsealed tail {segment}"
        );
    }
    if !report.evicted.is_empty() {
        let records: u64 = report.evicted.iter().map(|(_, r)| r).sum();
        let names: Vec<&str> = report.evicted.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!(
            "retrace: warning: {} segments ({records} records) were dropped by the node agent's full spool before upload: {}",
            names.len(),
            names.join(", ")
        );
    }
}
