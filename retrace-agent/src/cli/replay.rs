//! `retrace replay`: run a program in the sandbox against a recording.

use std::path::PathBuf;

use retrace_agent::replay::{self, ReplayConfig};

/// Exit status when the replay diverged from the recording or something was blocked.
pub const DIVERGED: i32 = 86;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// Write the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Report divergences but exit with the program's own status.
    #[arg(long)]
    lenient: bool,
    /// Serve paths matching this glob from the disk even if the recording read them
    /// (e.g. the code under test). Repeatable.
    #[arg(long, value_name = "GLOB")]
    live: Vec<String>,
    /// Copy the files the program wrote into DIR after the run (at their paths, e.g. DIR/etc/x
    /// for /etc/x; removed paths listed in DIR/.removed), for a look.
    #[arg(long, value_name = "DIR")]
    keep_scratch: Option<PathBuf>,
    /// A rules file whose `[noise]` names HTTP headers and regexes that may differ
    /// (besides the built-in noisy headers: Date, ETag, Last-Modified, request ids...).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// The program to replay, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let recording = args.source.open("replay")?;
    let noise = match &args.rules {
        Some(path) => retrace_agent::redact::RulesFile::read(path)?.noise()?,
        None => Default::default(),
    };
    let config = ReplayConfig { argv: args.command, live: args.live, keep_scratch: args.keep_scratch, noise };
    let report = replay::replay(&recording, &config)?;
    eprint!("{}", report.summary());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
    }
    Ok(if report.passed() || args.lenient { report.exit_status } else { DIVERGED })
}
