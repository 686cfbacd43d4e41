//! `retrace cat`: raw bytes of one direction of one stream.

use anyhow::bail;
use retrace_agent::{store::proto::Direction, view};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// Stream id (see `retrace streams`).
    stream: u64,
    /// What the process read or received.
    #[arg(long = "in", conflicts_with = "output", required_unless_present = "output")]
    input: bool,
    /// What the process wrote or sent.
    #[arg(long = "out")]
    output: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let recording = args.source.open(&format!("cat {}", args.stream))?;
    let dir = if args.input { Direction::In } else { Direction::Out };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let report = view::cat(&recording, args.stream, dir, &mut out)?;
    if !report.found {
        bail!(
            "no stream {} in {}: list them with `retrace streams {}`",
            args.stream,
            args.source.recording.display(),
            args.source.recording.display()
        );
    }
    if report.gaps > 0 {
        eprintln!(
            "retrace: warning: {} gap(s), {} bytes not recorded, are left out of this output",
            report.gaps, report.gap_bytes
        );
    }
    Ok(0)
}
