//! One probe set for many recordings (the node agent's captures). The probes are loaded once;
//! one consumer drains the ring; a router hands each event to the recording its process
//! belongs to: the processes a capture started with, their children (a fork inherits its
//! parent's recording), and the processes that exec in a capture's cgroup (the kernel's exec
//! record says which capture's cgroup it was). Each recording has its own pipeline as in
//! `recorder` (streams, redaction, encrypted segments), so N captures cost a traced process no
//! more than one, and an untraced process no more than today's filter.

use crate::clock::monotonic_ns;
use crate::clock::now_wall_ns;
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    capture::{consumer, decode::Event, ProbeConfig, Probes},
    recorder::{self, rebuild_streams, spawn_writer, RecordConfig, RecordError, RecordSummary},
    redact::{RedactStage, Redactor},
    store::{proto, StoreError, Writer},
    streams::{procfs, Tracker},
    target::{self, Target},
};

const CLONE_THREAD: u64 = 0x0001_0000;
/// After a capture stops following its processes: how long their last events may take to
/// come out of the ring.
const DRAIN: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Routes {
    /// Process → capture.
    by_tgid: HashMap<u32, u32>,
    /// Capture → its pipeline's input.
    pipelines: HashMap<u32, mpsc::Sender<Vec<Event>>>,
    /// Capture → every process it followed (for its pending loss at the end).
    members: HashMap<u32, HashSet<u32>>,
    /// Events of processes no capture follows (any more).
    unrouted: u64,
}

