//! The agent's counters, as Prometheus text on `/metrics`, with `/healthz` and `/readyz`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

#[derive(Default)]
pub struct Metrics {
    /// Probe sets loaded (one, shared by every capture).
    pub probe_sets: AtomicU64,
    pub captures_active: AtomicU64,
    pub captures_started: AtomicU64,
    pub captures_finished: AtomicU64,
    pub captures_failed: AtomicU64,
    pub captures_rejected_policy: AtomicU64,
    pub captures_rejected_invalid: AtomicU64,
    pub bytes_captured: AtomicU64,
    pub bytes_redacted: AtomicU64,
    pub bytes_lost: AtomicU64,
    pub segments_sealed: AtomicU64,
    pub segments_uploaded: AtomicU64,
    pub recordings_uploaded: AtomicU64,
    pub upload_errors: AtomicU64,
    pub ring_overflow_bytes: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self, spool: &std::path::Path) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let get = |a: &AtomicU64| a.load(Relaxed);
        metric(
            "retrace_probe_sets",
            "gauge",
            "eBPF probe sets loaded (shared by every capture).",
            &[("", get(&self.probe_sets))],
        );
        metric("retrace_captures_active", "gauge", "Captures recording now.", &[("", get(&self.captures_active))]);
        metric("retrace_captures_started_total", "counter", "Captures started.", &[("", get(&self.captures_started))]);
        metric(
            "retrace_captures_finished_total",
            "counter",
            "Captures that ended, by outcome.",
            &[
                ("{outcome=\"recorded\"}", get(&self.captures_finished)),
                ("{outcome=\"failed\"}", get(&self.captures_failed)),
            ],
        );
        metric(
            "retrace_captures_rejected_total",
            "counter",
            "Capture requests not started, by reason.",
            &[
                ("{reason=\"policy\"}", get(&self.captures_rejected_policy)),
                ("{reason=\"invalid\"}", get(&self.captures_rejected_invalid)),
            ],
        );
        metric(
            "retrace_bytes_total",
            "counter",
            "Payload bytes of finished captures, by what became of them.",
            &[
                ("{what=\"captured\"}", get(&self.bytes_captured)),
                ("{what=\"redacted\"}", get(&self.bytes_redacted)),
                ("{what=\"lost\"}", get(&self.bytes_lost)),
            ],
        );
        metric(
            "retrace_ring_overflow_bytes_total",
            "counter",
            "Bytes dropped because a kernel ring buffer was full.",
            &[("", get(&self.ring_overflow_bytes))],
        );
        metric("retrace_segments_sealed_total", "counter", "Segments sealed.", &[("", get(&self.segments_sealed))]);
        metric(
            "retrace_segments_uploaded_total",
            "counter",
            "Segments uploaded to object storage.",
            &[("", get(&self.segments_uploaded))],
        );
        metric(
            "retrace_recordings_uploaded_total",
            "counter",
            "Recordings uploaded whole (manifest last).",
            &[("", get(&self.recordings_uploaded))],
        );
        metric("retrace_upload_errors_total", "counter", "Failed uploads.", &[("", get(&self.upload_errors))]);
        metric("retrace_spool_bytes", "gauge", "Bytes in the node's spool.", &[("", dir_bytes(spool))]);
        out
    }
}

pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => dirs.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready: the captures folder readable, the spool
/// writable) on `listener`, one request per connection.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, spool: PathBuf, captures: PathBuf) {
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => continue,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/metrics" => ("200 OK", metrics.render(&spool)),
            "/healthz" => ("200 OK", "ok\n".to_owned()),
            "/readyz" => {
                let probe = spool.join(".ready");
                let writable = std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe)).is_ok();
                if writable && std::fs::read_dir(&captures).is_ok() {
                    ("200 OK", "ready\n".to_owned())
                } else {
                    ("503 Service Unavailable", "spool not writable or captures folder unreadable\n".to_owned())
                }
            }
            _ => ("404 Not Found", "not found\n".to_owned()),
        };
        let kind = if path == "/metrics" { "text/plain; version=0.0.4" } else { "text/plain" };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
