//! Command-line interface: one file per subcommand; no capture logic lives here.

mod cat;
mod inspect;
mod record;
mod size;
mod streams;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    Streams {
        /// Recording directory.
        recording: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Write the raw bytes of one direction of one stream to stdout.
    Cat(cat::Args),
    /// Print the timeline: drop counters first, then one event per line.
    Inspect {
        recording: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        Command::Streams { recording, json } => streams::run(&recording, json),
        Command::Cat(args) => cat::run(args),
        Command::Inspect { recording, json } => inspect::run(&recording, json),
    }
}