pub struct SharedProbes {
    probes: Arc<Mutex<Probes>>,
    /// Programs and libraries of every capture's processes, for the TLS probes.
    tls_watch: crate::capture::tls::Watch,
    routes: Arc<Mutex<Routes>>,
    next: AtomicU32,
    /// Runs the consumer and the router.
    _runtime: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A recording running on the shared probes.
pub struct Capture {
    id: u32,
    /// The cgroups it follows (ids); a pod selector's change while it runs.
    cgroups: Mutex<HashSet<u64>>,
    writer: std::thread::JoinHandle<Result<Writer, StoreError>>,
    streams: std::thread::JoinHandle<(Tracker, RedactStage)>,
}

impl SharedProbes {
    pub fn load(config: &ProbeConfig) -> Result<SharedProbes, RecordError> {
        let mut probes = Probes::load(config)?;
        let ring = probes.take_ring()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("retrace-shared")
            .enable_all()
            .build()
            .map_err(RecordError::Thread)?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (events_tx, mut events_rx) = mpsc::channel::<Vec<Event>>(4);
        runtime.spawn(consumer::consume(ring, events_tx, stop_rx, None, None));
        let router = routes.clone();
        runtime.spawn(async move {
            while let Some(batch) = events_rx.recv().await {
                let outgoing = route(&router, batch);
                for (sender, batch) in outgoing {
                    let _ = sender.send(batch).await;
                }
            }
        });
        let probes = Arc::new(Mutex::new(probes));
        let tls_watch = crate::capture::tls::Watch::default();
        let (watch, attach_to) = (tls_watch.clone(), probes.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                watch.drain_into(&mut attach_to.lock().expect("probes"));
            }
        });
        Ok(SharedProbes { probes, tls_watch, routes, next: AtomicU32::new(1), _runtime: runtime, stop })
    }

    /// Starts a recording of `target` (a cgroup, or a process and its children).
    pub fn start(&self, config: &RecordConfig, target: &Target) -> Result<Capture, RecordError> {
        let (cgroup, pids, command, mode) = match target {
            Target::Cgroup(path) => {
                let (cg, pids) = target::cgroup(path)?;
                (Some(cg), pids, vec![format!("cgroup:{}", path.display())], "cgroup")
            }
            Target::Attach(pid) => {
                let tgid = target::thread_group_of(*pid)?;
                let mut pids = vec![tgid];
                pids.extend(procfs::descendants(tgid));
                (None, pids, procfs::cmdline(tgid), "attach")
            }
            Target::Launch(_) => return Err(RecordError::Unsupported("launching a command on shared probes")),
        };
        self.begin(config, mode, command, pids, cgroup)
    }

    /// Starts a recording that follows no process yet: cgroups are added while it runs
    /// (`follow_cgroup`), as the pods a selector picks come and go.
    pub fn start_selected(&self, config: &RecordConfig, description: &str) -> Result<Capture, RecordError> {
        self.begin(config, "pods", vec![description.to_owned()], Vec::new(), None)
    }

    fn begin(
        &self,
        config: &RecordConfig,
        mode: &str,
        command: Vec<String>,
        pids: Vec<u32>,
        cgroup: Option<u64>,
    ) -> Result<Capture, RecordError> {
        let stage = RedactStage::new(Redactor::new(config.rules.compiled().clone()));
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let root = pids.first().copied().unwrap_or(0);
        let manifest = recorder::new_manifest(config, mode, &command, root);
        let writer = Writer::create(&config.output, manifest, config.recipients.clone(), config.segments)?;
        let (mut tracker, mut first) = recorder::new_tracker(config, root, command);
        tracker.tls_watch = Some(self.tls_watch.clone());
        for &tgid in &pids {
            tracker.adopt_open_fds(tgid, "attach", monotonic_ns(), &mut first);
            self.tls_watch.push(crate::capture::tls::Candidate::Process(tgid));
        }
        let (events_tx, events_rx) = mpsc::channel::<Vec<Event>>(2);
        let (records_tx, records_rx) = std::sync::mpsc::sync_channel::<Vec<proto::Record>>(2);
        let writer = spawn_writer(writer, records_rx, Arc::new(AtomicBool::new(false))).map_err(RecordError::Thread)?;
        let root_exited = Arc::new(AtomicBool::new(false));
        // With seal threads the agent has cores to spare: redaction on a thread of its own.
        let split = config.segments.seal_threads > 0;
        let streams = std::thread::Builder::new()
            .name("retrace-streams".into())
            .spawn(move || rebuild_streams(tracker, stage, first, events_rx, records_tx, root_exited, split))
            .map_err(RecordError::Thread)?;
        {
            let mut routes = self.routes.lock().expect("routes");
            routes.pipelines.insert(id, events_tx);
            for &tgid in &pids {
                routes.by_tgid.insert(tgid, id);
                routes.members.entry(id).or_default().insert(tgid);
            }
        }
        let mut probes = self.probes.lock().expect("probes");
        for &tgid in &pids {
            probes.charge_to(tgid, id)?;
            probes.trace(tgid)?;
        }
        if let Some(cg) = cgroup {
            probes.trace_cgroup(cg, id)?;
        }
        Ok(Capture { id, cgroups: Mutex::new(cgroup.into_iter().collect()), writer, streams })
    }

    /// Adds a cgroup to a running capture: the processes in it now, and any that exec there
    /// later. Whether it was new to the capture.
    pub fn follow_cgroup(&self, capture: &Capture, path: &std::path::Path) -> Result<bool, RecordError> {
        let (cg, pids) = target::cgroup(path)?;
        if !capture.cgroups.lock().expect("cgroups").insert(cg) {
            return Ok(false);
        }
        {
            let mut routes = self.routes.lock().expect("routes");
            for &tgid in &pids {
                routes.by_tgid.insert(tgid, capture.id);
                routes.members.entry(capture.id).or_default().insert(tgid);
            }
        }
        let mut probes = self.probes.lock().expect("probes");
        probes.trace_cgroup(cg, capture.id)?;
        for &tgid in &pids {
            self.tls_watch.push(crate::capture::tls::Candidate::Process(tgid));
            probes.charge_to(tgid, capture.id)?;
            probes.trace(tgid)?;
        }
        Ok(true)
    }

    /// Caps the capture's payload at `bytes_per_second` in the kernel (bursts of a second's
    /// worth, at least 256 KiB): what is beyond it becomes `rate_limit` gaps, and the traced
    /// processes never wait.
    pub fn set_rate(&self, capture: &Capture, bytes_per_second: u64) -> Result<(), RecordError> {
        let burst = bytes_per_second.max(256 << 10);
        Ok(self.probes.lock().expect("probes").set_rate(capture.id, Some((bytes_per_second, burst)))?)
    }

    /// Stops following a cgroup (its pod went away): processes that exec there are no longer
    /// added. Whether the capture followed it.
    pub fn unfollow_cgroup(&self, capture: &Capture, id: u64) -> Result<bool, RecordError> {
        if !capture.cgroups.lock().expect("cgroups").remove(&id) {
            return Ok(false);
        }
        self.probes.lock().expect("probes").untrace_cgroup(id)?;
        Ok(true)
    }

    /// Stops a recording: its processes are no longer followed, its last events are drained,
    /// and it is sealed.
    pub fn finish(&self, capture: Capture) -> Result<RecordSummary, RecordError> {
        let members: Vec<u32> = {
            let routes = self.routes.lock().expect("routes");
            routes.members.get(&capture.id).map(|m| m.iter().copied().collect()).unwrap_or_default()
        };
        {
            let mut probes = self.probes.lock().expect("probes");
            for &cg in capture.cgroups.lock().expect("cgroups").iter() {
                probes.untrace_cgroup(cg)?;
            }
            probes.set_rate(capture.id, None)?;
            for &tgid in &members {
                probes.untrace(tgid);
            }
        }
        std::thread::sleep(DRAIN);
        {
            let mut routes = self.routes.lock().expect("routes");
            routes.pipelines.remove(&capture.id);
            routes.by_tgid.retain(|_, c| *c != capture.id);
            routes.members.remove(&capture.id);
        }
        let (mut tracker, mut stage) = capture.streams.join().map_err(|_| RecordError::WriterDied)?;
        let mut writer = capture.writer.join().map_err(|_| RecordError::WriterDied)??;
        let (losses, tls_losses) = {
            let probes = self.probes.lock().expect("probes");
            (probes.pending_loss()?, probes.tls_pending_loss()?)
        };
        let ours = (
            losses.into_iter().filter(|(k, _)| members.contains(&k.tgid)),
            tls_losses.into_iter().filter(|(k, _)| members.contains(&k.tgid)),
        );
        // Kernel counters are the node's, shared by every capture: each recording's loss is in
        // its gaps.
        recorder::seal_tail(&mut tracker, &mut stage, &mut writer, ours, |tracker| proto::Counters {
            unattributed_bytes: tracker.unattributed_bytes,
            ..Default::default()
        })?;
        let manifest = writer.finish(now_wall_ns(), None, false, None)?;
        Ok(RecordSummary {
            manifest,
            totals: tracker.totals,
            exit_status: None,
            kernel: Default::default(),
            records: 0,
            redaction: stage.stats.clone(),
        })
    }

    /// Events of processes no capture follows.
    pub fn unrouted(&self) -> u64 {
        self.routes.lock().expect("routes").unrouted
    }
}

