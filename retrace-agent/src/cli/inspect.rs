//! `retrace inspect`: the timeline, drop counters first.

use std::io::Write as _;

use retrace_agent::{
    store::proto_text,
    view::{self, TimelineEntry},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: super::Source,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.json;
    let recording = args.source.open("inspect")?;
    let (entries, report) = view::timeline(&recording)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let m = &recording.manifest;
    if !json {
        let command = report.info.as_ref().map(|i| i.command.clone()).unwrap_or_default();
        writeln!(out, "recording {} ({}): {:?} pid {} complete={}", m.id, m.mode, command, m.root_pid, m.complete)?;
    }
    for entry in &entries {
        let line = if json { serde_json::to_string(entry)? } else { human(entry) };
        if writeln!(out, "{line}").is_err() {
            return Ok(0); // stdout closed (e.g. `| head`)
        }
    }
    super::warn_unfinished(&report);
    Ok(0)
}

fn human(entry: &TimelineEntry) -> String {
    match entry {
        TimelineEntry::Counters(c) => format!(
            "counters: chunks_dropped={} chunk_bytes_dropped={} records_dropped={} task_records_dropped={} fault_bytes={} truncated_bytes={} captured_bytes={} unattributed_bytes={} program_misses={}",
            c.chunks_dropped, c.chunk_bytes_dropped, c.records_dropped, c.task_records_dropped, c.fault_bytes, c.truncated_bytes, c.captured_bytes, c.unattributed_bytes, c.program_misses
        ),
        TimelineEntry::Stream(s) => format!(
            "{} stream {} {} pid={} fd={} path={:?} local={:?} peer={:?} origin={}{}",
            ts(s.ts_ns), s.id, retrace_agent::streams::kind_name(s.kind()), s.pid, s.fd, s.path, s.local, s.peer, s.origin,
            if s.joined_mid_stream { " joined-mid-stream" } else { "" }
        ),
        TimelineEntry::Syscall(s) => {
            let stream = if s.stream_id != 0 { format!(" stream={}", s.stream_id) } else { String::new() };
            let detail = if s.detail.is_empty() { String::new() } else { format!(" {:?}", s.detail) };
            format!("{} {}/{} {}({}) = {}{stream}{detail}", ts(s.ts_ns), s.pid, s.tid, proto_text::text(&s.name), s.args.first().map(|a| (*a as i32).to_string()).unwrap_or_default(), s.ret)
        }
        TimelineEntry::Data { ts_ns, stream_id, direction, offset, len, syscall, pid, tid, preview, redactions } => {
            let redacted = if redactions.is_empty() {
                String::new()
            } else {
                let spans: Vec<String> = redactions.iter().map(|(o, l, rule)| format!("{rule}@{o}+{l}")).collect();
                format!(" redacted[{}]", spans.join(","))
            };
            format!("{} {pid}/{tid} data stream={stream_id} {direction} @{offset} {len}B ({syscall}) {preview:?}{redacted}", ts(*ts_ns))
        }
        TimelineEntry::Gap { ts_ns, stream_id, direction, offset, length, reason, syscall } => {
            format!("{} GAP stream={stream_id} {direction} @{offset} {length}B lost: {reason} ({syscall})", ts(*ts_ns))
        }
        TimelineEntry::Close(c) => format!("{} close stream={}", ts(c.ts_ns), c.stream_id),
        TimelineEntry::Process(p) => match p.event.as_str() {
            "fork" | "thread" => format!("{} {} {} -> {}", ts(p.ts_ns), p.event, p.pid, p.child),
            "exec" => format!("{} exec {} {}", ts(p.ts_ns), p.pid, p.path),
            "exit" => format!("{} exit {} status={}", ts(p.ts_ns), p.pid, p.exit_status),
            _ => format!("{} {} {}/{}", ts(p.ts_ns), p.event, p.pid, p.tid),
        },
    }
}

fn ts(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, ns % 1_000_000_000 / 1000)
}
