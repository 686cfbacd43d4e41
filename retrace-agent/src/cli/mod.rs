//! Command-line interface: one file per subcommand; no capture logic lives here.

mod audit;
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
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use retrace_agent::{
    audit::{self as audit_log, Subject},
    keys,
    store::{Manifest, Recording, StoreError},
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
    /// The audit log of every recording access.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Started by `record --backpressure`: continues the processes it paused if it dies.
    #[command(hide = true)]
    ResumeGuard(resume_guard::Args),
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if !matches!(cli.command, Command::Record(_)) {
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
    /// Recording directory.
    pub recording: PathBuf,
    /// age identity file to decrypt with (default: your retrace identity).
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
}

impl Source {
    /// Opens the recording to read it: refuses an expired one, logs the read (`what`), then
    /// decrypts with the identity given (or the default one).
    pub fn open(&self, what: &str) -> anyhow::Result<Recording> {
        let manifest = Manifest::read(&self.recording)?;
        let now = retrace_agent::store::writer::now_wall_ns();
        if manifest.expired(now) {
            return Err(StoreError::Expired { when: audit_log::rfc3339(manifest.expires_ns) }.into());
        }
        let identity = keys::identity_for_reading(self.identity.as_deref())?;
        audit("read", Subject::recording(&self.recording, &manifest.id).detail(what))?;
        Ok(Recording::with_manifest(&self.recording, manifest, identity))
    }
}

pub fn warn_unfinished(report: &retrace_agent::store::reader::ReadReport) {
    if let Some((segment, records)) = &report.torn_tail {
        eprintln!(
            "retrace: warning: recording unfinished (the recorder stopped without sealing it): {records} records read from its unsealed tail {segment}"
        );
    }
}
