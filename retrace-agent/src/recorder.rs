//! The capture engine: load the probes, follow a target, drain the ring buffer, rebuild
//! streams and write the recording. Free of CLI concerns, so a long-running agent can run
//! several of these at once.

use crate::clock::monotonic_ns;
use crate::clock::now_wall_ns;
use crate::stages;
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    capture::{consumer, decode::Event, CaptureError, KernelStats, ProbeConfig, Probes},
    keys::Recipient,
    redact::{CheckedRules, RedactStage, RedactStats, Redactor},
    store::{
        manifest::{Manifest, FORMAT_VERSION},
        proto::{self, record::Kind as R},
        SegmentPolicy, StoreError, Writer,
    },
    streams::{procfs, Tracker},
    target::{self, Launched, Target, TargetError},
};

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordConfig {
    pub output: PathBuf,
    pub probes: ProbeConfig,
    /// Stop after this long (attach mode; a launched command is asked to stop too).
    pub duration: Option<Duration>,
    pub segments: SegmentPolicy,
    /// age recipients the segments are encrypted to (public keys only).
    pub recipients: Vec<Recipient>,
    /// How long the recording is kept (`retrace gc` deletes it after).
    pub expires: Duration,
    /// Redaction rules and capture allowlist, compiled (`RulesFile::check`).
    pub rules: CheckedRules,
    /// Run the agent's threads on these CPUs only (a launched command keeps its own).
    pub agent_cpus: Option<Vec<usize>>,
}

