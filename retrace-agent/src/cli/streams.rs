//! `retrace streams`: one line (or JSON object) per stream.

use std::path::Path;

use retrace_agent::{store::Recording, view};

pub fn run(dir: &Path, json: bool) -> anyhow::Result<i32> {
    let recording = Recording::open(dir)?;
    let (rows, report) = view::stream_table(&recording)?;
    for row in &rows {
        if json {
            println!("{}", serde_json::to_string(row)?);
        } else {
            let name = match row.kind {
                "tcp" | "udp" | "unix" if !row.peer.is_empty() || !row.local.is_empty() => {
                    format!("{} -> {}", or_dash(&row.local), or_dash(&row.peer))
                }
                _ => row.path.clone(),
            };
            let lost = if row.lost_bytes_in + row.lost_bytes_out > 0 {
                format!("  lost in={} out={}", row.lost_bytes_in, row.lost_bytes_out)
            } else {
                String::new()
            };
            let joined = if row.joined_mid_stream { "  (joined mid-stream)" } else { "" };
            println!(
                "{:>4}  {:<5} pid={:<7} fd={:<4} in={:<10} out={:<10} {name}{lost}{joined}",
                row.id, row.kind, row.pid, row.fd, row.bytes_in, row.bytes_out
            );
        }
    }
    if let Some((segment, offset)) = report.torn_tail {
        eprintln!("retrace: warning: recording unfinished: {segment} ends mid-record at byte {offset}");
    }
    Ok(0)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
