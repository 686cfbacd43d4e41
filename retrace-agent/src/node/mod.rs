//! The node agent (`retrace agent --config FILE`): runs on a node, reads capture requests
//! (`RetraceCapture` objects) from a folder, records what each selects (a cgroup, a process)
//! for its duration into the node's spool, uploads each finished recording to object storage
//! (segments, then the manifest) and deletes the local copy only once it is uploaded; on start
//! it uploads what an earlier run left in the spool. Prometheus metrics, `/healthz` and
//! `/readyz` on `listen`; logs are JSON lines on stderr. SIGTERM stops every capture, which
//! seals and uploads what it has, then the agent exits; what could not be uploaded stays in the
//! spool for the next start.
//!
//! All captures share one probe set (`shared`): the kernel follows their processes and cgroups
//! together, and a router hands each event to its capture's pipeline.

pub mod config;
pub mod metrics;
pub mod pods;
pub mod request;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use config::AgentConfig;
use metrics::Metrics;
use request::CaptureObject;
use serde_json::json;

use crate::{
    capture::ProbeConfig,
    recorder::{RecordConfig, RecordSummary},
    redact::RulesFile,
    shared::SharedProbes,
    store::{remote::Remote, writer::now_wall_ns, Manifest, SegmentPolicy},
    target::Target,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the spool folder {path}: {source}")]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] crate::store::remote::RemoteError),
    #[error(transparent)]
    Probes(#[from] crate::recorder::RecordError),
}

/// One JSON line on stderr.
pub fn log(level: &str, message: &str, fields: serde_json::Value) {
    let mut line = json!({ "ts_ns": now_wall_ns(), "level": level, "msg": message });
    if let (Some(line), Some(fields)) = (line.as_object_mut(), fields.as_object()) {
        line.extend(fields.clone());
    }
    eprintln!("{line}");
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
}

/// Runs until `stop` is set (SIGTERM); then stops the captures, lets them seal and upload, and
/// returns.
pub fn run(config: AgentConfig, stop: &AtomicBool) -> Result<(), AgentError> {
    let node = config.node();
    let spool = config.spool_dir.clone();
    std::fs::create_dir_all(spool.join("status"))
        .map_err(|source| AgentError::Spool { path: spool.display().to_string(), source })?;
    let remote = match &config.storage {
        Some(s) => Some(Arc::new(Remote::open(&s.url)?)),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    // One probe set for every capture.
    let probes = ProbeConfig { ring_buffer_bytes: config.ring_buffer_bytes, max_payload: None, backpressure: false };
    let shared = Arc::new(SharedProbes::load(&probes)?);
    metrics.probe_sets.store(1, Relaxed);
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|source| AgentError::Listen { address: config.listen.clone(), source })?;
    {
        let (metrics, spool, captures) = (metrics.clone(), spool.clone(), config.captures_dir.clone());
        std::thread::spawn(move || metrics::serve(listener, metrics, spool, captures));
    }
    log("info", "agent started", json!({ "node": node, "listen": config.listen }));
    if let Some(remote) = &remote {
        resume(&spool, remote, &metrics);
    }
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut reported: HashSet<String> = HashSet::new();
    while !stop.load(Relaxed) {
        let (objects, errors) = request::read_dir(&config.captures_dir);
        for e in errors {
            if reported.insert(e.clone()) {
                metrics.captures_rejected_invalid.fetch_add(1, Relaxed);
                log("warn", "capture request not understood", json!({ "error": e }));
            }
        }
        // A request removed: its capture stops (and is uploaded).
        let present: HashSet<String> = objects.iter().map(CaptureObject::key).collect();
        for (key, r) in &running {
            if !present.contains(key) {
                let _ = r.stop.send(true);
            }
        }
        running.retain(|_, r| !r.thread.is_finished());
        for object in objects {
            let fingerprint = format!("{object:?}");
            if running.contains_key(&object.key()) || seen.contains(&fingerprint) {
                continue;
            }
            if running.len() >= config.max_concurrent_captures {
                write_status(&spool, &object, "Pending", json!({ "reason": "max_concurrent_captures reached" }));
                continue;
            }
            seen.insert(fingerprint);
            match start(&config, &node, &object, shared.clone(), remote.clone(), metrics.clone()) {
                Ok(r) => {
                    running.insert(object.key(), r);
                }
                Err((reason, message)) => {
                    let counter = if reason == "policy" {
                        &metrics.captures_rejected_policy
                    } else {
                        &metrics.captures_rejected_invalid
                    };
                    counter.fetch_add(1, Relaxed);
                    write_status(&spool, &object, "Rejected", json!({ "lastError": message }));
                    log(
                        "warn",
                        "capture rejected",
                        json!({ "capture": object.key(), "reason": reason, "error": message }),
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    log("info", "stopping: sealing and uploading the running captures", json!({ "running": running.len() }));
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (_, r) in running {
        let _ = r.thread.join();
    }
    log("info", "agent stopped", json!({}));
    Ok(())
}

/// Starts recording what `object` selects, on a thread of its own: record, then upload.
fn start(
    config: &AgentConfig,
    node: &str,
    object: &CaptureObject,
    shared: Arc<SharedProbes>,
    remote: Option<Arc<Remote>>,
    metrics: Arc<Metrics>,
) -> Result<Running, (&'static str, String)> {
    if !config.policy.allows(&object.metadata.namespace) {
        return Err(("policy", format!("namespace {} is not allowed on this node", object.metadata.namespace)));
    }
    let selector = &object.spec.selector;
    let target = match (&selector.cgroup, selector.pid, &selector.pod_uid) {
        (Some(cgroup), None, None) => Target::Cgroup(PathBuf::from(cgroup)),
        (None, Some(pid), None) => Target::Attach(pid),
        (None, None, Some(uid)) => Target::Cgroup(pod_target(uid, selector.container_id.as_deref())?),
        _ => return Err(("invalid", "spec.selector needs one of cgroup, pid or podUID".into())),
    };
    let duration = object.duration().map_err(|e| ("invalid", format!("spec.duration: {e}")))?;
    let expires = match &object.spec.expires {
        Some(e) => crate::retention::parse_duration(e).map_err(|e| ("invalid", format!("spec.expires: {e}")))?,
        None => Duration::from_secs(7 * 86400),
    };
    let names = if object.spec.recipients.is_empty() { &config.recipients } else { &object.spec.recipients };
    if names.is_empty() {
        return Err(("invalid", "no recipients: set spec.recipients or the agent's recipients".into()));
    }
    let recipients = names
        .iter()
        .map(|r| crate::keys::parse_recipient(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("invalid", format!("spec.recipients: {e}")))?;
    let started = now_wall_ns() / 1_000_000_000;
    let leaf = format!("{node}-{started}");
    let output = config.spool_dir.join(&object.metadata.namespace).join(&object.metadata.name).join(&leaf);
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ("invalid", format!("spool: {e}")))?;
    }
    let record_config = RecordConfig {
        output: output.clone(),
        probes: ProbeConfig { ring_buffer_bytes: config.ring_buffer_bytes, max_payload: None, backpressure: false },
        duration: Some(duration),
        segments: SegmentPolicy::default(),
        recipients,
        expires,
        rules: RulesFile::default(),
        agent_cpus: None,
    };
    let max_bytes = match (object.spec.max_bytes, config.max_bytes_per_capture) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (object, spool) = (object.clone(), config.spool_dir.clone());
    metrics.captures_started.fetch_add(1, Relaxed);
    metrics.captures_active.fetch_add(1, Relaxed);
    write_status(&spool, &object, "Starting", json!({ "recording": output }));
    let thread = std::thread::spawn(move || {
        let outcome = shared.start(&record_config, &target).map_err(|e| e.to_string()).and_then(|capture| {
            // Followed from here on: say so only now.
            write_status(&spool, &object, "Recording", json!({ "recording": output }));
            log("info", "capture started", json!({ "capture": object.key(), "output": output }));
            // For its duration, until its request is withdrawn or the agent stops, or until it
            // holds its byte budget.
            let until = std::time::Instant::now() + duration;
            while std::time::Instant::now() < until && !*stop_rx.borrow() {
                if max_bytes.is_some_and(|max| metrics::dir_bytes(&output) >= max) {
                    log(
                        "info",
                        "capture reached its byte budget",
                        json!({ "capture": object.key(), "maxBytes": max_bytes }),
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            shared.finish(capture).map_err(|e| e.to_string())
        });
        metrics.captures_active.fetch_sub(1, Relaxed);
        match outcome {
            Ok(summary) => {
                count(&metrics, &summary);
                metrics.captures_finished.fetch_add(1, Relaxed);
                let fields = json!({
                    "recording": output,
                    "bytes": summary.totals.recorded_bytes,
                    "lost": summary.totals.lost_bytes,
                    "segments": summary.manifest.segments.len(),
                });
                log("info", "capture recorded", json!({ "capture": object.key(), "details": fields }));
                match remote {
                    Some(remote) => {
                        write_status(&spool, &object, "Uploading", fields.clone());
                        match upload(&remote, &output, &metrics) {
                            Ok(url) => {
                                let mut fields = fields;
                                fields["uploadedTo"] = json!(url);
                                write_status(&spool, &object, "Uploaded", fields);
                            }
                            Err(e) => {
                                let mut fields = fields;
                                fields["lastError"] = json!(e);
                                write_status(&spool, &object, "Recorded", fields);
                            }
                        }
                    }
                    None => write_status(&spool, &object, "Recorded", fields),
                }
            }
            Err(e) => {
                metrics.captures_failed.fetch_add(1, Relaxed);
                write_status(&spool, &object, "Failed", json!({ "lastError": e }));
                log("error", "capture failed", json!({ "capture": object.key(), "error": e }));
            }
        }
    });
    Ok(Running { stop: stop_tx, thread })
}

fn count(metrics: &Metrics, summary: &RecordSummary) {
    let redacted: u64 = summary.redaction.by_rule.values().map(|(_, bytes)| bytes).sum();
    metrics.bytes_captured.fetch_add(summary.totals.recorded_bytes, Relaxed);
    metrics.bytes_lost.fetch_add(summary.totals.lost_bytes, Relaxed);
    metrics.bytes_redacted.fetch_add(redacted, Relaxed);
    metrics.ring_overflow_bytes.fetch_add(summary.kernel.chunk_bytes_dropped, Relaxed);
    metrics.segments_sealed.fetch_add(summary.manifest.segments.len() as u64, Relaxed);
}

/// A pod's cgroup on this node (or one of its containers').
fn pod_target(uid: &str, container: Option<&str>) -> Result<PathBuf, (&'static str, String)> {
    let root = pods::cgroup2_root().ok_or(("invalid", "no cgroup v2 mount on this node".to_owned()))?;
    let pod = pods::pod_cgroup(&root, uid).ok_or(("invalid", format!("no pod {uid} on this node")))?;
    match container {
        None => Ok(pod),
        Some(id) => pods::container_cgroup(&pod, id).ok_or(("invalid", format!("no container {id} in pod {uid}"))),
    }
}

/// Uploads the recording in `dir` under the remote prefix, at the same relative place as in the
/// spool (`namespace/name/node-time`), then deletes it; the address it went to.
fn upload(remote: &Remote, dir: &Path, metrics: &Metrics) -> Result<String, String> {
    let relative: Vec<String> = dir
        .iter()
        .rev()
        .take(3)
        .map(|c| c.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let target = remote.child(&relative.join("/"));
    match target.upload(dir) {
        Ok((uploaded, _)) => {
            metrics.segments_uploaded.fetch_add(uploaded as u64, Relaxed);
            metrics.recordings_uploaded.fetch_add(1, Relaxed);
            // Only now: the local copy goes.
            let _ = std::fs::remove_dir_all(dir);
            log("info", "recording uploaded", json!({ "recording": dir, "to": target.url() }));
            Ok(target.url().to_owned())
        }
        Err(e) => {
            metrics.upload_errors.fetch_add(1, Relaxed);
            log(
                "error",
                "upload failed: the recording stays in the spool",
                json!({ "recording": dir, "error": e.to_string() }),
            );
            Err(e.to_string())
        }
    }
}

/// Uploads the recordings an earlier run left in the spool (`namespace/name/node-time`).
fn resume(spool: &Path, remote: &Remote, metrics: &Metrics) {
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d).into_iter().flatten().flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect()
    };
    for namespace in dirs(spool).into_iter().filter(|d| !d.ends_with("status")) {
        for name in dirs(&namespace) {
            for recording in dirs(&name) {
                if Manifest::read(&recording).is_ok() {
                    log("info", "uploading a recording left in the spool", json!({ "recording": recording }));
                    let _ = upload(remote, &recording, metrics);
                }
            }
        }
    }
}

/// The request's status on this node, as `status/NAMESPACE.NAME.json` in the spool.
fn write_status(spool: &Path, object: &CaptureObject, phase: &str, fields: serde_json::Value) {
    let mut status = json!({ "phase": phase, "updated_ns": now_wall_ns() });
    if let (Some(status), Some(fields)) = (status.as_object_mut(), fields.as_object()) {
        status.extend(fields.clone());
    }
    let path = spool.join("status").join(format!("{}.{}.json", object.metadata.namespace, object.metadata.name));
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, status.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}
