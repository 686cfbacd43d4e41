//! `retrace cat`: raw bytes of one direction of one stream, or the content a file was left
//! with.

use anyhow::bail;
use retrace_agent::{filestate, store::proto::Direction, view};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// Stream id (see `retrace streams`).
    stream: u64,
    /// What the process read or received.
    #[arg(long = "in", conflicts_with_all = ["output", "file"], required_unless_present_any = ["output", "file"])]
    input: bool,
    /// What the process wrote or sent.
    #[arg(long = "out", conflicts_with = "file")]
    output: bool,
    /// The file this stream had open, as the recording left it: every read and write of the
    /// path (by any stream) at its file offset, in order. Bytes never seen are zeros, reported
    /// on stderr as holes.
    #[arg(long)]
    file: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let recording = args.source.open(&format!("cat {}", args.stream))?;
    if args.file {
        return file(&recording, &args);
    }
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

fn file(recording: &retrace_agent::store::Recording, args: &Args) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let Some((path, history)) = filestate::history_of_stream(recording, args.stream)? else {
        bail!(
            "stream {} of {} is no file: list the streams with `retrace streams {}`",
            args.stream,
            args.source.recording.display(),
            args.source.recording.display()
        );
    };
    if !history.placed {
        bail!("this recording has no file offsets for {path} (it was made by an older Retrace): use --in or --out");
    }
    let content = history.final_content();
    std::io::stdout().lock().write_all(&content.content)?;
    if !content.holes.is_empty() {
        let bytes: u64 = content.holes.iter().map(|(a, b)| b - a).sum();
        let ranges: Vec<String> = content.holes.iter().take(8).map(|(a, b)| format!("{a}..{b}")).collect();
        eprintln!(
            "retrace: {path}: {bytes} bytes never seen (zeros here) in {} hole(s): {}{}",
            content.holes.len(),
            ranges.join(", "),
            if content.holes.len() > 8 { ", ..." } else { "" }
        );
    }
    if content.unplaced > 0 {
        eprintln!("retrace: {path}: {} bytes appended where the file's end was unknown are left out", content.unplaced);
    }
    Ok(0)
}
