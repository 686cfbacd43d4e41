//! `retrace streams`: one line (or JSON object) per stream.

use retrace_agent::view;

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
    let recording = args.source.open("streams")?;
    let (rows, report) = view::stream_table(&recording)?;
    for row in &rows {
        if json {
            println!("{}", serde_json::to_string(row)?);
        } else {
            let name = match row.kind {
                "tcp" | "udp" | "unix" if !row.peer.is_empty() || !row.local.is_empty() => {
                    format!("{} -> {}", or_dash(&row.local), or_dash(&row.peer))
                }
                "tls" => {
                    let mut name = format!("{} -> {}", or_dash(&row.local), or_dash(&row.peer));
                    for (key, value) in [
                        ("sni", &row.sni),
                        ("alpn", &row.alpn),
                        ("version", &row.tls_version),
                        ("library", &row.tls_library),
                    ] {
                        if !value.is_empty() {
                            name.push_str(&format!(" {key}={value}"));
                        }
                    }
                    if row.carrier != 0 {
                        name.push_str(&format!(" over stream {}", row.carrier));
                    }
                    name
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
    super::warn_unfinished(&report);
    Ok(0)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}