/// What a finished recording holds.
#[derive(Debug, Clone)]
pub struct RecordSummary {
    pub manifest: Manifest,
    pub totals: crate::streams::tracker::Totals,
    pub exit_status: Option<i32>,
    pub kernel: KernelStats,
    pub records: u64,
    pub redaction: RedactStats,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("the recording writer stopped unexpectedly")]
    WriterDied,
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("could not start the recorder's threads: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Rules(#[from] crate::redact::RulesError),
    #[error(transparent)]
    Cpus(#[from] crate::cpus::CpusError),
}

/// Records `target` until it exits, `stop` turns true, or the duration ends.
pub async fn record(
    config: RecordConfig,
    target: Target,
    mut stop: watch::Receiver<bool>,
) -> Result<RecordSummary, RecordError> {
    let stage = RedactStage::new(Redactor::new(config.rules.compiled().clone()));
    let mut probes = Probes::load(&config.probes)?;
    // A cgroup's id and the processes in it at the start.
    let mut cgroup = None;
    let (mut launched, root, command, mode) = match &target {
        Target::Launch(argv) => {
            let child = Launched::spawn(argv)?;
            let pid = child.pid;
            (Some(child), pid, argv.clone(), "launch")
        }
        Target::Attach(pid) => {
            let tgid = target::thread_group_of(*pid)?;
            (None, tgid, procfs::cmdline(tgid), "attach")
        }
        Target::Cgroup(path) => {
            let (id, pids) = target::cgroup(path)?;
            let first = pids.first().copied().unwrap_or(0);
            cgroup = Some((id, pids));
            (None, first, vec![format!("cgroup:{}", path.display())], "cgroup")
        }
    };
    let manifest = new_manifest(&config, mode, &command, root);
    // A child that never got to run is killed if set-up fails from here on.
    let abort = |launched: &mut Option<Launched>| {
        if let Some(child) = launched.take() {
            child.abort();
        }
    };
    // After the fork (a launched command keeps the CPUs it was given) and before the writer
    // and pipeline threads start (they inherit it).
    if let Some(cpus) = &config.agent_cpus {
        if let Err(e) = crate::cpus::pin_process(cpus) {
            abort(&mut launched);
            return Err(e.into());
        }
    }
    let writer = match Writer::create(&config.output, manifest, config.recipients.clone(), config.segments) {
        Ok(w) => w,
        Err(e) => {
            abort(&mut launched);
            return Err(e.into());
        }
    };
    // Attach: the processes the target already started are part of it (pre-fork servers).
    // A cgroup: the processes in it now; then every process that execs there.
    let existing = match &target {
        Target::Launch(_) => Vec::new(),
        Target::Attach(_) => procfs::descendants(root),
        Target::Cgroup(_) => {
            let (id, pids) = cgroup.take().unwrap_or_default();
            probes.trace_cgroup(id, 1)?;
            pids.into_iter().filter(|&p| p != root).collect()
        }
    };
    let roots = if root == 0 { None } else { Some(root) };
    for tgid in roots.into_iter().chain(existing.iter().copied()) {
        if let Err(e) = probes.trace(tgid) {
            abort(&mut launched);
            return Err(e.into());
        }
    }
    let follows_root = !matches!(target, Target::Cgroup(_));
    let ring = probes.take_ring()?;
    // The list of paused processes, and its guard that continues them if the agent dies:
    // for backpressure and for processes held at exec.
    let pauses =
        if config.probes.backpressure || config.probes.hold_execs { Some(probes.take_pauses()?) } else { None };
    let (mut tracker, mut first) = new_tracker(&config, root, command);
    // TLS libraries of the target's own (linked into its program, loaded from elsewhere than
    // the system's folders) get the TLS probes as they appear; those in use now, at once.
    let tls_watch = crate::capture::tls::Watch::default();
    tracker.tls_watch = Some(tls_watch.clone());
    match &target {
        Target::Launch(argv) => {
            if let Some(program) = argv.first().and_then(|p| target::find_program(p)) {
                probes.attach_uprobes(&program);
            }
        }
        _ => {
            for &tgid in roots.iter().chain(existing.iter()) {
                tls_watch.push(crate::capture::tls::Candidate::Process(tgid));
            }
            tls_watch.drain_into(&mut probes);
        }
    }
    let origin = if launched.is_some() { "inherited" } else { "attach" };
    if root != 0 {
        tracker.adopt_open_fds(root, origin, monotonic_ns(), &mut first);
    }
    for &tgid in &existing {
        tracker.adopt_open_fds(tgid, origin, monotonic_ns(), &mut first);
    }

    // Pipeline: consumer task (ring → events) → streams thread (events → streams → redacted
    // records) → writer thread (records → encrypted segments). A few batches in flight: the
    // kernel ring buffer, not agent memory, absorbs bursts.
    let (events_tx, events_rx) = mpsc::channel::<Vec<Event>>(2);
    let (records_tx, records_rx) = std::sync::mpsc::sync_channel::<Vec<proto::Record>>(2);
    let (consumer_stop_tx, consumer_stop_rx) = watch::channel(false);
    let root_exited = Arc::new(AtomicBool::new(false));
    let writer_failed = Arc::new(AtomicBool::new(false));
    // The agent has cores to spare (as for sealing): redaction on a thread of its own.
    let split = config.segments.seal_threads > 0;
    let threads = spawn_writer(writer, records_rx, writer_failed.clone()).and_then(|writer| {
        let root_exited = root_exited.clone();
        let streams = std::thread::Builder::new()
            .name("retrace-streams".into())
            .spawn(move || rebuild_streams(tracker, stage, first, events_rx, records_tx, root_exited, split))?;
        Ok((writer, streams))
    });
    let (writer_thread, streams_thread) = match threads {
        Ok(threads) => threads,
        Err(e) => {
            abort(&mut launched);
            return Err(RecordError::Thread(e));
        }
    };
    let held = config.probes.hold_execs.then(|| tls_watch.clone());
    let consumer = tokio::spawn(consumer::consume(ring, events_tx, consumer_stop_rx, pauses, held));

    // Whether the recorder itself sent the launched command its SIGTERM.
    let mut stopped_by_recorder = false;
    let mut stopped_ns = None;
    let exit_status = match launched.as_mut() {
        Some(child) => {
            child.release();
            let pid = child.pid;
            let mut wait = tokio::task::spawn_blocking(move || target::wait_exit_code(pid));
            let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
            let mut asked = false;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    code = &mut wait => break Some(code.unwrap_or(-1)),
                    _ = tls_watch.held() => tls_watch.drain_into(&mut probes),
                    _ = tick.tick(), if !asked => {
                        tls_watch.drain_into(&mut probes);
                        // The recording cannot continue (disk full...): stop capturing now; the
                        // command runs on and its status is still reported.
                        if writer_failed.load(Ordering::Relaxed) {
                            asked = true;
                            probes.detach();
                        }
                    }
                    _ = stop.changed(), if !asked => {
                        asked = true;
                        stopped_by_recorder = true;
                        stopped_ns = Some(now_wall_ns());
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    }
                    _ = sleep_until(deadline), if !asked => {
                        asked = true;
                        stopped_by_recorder = true;
                        stopped_ns = Some(now_wall_ns());
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
                    }
                }
            }
        }
        None => {
            let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = sleep_until(deadline) => break,
                    _ = tls_watch.held() => tls_watch.drain_into(&mut probes),
                    _ = tick.tick() => {
                        tls_watch.drain_into(&mut probes);
                        let root_gone = follows_root && (root_exited.load(Ordering::Relaxed) || !target::is_alive(root));
                        if root_gone || writer_failed.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
            None
        }
    };

    // Everything the target did is in the ring now: drain it and stop.
    let _ = consumer_stop_tx.send(true);
    let (consume_stats, pauses) = consumer.await.map_err(|_| RecordError::WriterDied)??;
    let (mut tracker, mut stage) = streams_thread.join().map_err(|_| RecordError::WriterDied)?;
    let mut writer = writer_thread.join().map_err(|_| RecordError::WriterDied)??;
    let kernel = probes.stats()?;
    if std::env::var_os("RETRACE_PROBE_STATS").is_some() {
        for (name, runs, avg_ns) in crate::capture::loader::program_costs(&probes) {
            eprintln!("probe {name:<28} runs {runs:>10}  avg {avg_ns:>6} ns");
        }
    }
    let losses = (probes.pending_loss()?, probes.tls_pending_loss()?);
    seal_tail(&mut tracker, &mut stage, &mut writer, losses, |tracker| proto::Counters {
        chunks_dropped: kernel.chunks_dropped,
        chunk_bytes_dropped: kernel.chunk_bytes_dropped,
        records_dropped: kernel.records_dropped,
        task_records_dropped: kernel.task_records_dropped,
        fault_bytes: kernel.fault_bytes,
        truncated_bytes: kernel.truncated_bytes,
        captured_bytes: kernel.captured_bytes,
        malformed_records: consume_stats.malformed,
        unattributed_bytes: tracker.unattributed_bytes,
        program_misses: kernel.program_misses,
        pauses: kernel.pauses,
    })?;
    let exit_status = exit_status.or_else(|| tracker.exit_code(root));
    let manifest = writer.finish(now_wall_ns(), exit_status, stopped_by_recorder, stopped_ns)?;
    drop(probes);
    // Detached: nothing can be paused after this last resume.
    drop(pauses);
    Ok(RecordSummary {
        manifest,
        totals: tracker.totals,
        exit_status,
        kernel,
        records: consume_stats.records,
        redaction: stage.stats.clone(),
    })
}

