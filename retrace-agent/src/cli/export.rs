//! `retrace export`: a sanitised copy of a recording for one recipient.

use std::path::PathBuf;

use retrace_agent::{audit::Subject, keys, retention, RulesFile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// The recipient (age1…) who will read the copy; nobody else can, you included.
    #[arg(long, value_name = "RECIPIENT")]
    to: String,
    /// Directory to create for the copy.
    #[arg(short, long)]
    output: PathBuf,
    /// How long the copy is kept (s, m, h, d, w).
    #[arg(long, default_value = "1d", value_parser = retention::parse_duration)]
    expires: std::time::Duration,
    /// Redaction rules and capture allowlist to apply (on top of every built-in detector).
    #[arg(long)]
    rules: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let to = keys::parse_recipient(&args.to)?;
    // At their strictest, compiled once: a bad rules file fails before anything is read.
    let rules = match &args.rules {
        Some(path) => RulesFile::read(path)?,
        None => RulesFile::default(),
    }
    .strictest()
    .check()?;
    let source = args.source.open("export")?;
    super::audit(
        "export",
        Subject::recording(&args.source.recording, &source.manifest.id)
            .detail(format!("to {to} as {}", args.output.display())),
    )?;
    let (manifest, _) = retrace_agent::export(&source, &rules, to, args.expires, &args.output)?;
    eprintln!(
        "retrace: exported {} to {} for {} (expires {}); see {}",
        source.manifest.id,
        args.output.display(),
        manifest.recipients.join(", "),
        retrace_agent::audit::rfc3339(manifest.expires_ns),
        args.output.join(retrace_agent::export::NOTE).display()
    );
    Ok(0)
}