impl Drop for SharedProbes {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Splits a batch by capture (every pipeline gets one, maybe empty: its writer seals segments
/// by age on them) and follows the process tree.
fn route(routes: &Mutex<Routes>, batch: Vec<Event>) -> Vec<(mpsc::Sender<Vec<Event>>, Vec<Event>)> {
    let mut routes = routes.lock().expect("routes");
    let mut split: HashMap<u32, Vec<Event>> = routes.pipelines.keys().map(|&id| (id, Vec::new())).collect();
    for event in batch {
        let tgid = event.header().tgid;
        match &event {
            Event::TaskExec { rec, .. } if rec.flags & retrace_common::TASK_JOINED != 0 => {
                let capture = rec.clone_flags as u32;
                if routes.pipelines.contains_key(&capture) {
                    routes.by_tgid.insert(tgid, capture);
                    routes.members.entry(capture).or_default().insert(tgid);
                }
            }
            Event::TaskNew(rec) if rec.clone_flags & CLONE_THREAD == 0 => {
                if let Some(&capture) = routes.by_tgid.get(&tgid) {
                    routes.by_tgid.insert(rec.pid as u32, capture);
                    routes.members.entry(capture).or_default().insert(rec.pid as u32);
                }
            }
            _ => {}
        }
        let dead = matches!(&event, Event::TaskExit(rec) if rec.flags & retrace_common::TASK_GROUP_DEAD != 0);
        match routes.by_tgid.get(&tgid).copied() {
            Some(capture) => split.entry(capture).or_default().push(event),
            None => routes.unrouted += 1,
        }
        if dead {
            routes.by_tgid.remove(&tgid);
        }
    }
    split.into_iter().filter_map(|(id, events)| routes.pipelines.get(&id).map(|s| (s.clone(), events))).collect()
}
