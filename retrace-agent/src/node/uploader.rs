//! Moves the spool to object storage, on a thread of its own. A running capture's segments go
//! up as they are sealed (each local copy deleted once it is up); an ended capture's recording
//! goes up whole, manifest last, and then leaves the spool. A failed upload is retried with
//! backoff (1 s doubling to 30 s) while the spool keeps the recording; past the spool's bound
//! the oldest sealed segments of ended captures are dropped (counted, marked in the manifest).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::{log, metrics::Metrics, spool::Evicted, spool::Spool};
use crate::store::{
    remote::{Remote, RemoteError},
    Manifest,
};

const TICK: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Uploader {
    spool: Arc<Spool>,
    remote: Option<Arc<Remote>>,
    metrics: Arc<Metrics>,
    /// Recordings still being written (their capture is running).
    pub recording: Arc<Mutex<HashSet<PathBuf>>>,
    /// The spool is at its bound and nothing of an ended capture is left to drop: running
    /// captures end.
    pub spool_full: Arc<AtomicBool>,
    retries: HashMap<PathBuf, Retry>,
    /// Object storage failed: nothing is tried before this (one backoff for every recording).
    storage_retry: Option<Instant>,
    storage_failures: u32,
}

#[derive(Default)]
struct Retry {
    /// Segments already in object storage.
    uploaded: HashSet<String>,
    failures: u32,
    next_try: Option<Instant>,
}

impl Uploader {
    pub fn new(spool: Arc<Spool>, remote: Option<Arc<Remote>>, metrics: Arc<Metrics>) -> Uploader {
        Uploader {
            spool,
            remote,
            metrics,
            recording: Arc::default(),
            spool_full: Arc::default(),
            retries: HashMap::new(),
            storage_retry: None,
            storage_failures: 0,
        }
    }

