//! `retrace verify`: integrity of every sealed segment, with or without the identity.

use std::path::PathBuf;

use retrace_agent::{audit::Subject, keys, Manifest};

#[derive(clap::Args)]
pub struct Args {
    /// Recording directory (or s3://BUCKET/PREFIX).
    recording: PathBuf,
    /// Also decrypt and check each segment's binding (default: your identity, if it is one of
    /// the recording's recipients; without one only the ciphertext is checked).
    #[arg(long, short = 'i')]
    identity: Option<PathBuf>,
    /// The report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let local = super::local_copy(&args.recording)?;
    let manifest = Manifest::read(&local)?;
    let identity = match &args.identity {
        Some(path) => Some(keys::read_identity(path)?),
        // The default identity, if it is one the recording was made for.
        None => {
            keys::identity_for_reading(None).ok().filter(|id| manifest.recipients.contains(&id.to_public().to_string()))
        }
    };
    super::audit("verify", Subject::recording(&args.recording, &manifest.id))?;
    let report = retrace_agent::verify(&local, identity)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for problem in &report.problems {
            println!("FAIL {problem}");
        }
        let checked = if report.decrypted { "decrypted and checked" } else { "ciphertext checked (no identity)" };
        let state = if report.complete { "complete" } else { "unfinished" };
        if let Some(tail) = &report.unfinished_tail {
            println!("note: unfinished tail {tail}: the recorder stopped before sealing it");
        }
        if !report.evicted.is_empty() {
            println!(
                "note: {} segments dropped by the node agent's full spool before upload (gaps): {}",
                report.evicted.len(),
                report.evicted.join(", ")
            );
        }
        println!(
            "{} {}: {} segments, {checked}, {state}",
            if report.ok() { "OK" } else { "FAILED" },
            args.recording.display(),
            report.segments
        );
    }
    Ok(if report.ok() { 0 } else { 1 })
}
