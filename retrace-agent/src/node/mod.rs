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

pub mod cluster;
pub mod config;
pub mod metrics;
pub mod pods;
pub mod request;
pub mod spool;
pub mod uploader;

use crate::clock::now_wall_ns;
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use cluster::Cluster;
use config::AgentConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use metrics::Metrics;
use request::CaptureObject;
use serde_json::json;
use spool::Spool;
use uploader::Uploader;

use crate::{
    capture::ProbeConfig,
    recorder::{RecordConfig, RecordSummary},
    redact::{CheckedRules, RulesFile},
    shared::SharedProbes,
    store::{remote::Remote, SegmentPolicy},
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
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
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
    started: std::time::Instant,
}

/// How long the agent may stay over `memory_max_bytes` before it ends its newest capture.
const MEMORY_GRACE: Duration = Duration::from_secs(2);

/// The agent's resident memory (bytes).
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}

/// Phases after which a request is not run again (also after an agent restart).
const ENDED: [&str; 4] = ["Uploading", "Uploaded", "Recorded", "Failed"];

/// Runs until `stop` is set (SIGTERM); then stops the captures, lets them seal, uploads what
/// it can within `drain_timeout`, and returns.
pub fn run(config: AgentConfig, stop: &AtomicBool) -> Result<(), AgentError> {
    let node = config.node();
    let drain_timeout = config.drain_timeout()?;
    let spool = Arc::new(
        Spool::open(config.spool_dir.clone(), config.spool_max_bytes)
            .map_err(|source| AgentError::Spool { path: config.spool_dir.display().to_string(), source })?,
    );
    let remote = match &config.upload {
        Some(u) => Some(Arc::new(Remote::open_at(&u.url, u.endpoint.as_deref())?)),
        None => None,
    };
    let cluster = match &config.kubernetes {
        Some(k) => Some(Arc::new(Cluster::connect(k.kubeconfig.as_deref(), &node)?)),
        None => None,
    };
    if let Some(cluster) = &cluster {
        let _ = spool.cluster.set(cluster.clone());
    }
    let metrics = Arc::new(Metrics::default());
    // One probe set for every capture.
    let probes = ProbeConfig {
        ring_buffer_bytes: config.ring_buffer_bytes,
        max_payload: None,
        backpressure: false,
        hold_execs: false,
        record_clock: false,
    };
    let shared = Arc::new(SharedProbes::load(&probes)?);
    metrics.probe_sets.store(1, Relaxed);
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|source| AgentError::Listen { address: config.listen.clone(), source })?;
    {
        let (metrics, spool, captures) = (metrics.clone(), spool.clone(), config.captures_dir.clone());
        std::thread::spawn(move || metrics::serve(listener, metrics, spool, captures));
    }
    log("info", "agent started", json!({ "node": node, "listen": config.listen }));
    // Uploads (and resumes what an earlier run left in the spool) on a thread of its own.
    let uploader = Uploader::new(spool.clone(), remote.clone(), metrics.clone());
    let (recording, spool_full) = (uploader.recording.clone(), uploader.spool_full.clone());
    let draining = Arc::new(AtomicBool::new(false));
    let deadline = Arc::new(std::sync::Mutex::new(None));
    let upload_thread = {
        let (draining, deadline) = (draining.clone(), deadline.clone());
        std::thread::spawn(move || uploader.run(draining, deadline))
    };
    let pipeline = Pipeline {
        shared,
        spool: spool.clone(),
        metrics: metrics.clone(),
        recording,
        spool_full,
        cluster: cluster.clone(),
    };
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut reported: HashSet<String> = HashSet::new();
    let mut over_memory_since: Option<std::time::Instant> = None;
    while !stop.load(Relaxed) {
        // The memory cap: no new capture while over it; past a grace, the newest one ends.
        let memory = resident_bytes();
        metrics.memory_bytes.store(memory, Relaxed);
        let over_memory = config.memory_max_bytes.is_some_and(|max| memory > max);
        over_memory_since = if over_memory { over_memory_since.or(Some(std::time::Instant::now())) } else { None };
        if over_memory_since.is_some_and(|t| t.elapsed() >= MEMORY_GRACE) {
            if let Some((key, newest)) = running.iter().max_by_key(|(_, r)| r.started) {
                log(
                    "warn",
                    "over memory_max_bytes: the newest capture ends",
                    json!({ "capture": key, "resident": memory }),
                );
                let _ = newest.stop.send(true);
                metrics.captures_shed_memory.fetch_add(1, Relaxed);
            }
            over_memory_since = Some(std::time::Instant::now());
        }
        let (mut objects, mut errors) = match &config.captures_dir {
            Some(dir) => request::read_dir(dir),
            None => Default::default(),
        };
        if let Some(cluster) = &cluster {
            let (more, bad) = cluster.captures();
            objects.extend(more);
            errors.extend(bad);
        }
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
            let fingerprint = object.fingerprint();
            if running.contains_key(&object.key()) || seen.contains(&fingerprint) {
                continue;
            }
            let (namespace, name) = (&object.metadata.namespace, &object.metadata.name);
            let status = spool.read_status(namespace, name).unwrap_or_default();
            if status["request"] == json!(fingerprint) && ENDED.iter().any(|p| status["phase"] == json!(p)) {
                // This request ran to its end before (maybe before a restart): not again.
                seen.insert(fingerprint);
                continue;
            }
            let waits = if running.len() >= config.max_concurrent_captures {
                Some("max_concurrent_captures reached")
            } else if pipeline.spool_full.load(Relaxed) {
                Some("the spool is full (spool_max_bytes) until object storage takes what it holds")
            } else if over_memory {
                Some("the agent is over memory_max_bytes")
            } else {
                None
            };
            if let Some(reason) = waits {
                // Said once, not every round (with Kubernetes each status is a PATCH).
                if status["phase"] != "Pending" || status["reason"] != reason || status["request"] != json!(fingerprint)
                {
                    let reason = json!({ "reason": reason, "request": fingerprint });
                    spool.write_status(namespace, name, Some("Pending"), reason);
                }
                continue;
            }
            seen.insert(fingerprint);
            match pipeline.start(&config, &node, &object) {
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
                    let fields = json!({ "lastError": message, "request": object.fingerprint() });
                    spool.write_status(namespace, name, Some("Rejected"), fields);
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
    *deadline.lock().expect("deadline") = Some(std::time::Instant::now() + drain_timeout);
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    for (_, r) in running {
        let _ = r.thread.join();
    }
    draining.store(true, Relaxed);
    let _ = upload_thread.join();
    log("info", "agent stopped", json!({}));
    Ok(())
}

/// What every capture's thread shares.
struct Pipeline {
    shared: Arc<SharedProbes>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    /// Recordings being written (the uploader sends only their sealed segments).
    recording: Arc<std::sync::Mutex<HashSet<PathBuf>>>,
    spool_full: Arc<AtomicBool>,
    cluster: Option<Arc<Cluster>>,
}

/// What a capture follows.
enum Selection {
    Target(Target),
    /// The pods (or containers) a label selector picks in the request's namespace, on this
    /// node, as they come and go.
    Pods {
        selector: LabelSelector,
        containers: Vec<String>,
        cluster: Arc<Cluster>,
        root: PathBuf,
    },
}

/// How often a pod selector's picks are brought up to date.
const RESELECT: Duration = Duration::from_millis(500);

impl Pipeline {
    /// Starts recording what `object` selects, on a thread of its own; once it ends, the
    /// uploader takes its recording.
    fn start(
        &self,
        config: &AgentConfig,
        node: &str,
        object: &CaptureObject,
    ) -> Result<Running, (&'static str, String)> {
        if !config.policy.allows(&object.metadata.namespace) {
            return Err(("policy", format!("namespace {} is not allowed on this node", object.metadata.namespace)));
        }
        let selector = &object.spec.selector;
        let selection = match (&selector.cgroup, selector.pid, &selector.pod_uid, object.pod_selector()) {
            (Some(cgroup), None, None, None) => Selection::Target(Target::Cgroup(PathBuf::from(cgroup))),
            (None, Some(pid), None, None) => Selection::Target(Target::Attach(pid)),
            (None, None, Some(uid), None) => {
                Selection::Target(Target::Cgroup(pod_target(uid, selector.container_id.as_deref())?))
            }
            (None, None, None, Some((pods, containers))) => {
                let Some(cluster) = self.cluster.clone() else {
                    return Err((
                        "invalid",
                        "podSelector needs the agent's [kubernetes] section (the pod list)".into(),
                    ));
                };
                kube::core::Selector::try_from(pods.clone()).map_err(|e| ("invalid", format!("podSelector: {e}")))?;
                let root = pods::cgroup2_root().ok_or(("invalid", "no cgroup v2 mount on this node".to_owned()))?;
                Selection::Pods { selector: pods.clone(), containers: containers.to_vec(), cluster, root }
            }
            _ => return Err(("invalid", "spec.selector needs one of cgroup, pid, podUID or podSelector".into())),
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
        let rules = match &object.spec.rules {
            None => CheckedRules::default(),
            Some(rules) => {
                let text = match (&rules.inline, &rules.config_map_ref, &self.cluster) {
                    (Some(text), None, _) => text.clone(),
                    (None, Some(r), Some(cluster)) => {
                        cluster.config_map(&object.metadata.namespace, &r.name, &r.key).map_err(|e| ("invalid", e))?
                    }
                    (None, Some(_), None) => {
                        return Err((
                            "invalid",
                            "spec.rules.configMapRef needs the agent's [kubernetes] section".into(),
                        ))
                    }
                    _ => return Err(("invalid", "spec.rules needs one of inline or configMapRef".into())),
                };
                let parsed: RulesFile = toml::from_str(&text).map_err(|e| {
                    ("invalid", format!("spec.rules: {}", e.to_string().lines().next().unwrap_or_default()))
                })?;
                parsed.check().map_err(|e| ("invalid", format!("spec.rules: {e}")))?
            }
        };
        let started = now_wall_ns() / 1_000_000_000;
        let (namespace, name) = (object.metadata.namespace.clone(), object.metadata.name.clone());
        let output = self.spool.recording_dir(&namespace, &name, &format!("{node}-{started}"));
        if let Some(parent) = output.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ("invalid", format!("spool: {e}")))?;
        }
        let record_config = RecordConfig {
            output: output.clone(),
            probes: ProbeConfig {
                ring_buffer_bytes: config.ring_buffer_bytes,
                max_payload: None,
                backpressure: false,
                hold_execs: false,
                record_clock: false,
            },
            duration: Some(duration),
            segments: SegmentPolicy { seal_threads: config.seal_threads(), ..SegmentPolicy::default() },
            recipients,
            expires,
            rules,
            agent_cpus: None,
        };
        let max_bytes = match (object.spec.max_bytes, config.max_bytes_per_capture) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max_rate = match (object.spec.max_bytes_per_second, config.max_bytes_per_second_per_capture) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if max_rate == Some(0) {
            return Err(("invalid", "spec.maxBytesPerSecond must be above 0".into()));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let key = object.key();
        let (shared, spool, metrics) = (self.shared.clone(), self.spool.clone(), self.metrics.clone());
        let (recording, spool_full, uploads) =
            (self.recording.clone(), self.spool_full.clone(), config.upload.is_some());
        metrics.captures_started.fetch_add(1, Relaxed);
        metrics.captures_active.fetch_add(1, Relaxed);
        recording.lock().expect("recording").insert(output.clone());
        let request = object.fingerprint();
        spool.write_status(
            &namespace,
            &name,
            Some("Starting"),
            json!({ "recording": output, "request": request, "lastError": null, "segmentsUploaded": 0 }),
        );
        let thread = std::thread::spawn(move || {
            let started = match &selection {
                Selection::Target(target) => shared.start(&record_config, target),
                Selection::Pods { .. } => shared.start_selected(&record_config, &format!("pods in {namespace}")),
            };
            let rated = started.and_then(|capture| match max_rate {
                Some(rate) => match shared.set_rate(&capture, rate) {
                    Ok(()) => Ok(capture),
                    Err(e) => {
                        let _ = shared.finish(capture);
                        Err(e)
                    }
                },
                None => Ok(capture),
            });
            let outcome = rated.map_err(|e| e.to_string()).and_then(|capture| {
                // Followed from here on: say so only now.
                spool.write_status(&namespace, &name, Some("Recording"), json!({}));
                log("info", "capture started", json!({ "capture": key, "output": output }));
                // For its duration, until its request is withdrawn or the agent stops, until it
                // holds its byte budget, or while the spool has no room for it.
                let until = std::time::Instant::now() + duration;
                let mut targets: HashMap<String, (PathBuf, u64)> = HashMap::new();
                let mut reselect = std::time::Instant::now();
                while std::time::Instant::now() < until && !*stop_rx.borrow() {
                    if let Selection::Pods { selector, containers, cluster, root } = &selection {
                        if std::time::Instant::now() >= reselect {
                            reselect = std::time::Instant::now() + RESELECT;
                            let picked = cluster::select(&cluster.pods(), &namespace, selector, containers, root);
                            let changed = follow(&shared, &capture, &mut targets, picked.unwrap_or_default(), &metrics);
                            if changed {
                                let mut names: Vec<&String> = targets.keys().collect();
                                names.sort();
                                spool.write_status(&namespace, &name, None, json!({ "targets": names }));
                                log("info", "capture targets", json!({ "capture": key, "targets": names }));
                            }
                        }
                    }
                    if max_bytes.is_some_and(|max| spool::recording_bytes(&output) >= max) {
                        log(
                            "info",
                            "capture reached its byte budget",
                            json!({ "capture": key, "maxBytes": max_bytes }),
                        );
                        break;
                    }
                    if spool_full.load(Relaxed) {
                        log("warn", "capture ended: the spool is full", json!({ "capture": key }));
                        spool.write_status(&namespace, &name, None, json!({ "reason": "spool full" }));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                metrics.targets.fetch_sub(targets.len() as u64, Relaxed);
                shared.finish(capture).map_err(|e| e.to_string())
            });
            metrics.captures_active.fetch_sub(1, Relaxed);
            match outcome {
                Ok(summary) => {
                    count(&metrics, &summary);
                    metrics.captures_finished.fetch_add(1, Relaxed);
                    let fields = json!({
                        "bytes": summary.totals.recorded_bytes,
                        "lost": summary.totals.lost_bytes,
                        "segments": summary.manifest.segments.len(),
                    });
                    log("info", "capture recorded", json!({ "capture": key, "details": fields }));
                    let phase = if uploads { "Uploading" } else { "Recorded" };
                    spool.write_status(&namespace, &name, Some(phase), fields);
                }
                Err(e) => {
                    metrics.captures_failed.fetch_add(1, Relaxed);
                    spool.write_status(&namespace, &name, Some("Failed"), json!({ "lastError": e }));
                    log("error", "capture failed", json!({ "capture": key, "error": e }));
                }
            }
            // Ended: the uploader takes it whole from here.
            recording.lock().expect("recording").remove(&output);
        });
        Ok(Running { stop: stop_tx, thread, started: std::time::Instant::now() })
    }
}

/// Brings a capture's followed cgroups to `picked` (target name, cgroup folder); whether
/// anything changed.
fn follow(
    shared: &SharedProbes,
    capture: &crate::shared::Capture,
    targets: &mut HashMap<String, (PathBuf, u64)>,
    picked: Vec<(String, PathBuf)>,
    metrics: &Metrics,
) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let mut changed = false;
    let wanted: HashSet<&String> = picked.iter().map(|(n, _)| n).collect();
    let gone: Vec<String> = targets.keys().filter(|n| !wanted.contains(n)).cloned().collect();
    for name in gone {
        if let Some((_, id)) = targets.remove(&name) {
            let _ = shared.unfollow_cgroup(capture, id);
            metrics.targets.fetch_sub(1, Relaxed);
            changed = true;
        }
    }
    for (name, dir) in picked {
        if targets.contains_key(&name) {
            continue;
        }
        let Ok(id) = std::fs::metadata(&dir).map(|m| m.ino()) else { continue };
        match shared.follow_cgroup(capture, &dir) {
            Ok(_) => {
                targets.insert(name, (dir, id));
                metrics.targets.fetch_add(1, Relaxed);
                changed = true;
            }
            Err(e) => log("warn", "cannot follow a target", json!({ "target": name, "error": e.to_string() })),
        }
    }
    changed
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