/// The manifest a new recording starts with.
pub(crate) fn new_manifest(config: &RecordConfig, mode: &str, command: &[String], root: u32) -> Manifest {
    let started_ns = now_wall_ns();
    Manifest {
        format_version: FORMAT_VERSION,
        id: recording_id(),
        mode: mode.to_owned(),
        program: command.first().map(|c| c.rsplit('/').next().unwrap_or(c).to_owned()).unwrap_or_default(),
        root_pid: root,
        started_ns,
        expires_ns: started_ns.saturating_add(config.expires.as_nanos() as u64),
        recipients: config.recipients.iter().map(|r| r.to_string()).collect(),
        redaction_rules: config.rules.file().rule_names(),
        capture_allowlist: config.rules.file().capture.is_some(),
        ring_buffer_bytes: config.probes.ring_buffer_bytes as u64,
        max_payload: config.probes.max_payload,
        hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        ..Default::default()
    }
}

/// A recording's tracker, and its first record (what is recorded, under which rules).
pub(crate) fn new_tracker(config: &RecordConfig, root: u32, command: Vec<String>) -> (Tracker, Vec<proto::Record>) {
    let mut tracker = Tracker::new(root);
    tracker.record_random = config.rules.file().capture.as_ref().is_none_or(|c| c.random);
    let rules = config.rules.file().rule_names().join(",");
    (tracker, vec![proto::Record { kind: Some(R::Info(proto::RecordingInfo { command, rules })) }])
}

/// A recording's last records: the loss still pending in the kernel for its fds and TLS
/// sessions, what the
/// tracker and redaction still hold, then the counters (from the finished tracker) last.
pub(crate) fn seal_tail(
    tracker: &mut Tracker,
    stage: &mut RedactStage,
    writer: &mut Writer,
    (fd_losses, tls_losses): (
        impl IntoIterator<Item = (retrace_common::FdKey, retrace_common::PendingLoss)>,
        impl IntoIterator<Item = (retrace_common::TlsKey, retrace_common::PendingLoss)>,
    ),
    counters: impl FnOnce(&Tracker) -> proto::Counters,
) -> Result<(), StoreError> {
    let mut tail = Vec::new();
    let now = monotonic_ns();
    for (key, loss) in fd_losses {
        tracker.pending_loss(key.tgid, key.fd, loss.bytes_in, loss.bytes_out, loss.reopened > 0, now, &mut tail);
    }
    for (key, loss) in tls_losses {
        tracker.tls_pending_loss(key.tgid, key.session, loss.bytes_in, loss.bytes_out, now, &mut tail);
    }
    tracker.finish(now, &mut tail);
    // What redaction still holds comes out before the counters, the last record.
    let mut records = Vec::with_capacity(tail.len() + 1);
    for record in tail {
        stage.push(record, &mut records);
    }
    stage.finish(&mut records);
    records.push(proto::Record { kind: Some(R::Counters(counters(tracker))) });
    for record in records {
        writer.append(record)?;
    }
    Ok(())
}

