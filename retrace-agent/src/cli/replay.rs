//! `retrace replay`: run a program in the sandbox against a recording.

use std::path::PathBuf;

use retrace_agent::{
    redact::{rules::NoiseSection, RulesFile},
    replay::{self, ReplayConfig},
};

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
    /// The noise learned by --denoise (noise.toml beside the recording) is always read too.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Replay the unchanged program more than once and keep what differed (header values,
    /// tokens in bodies and output lines) as noise in noise.toml beside the recording.
    #[arg(long)]
    denoise: bool,
    /// The program to replay, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How many replays `--denoise` makes at most (each learns from the one before).
const DENOISE_ROUNDS: usize = 6;

pub fn run(args: Args) -> anyhow::Result<i32> {
    let recording = args.source.open("replay")?;
    let noise = match &args.rules {
        Some(path) => RulesFile::read(path)?.noise.unwrap_or_default(),
        None => Default::default(),
    };
    let learned_path = replay::denoise::path(&args.source.recording);
    let mut learned = if learned_path.exists() {
        RulesFile::read(&learned_path)?.noise.unwrap_or_default()
    } else {
        Default::default()
    };
    let merged = |noise: &NoiseSection, learned: &NoiseSection| {
        let mut all = noise.clone();
        all.headers.extend(learned.headers.iter().cloned());
        all.patterns.extend(learned.patterns.iter().cloned());
        RulesFile::compile_noise(&all)
    };
    let mut config = ReplayConfig {
        argv: args.command,
        live: args.live,
        keep_scratch: args.keep_scratch,
        noise: merged(&noise, &learned)?,
    };
    let mut report = retrace_agent::replay(&recording, &config)?;
    if args.denoise {
        // Twice at least: a value that happened to match once may not the next time.
        let before = learned.clone();
        for round in 1..DENOISE_ROUNDS {
            let new = replay::denoise::learn(&report, &mut learned);
            if new == 0 && (round > 1 || !report.passed()) {
                break;
            }
            config.noise = merged(&noise, &learned)?;
            report = retrace_agent::replay(&recording, &config)?;
        }
        if learned != before {
            let path = replay::denoise::save(&args.source.recording, &learned)
                .map_err(|e| anyhow::anyhow!("cannot write the learned noise beside the recording: {e}"))?;
            eprintln!(
                "retrace: learned noise in {}: headers [{}], patterns [{}]",
                path.display(),
                learned.headers.join(", "),
                learned.patterns.join(", ")
            );
        } else {
            eprintln!("retrace: --denoise learned nothing new");
        }
    }
    eprint!("{}", report.summary());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
    }
    Ok(if report.passed() || args.lenient { report.exit_status } else { DIVERGED })
}
