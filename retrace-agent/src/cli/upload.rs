//! `retrace upload`: a recording into S3-compatible object storage.

use std::path::PathBuf;

use retrace_agent::{
    audit::Subject,
    store::{remote::Remote, Manifest},
};

#[derive(clap::Args)]
pub struct Args {
    /// Recording directory.
    recording: PathBuf,
    /// Where: s3://BUCKET/PREFIX (credentials, region and endpoint from the AWS environment
    /// variables; AWS_ENDPOINT_URL for another S3 server).
    to: String,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let manifest = Manifest::read(&args.recording)?;
    if !manifest.complete {
        anyhow::bail!(
            "{} is not finished (still recording, or its recorder died): upload it once `retrace verify` says complete",
            args.recording.display()
        );
    }
    let remote = Remote::open(&args.to)?;
    super::audit("upload", Subject::recording(&args.recording, &manifest.id).detail(&args.to))?;
    let (uploaded, there) = remote.upload(&args.recording)?;
    eprintln!(
        "retrace: {} -> {}: {uploaded} segments uploaded, {there} already there, manifest last",
        args.recording.display(),
        args.to
    );
    Ok(0)
}
