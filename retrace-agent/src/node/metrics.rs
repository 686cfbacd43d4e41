//! The agent's counters, as Prometheus text on `/metrics`, with `/healthz` and `/readyz`.

use super::spool::Spool;
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
    pub captures_shed_memory: AtomicU64,
    pub memory_bytes: AtomicU64,
    /// Pods or containers the running captures follow.
    pub targets: AtomicU64,
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
    pub upload_errors_storage: AtomicU64,
    pub upload_errors_conflict: AtomicU64,
    pub upload_errors_local: AtomicU64,
    pub spool_evicted_segments: AtomicU64,
    pub spool_evicted_bytes: AtomicU64,
    pub ring_overflow_bytes: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self, spool: &Spool) -> String {
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
        metric(
            "retrace_capture_targets",
            "gauge",
            "Pods or containers (cgroups) the running captures follow.",
            &[("", get(&self.targets))],
        );
        metric(
            "retrace_agent_resident_memory_bytes",
            "gauge",
            "The agent's resident memory (memory_max_bytes caps it).",
            &[("", get(&self.memory_bytes))],
        );
        metric(
            "retrace_captures_ended_for_memory_total",
            "counter",
            "Running captures ended early because the agent was over memory_max_bytes.",
            &[("", get(&self.captures_shed_memory))],
        );
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
            "retrace_bytes_captured_total",
            "counter",
            "Payload bytes recorded by finished captures.",
            &[("", get(&self.bytes_captured))],
        );
        metric(
            "retrace_bytes_redacted_total",
            "counter",
            "Payload bytes redacted at record time by finished captures.",
            &[("", get(&self.bytes_redacted))],
        );
        metric(
            "retrace_bytes_lost_total",
            "counter",
            "Payload bytes finished captures lost (explicit gaps in their recordings), by reason.",
            &[("{reason=\"capture\"}", get(&self.bytes_lost))],
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
        metric(
            "retrace_upload_errors_total",
            "counter",
            "Failed upload attempts (each retried with backoff), by reason.",
            &[
                ("{reason=\"storage\"}", get(&self.upload_errors_storage)),
                ("{reason=\"conflict\"}", get(&self.upload_errors_conflict)),
                ("{reason=\"local\"}", get(&self.upload_errors_local)),
            ],
        );
        metric("retrace_spool_bytes", "gauge", "Bytes in the node's spool.", &[("", spool.bytes())]);
        if let Some(max) = spool.max_bytes {
            metric("retrace_spool_max_bytes", "gauge", "The spool's bound (spool_max_bytes).", &[("", max)]);
        }
        metric(
            "retrace_spool_evicted_segments_total",
            "counter",
            "Sealed segments of ended captures dropped to keep the spool within its bound.",
            &[("", get(&self.spool_evicted_segments))],
        );
        metric(
            "retrace_spool_evicted_bytes_total",
            "counter",
            "Bytes of the segments dropped to keep the spool within its bound.",
            &[("", get(&self.spool_evicted_bytes))],
        );
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` (ready: the captures folder readable, the spool
/// writable) on `listener`, one request per connection.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, spool: Arc<Spool>, captures: Option<PathBuf>) {
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
                let probe = spool.root.join(".ready");
                let writable = std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe)).is_ok();
                let folder = captures.as_ref().is_none_or(|c| std::fs::read_dir(c).is_ok());
                let synced = spool.cluster.get().is_none_or(|c| c.synced());
                match (writable, folder, synced) {
                    (true, true, true) => ("200 OK", "ready\n".to_owned()),
                    (false, _, _) => ("503 Service Unavailable", "the spool is not writable\n".to_owned()),
                    (_, false, _) => ("503 Service Unavailable", "the captures folder is unreadable\n".to_owned()),
                    _ => ("503 Service Unavailable", "pods and capture requests not listed yet\n".to_owned()),
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