    /// Runs until `draining` is set and every ended recording is uploaded, or `deadline` (set
    /// with it) has passed: what is left stays in the spool for the next start.
    pub fn run(mut self, draining: Arc<AtomicBool>, deadline: Arc<Mutex<Option<Instant>>>) {
        loop {
            let left = self.pass();
            if draining.load(Relaxed) {
                let over = deadline.lock().expect("deadline").is_some_and(|d| Instant::now() >= d);
                if (left == 0 && self.recording.lock().expect("recording").is_empty()) || over {
                    if left > 0 {
                        log(
                            "warn",
                            "stopping with recordings not uploaded: they stay in the spool",
                            json!({ "left": left }),
                        );
                    }
                    return;
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// One round: uploads what is due, then keeps the spool within its bound. Returns how
    /// many ended recordings are still in the spool.
    fn pass(&mut self) -> usize {
        let running = self.recording.lock().expect("recording").clone();
        let all = self.spool.recordings();
        let mut left = 0;
        for dir in &all {
            let is_running = running.contains(dir);
            if !is_running {
                left += 1;
            }
            let Some(remote) = self.remote.clone() else { continue };
            let retry = self.retries.entry(dir.clone()).or_default();
            let due = |t: Option<Instant>| t.is_none_or(|t| Instant::now() >= t);
            if !due(retry.next_try) || !due(self.storage_retry) {
                continue;
            }
            let target = remote.child(&relative(dir));
            let outcome = if is_running { self.upload_sealed(&target, dir) } else { self.upload_whole(&target, dir) };
            let retry = self.retries.entry(dir.clone()).or_default();
            match outcome {
                Ok(finished) => {
                    retry.failures = 0;
                    retry.next_try = None;
                    self.storage_failures = 0;
                    if finished {
                        left -= 1;
                    }
                }
                Err(e) => {
                    retry.failures += 1;
                    let wait = Duration::from_secs(1 << retry.failures.min(5)).min(MAX_BACKOFF);
                    retry.next_try = Some(Instant::now() + wait);
                    let counter = match e {
                        RemoteError::Store(_) => {
                            // Storage itself: the other recordings wait too.
                            self.storage_failures += 1;
                            let wait = Duration::from_secs(1 << self.storage_failures.min(5)).min(MAX_BACKOFF);
                            self.storage_retry = Some(Instant::now() + wait);
                            &self.metrics.upload_errors_storage
                        }
                        RemoteError::Conflict(..) => &self.metrics.upload_errors_conflict,
                        _ => &self.metrics.upload_errors_local,
                    };
                    counter.fetch_add(1, Relaxed);
                    log(
                        "error",
                        "upload failed: the recording stays in the spool, retried later",
                        json!({ "recording": dir, "error": e.to_string(), "retry_in_s": wait.as_secs() }),
                    );
                    if let Some((namespace, name)) = self.spool.capture_of(dir) {
                        self.spool.write_status(&namespace, &name, None, json!({ "lastError": e.to_string() }));
                    }
                }
            }
        }
        self.retries.retain(|d, _| d.exists());
        // The bound: the oldest ended recordings give up their oldest segments first.
        let ended: Vec<PathBuf> = all.into_iter().filter(|d| !running.contains(d) && d.exists()).collect();
        let mut evicted = Evicted::default();
        let within = self.spool.evict(&ended, &mut evicted);
        if evicted.segments > 0 {
            self.metrics.spool_evicted_segments.fetch_add(evicted.segments, Relaxed);
            self.metrics.spool_evicted_bytes.fetch_add(evicted.bytes, Relaxed);
            log(
                "warn",
                "spool full: dropped the oldest segments of ended captures",
                json!({ "segments": evicted.segments, "bytes": evicted.bytes, "records": evicted.records }),
            );
        }
        let was_full = self.spool_full.swap(!within, Relaxed);
        if !within && !was_full {
            log("warn", "spool full: running captures end", json!({ "max_bytes": self.spool.max_bytes }));
        }
        left
    }

    /// A running capture's sealed segments not yet up; each local copy goes once it is up.
    fn upload_sealed(&mut self, target: &Remote, dir: &Path) -> Result<bool, RemoteError> {
        let manifest = Manifest::read(dir)?;
        let retry = self.retries.entry(dir.to_owned()).or_default();
        if manifest.segments.iter().all(|s| s.evicted || retry.uploaded.contains(&s.name)) {
            return Ok(false);
        }
        let metrics = &self.metrics;
        let (names, _) = target.upload_segments(dir, &manifest, &retry.uploaded, |name, new| {
            if new {
                metrics.segments_uploaded.fetch_add(1, Relaxed);
            }
            let _ = std::fs::remove_file(dir.join(name));
        })?;
        retry.uploaded.extend(names);
        if let Some((namespace, name)) = self.spool.capture_of(dir) {
            let uploaded = retry.uploaded.len();
            self.spool.write_status(&namespace, &name, None, json!({ "segmentsUploaded": uploaded }));
        }
        Ok(false)
    }

    /// An ended capture's recording, manifest last; then the local copy goes.
    fn upload_whole(&mut self, target: &Remote, dir: &Path) -> Result<bool, RemoteError> {
        let evicted = Manifest::read(dir)?.segments.iter().filter(|s| s.evicted).count();
        let (put, there) = target.upload(dir)?;
        self.metrics.segments_uploaded.fetch_add(put as u64, Relaxed);
        self.metrics.recordings_uploaded.fetch_add(1, Relaxed);
        // Only now: the local copy goes.
        let _ = std::fs::remove_dir_all(dir);
        log("info", "recording uploaded", json!({ "recording": dir, "to": target.url() }));
        if let Some((namespace, name)) = self.spool.capture_of(dir) {
            let mut fields = json!({ "uploadedTo": target.url(), "segmentsUploaded": put + there });
            if evicted > 0 {
                fields["segmentsEvicted"] = json!(evicted);
            }
            self.spool.write_status(&namespace, &name, Some("Uploaded"), fields);
        }
        Ok(true)
    }
}

/// `namespace/name/node-time`: where a spooled recording goes under the upload prefix.
fn relative(dir: &Path) -> String {
    let parts: Vec<String> = dir.iter().rev().take(3).map(|c| c.to_string_lossy().into_owned()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}
