//! `retrace keygen`: a new age identity for reading recordings.

use std::path::PathBuf;

use retrace_agent::{audit::Subject, keys};

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the identity (created with mode 0600; never overwritten).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let recipient = keys::write_new_identity(&args.output)?;
    super::audit("keygen", Subject { detail: format!("recipient {recipient}"), ..Default::default() })?;
    eprintln!("retrace: identity written to {} (keep it private); its recipient:", args.output.display());
    println!("{recipient}");
    Ok(0)
}