pub(crate) fn spawn_writer(
    mut writer: Writer,
    records: std::sync::mpsc::Receiver<Vec<proto::Record>>,
    failed: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<Result<Writer, StoreError>>> {
    std::thread::Builder::new().name("retrace-writer".into()).spawn(move || {
        let _cpu = stages::ThreadCpu::new(&stages::WRITER);
        let result = (|| {
            for batch in records {
                for record in batch {
                    writer.append(record)?;
                }
                writer.tick()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(writer),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    })
}

/// Events to redacted records. Ends when the consumer is done or the writer has failed. With
/// `split`, two threads: this one rebuilds streams (events → records), a redaction thread scans
/// their payloads and hands them to the writer, so the two costs are paid on two cores (on a
/// machine with few, one thread does both: the extra hand-off cost more than it gave).
pub(crate) fn rebuild_streams(
    mut tracker: Tracker,
    stage: RedactStage,
    first: Vec<proto::Record>,
    mut events: mpsc::Receiver<Vec<Event>>,
    records: std::sync::mpsc::SyncSender<Vec<proto::Record>>,
    root_exited: Arc<AtomicBool>,
    split: bool,
) -> (Tracker, RedactStage) {
    let _cpu = stages::ThreadCpu::new(&stages::STREAMS);
    let (rebuilt_tx, rebuilt_rx) = std::sync::mpsc::sync_channel::<Vec<proto::Record>>(2);
    // Held by the redaction thread for its life; by this one if that thread cannot start.
    let stage = std::sync::Mutex::new(stage);
    let lock = || stage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    std::thread::scope(|scope| {
        let redaction = split.then(|| {
            std::thread::Builder::new().name("retrace-redact".into()).spawn_scoped(scope, {
                let (first, records) = (first.clone(), records.clone());
                move || {
                    let _cpu = stages::ThreadCpu::new(&stages::REDACTION);
                    redact_batches(&mut lock(), first, &mut rebuilt_rx.into_iter(), &records, &stages::REDACTION)
                }
            })
        });
        // Without that thread, this one redacts each batch itself (from the `first` records on).
        let mut inline = match redaction {
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                log::warn!("no redaction thread ({e}): streams and redaction share one");
                Some(first)
            }
            None => Some(first),
        };
        while let Some(batch) = events.blocking_recv() {
            let mut rebuilt = Vec::with_capacity(batch.len() + 16);
            for event in batch {
                tracker.handle(event, &mut rebuilt);
            }
            // Sent even when empty: the writer seals segments by age on these.
            let sent = match inline.as_mut() {
                None => stages::STREAMS.waiting(|| rebuilt_tx.send(rebuilt)).is_ok(),
                Some(first) => redact_batches(
                    &mut lock(),
                    std::mem::take(first),
                    &mut std::iter::once(rebuilt),
                    &records,
                    &stages::STREAMS,
                ),
            };
            if !sent {
                break;
            }
            if tracker.root_exited() {
                root_exited.store(true, Ordering::Relaxed);
            }
        }
        drop(rebuilt_tx);
    });
    (tracker, stage.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// The redaction side: each batch of rebuilt records (after the `first` records) through the
/// redaction stage to the writer, the hand-off's waiting counted to `waits`. False once the
/// writer is gone.
fn redact_batches(
    stage: &mut RedactStage,
    first: Vec<proto::Record>,
    batches: &mut dyn Iterator<Item = Vec<proto::Record>>,
    records: &std::sync::mpsc::SyncSender<Vec<proto::Record>>,
    waits: &stages::Stage,
) -> bool {
    let mut out = Vec::with_capacity(1024);
    for record in first {
        stage.push(record, &mut out);
    }
    for batch in batches {
        for record in batch {
            stage.push(record, &mut out);
        }
        stage.tick(&mut out);
        // The next batch is likely as large: room for it up front, not grown as records come.
        let room = out.len().max(1024);
        if waits.waiting(|| records.send(std::mem::replace(&mut out, Vec::with_capacity(room)))).is_err() {
            return false;
        }
    }
    true
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn recording_id() -> String {
    let mut bytes = [0u8; 16];
    crate::random_bytes(&mut bytes);
    crate::hex::encode(&bytes)
}
