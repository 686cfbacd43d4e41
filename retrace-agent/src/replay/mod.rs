//! Replay: run a program in a sandbox and feed it a recording. The program's outbound
//! connections are answered by the recorded peers, the files it read come from the recording,
//! its writes go to a scratch folder, and anything the recording never saw is refused and
//! reported. See `sandbox` for what the kernel enforces and `notify` for what the replayer
//! answers.

mod notify;
mod peer;
pub mod report;
mod sandbox;
pub mod script;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use report::ReplayReport;
use report::{Blocked, Exchange};
use script::Script;

use crate::store::{Recording, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("nothing to replay: give the command after `--`")]
    NoCommand,
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("bad --live glob: {0}")]
    Glob(String),
}

pub struct ReplayConfig {
    pub argv: Vec<String>,
    /// Paths served from the disk even if the recording read them.
    pub live: Vec<String>,
}

/// State shared by the notifier and the peer threads.
#[derive(Default)]
pub struct Shared {
    report: Mutex<ReplayReport>,
    peers: Mutex<Vec<JoinHandle<()>>>,
    /// A server, stopped by the replayer after its recorded clients were played.
    stopped_by_replayer: AtomicBool,
}

impl Shared {
    fn fail(&self, message: String) {
        self.report.lock().expect("report").errors.push(message);
    }
    fn blocked(&self, blocked: Blocked) {
        self.report.lock().expect("report").blocked.push(blocked);
    }
    fn served(&self, path: &str) {
        let mut r = self.report.lock().expect("report");
        if !r.files_served.iter().any(|p| p == path) {
            r.files_served.push(path.to_owned());
        }
    }
    fn absent_socket(&self, path: &str) {
        let mut r = self.report.lock().expect("report");
        if !r.absent_sockets.iter().any(|p| p == path) {
            r.absent_sockets.push(path.to_owned());
        }
    }
    fn scratch_write(&self, path: &str) {
        self.report.lock().expect("report").scratch_writes.push(path.to_owned());
    }
    fn exchange(&self, exchange: Exchange) {
        self.report.lock().expect("report").exchanges.push(exchange);
    }
}

/// Replays `recording` to `config.argv`; returns when the program has exited and every
/// connection has been played out.
pub fn replay(recording: &Recording, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    let script = Script::from_recording(recording)?;
    let mut live = globset::GlobSetBuilder::new();
    for g in &config.live {
        live.add(globset::Glob::new(g).map_err(|e| ReplayError::Glob(format!("{g}: {e}")))?);
    }
    let live = live.build().map_err(|e| ReplayError::Glob(e.to_string()))?;
    let scratch = std::env::temp_dir().join(format!("retrace-replay-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| ReplayError::Sandbox(format!("scratch folder: {e}")))?;

    let mut connections: HashMap<std::net::SocketAddr, VecDeque<script::Connection>> = HashMap::new();
    for c in script.connections {
        connections.entry(c.peer).or_default().push_back(c);
    }
    let mut failed_connects: HashMap<String, VecDeque<i32>> = HashMap::new();
    for (address, errno) in script.failed_connects {
        failed_connects.entry(address).or_default().push_back(errno);
    }
    // Recorded files that exist today are mounted over their paths in the sandbox; the others
    // are served by the notifier when opened.
    let mut files = script.files;
    let mut binds = Vec::new();
    let served_dir = scratch.join(".served");
    std::fs::create_dir_all(&served_dir).map_err(|e| ReplayError::Sandbox(format!("scratch folder: {e}")))?;
    let mut paths: Vec<String> = files.keys().cloned().collect();
    paths.sort();
    for path in paths {
        if live.is_match(&path) {
            files.remove(&path);
            continue;
        }
        if let Some(meta) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) {
            let source = served_dir.join(binds.len().to_string());
            std::fs::write(&source, &files[&path])
                .and_then(|_| std::fs::set_permissions(&source, meta.permissions()))
                .map_err(|e| ReplayError::Sandbox(format!("scratch folder: {e}")))?;
            files.remove(&path);
            binds.push((source, path));
        }
    }
    let sandboxed = sandbox::spawn(&config.argv, &binds)?;

    let shared = Arc::new(Shared::default());
    for (_, path) in &binds {
        shared.served(path);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let notifier = notify::Notifier {
        listener: sandboxed.listener,
        child: sandboxed.pid,
        connections,
        failed_connects,
        files,
        scratch: scratch.clone(),
        inbound: script.inbound,
        shared: shared.clone(),
        stop: stop.clone(),
    };
    let notifier = std::thread::spawn(move || notifier.run());
    let exit_status = crate::target::wait_exit_code(sandboxed.pid as u32);
    // The notifier ends once no sandboxed process is left: the PID namespace dies with the
    // program, so this wait is short; the deadline only guards against a stuck notifier.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !notifier.is_finished() && Instant::now() < deadline {
        // The notifier ends as soon as the sandbox is empty: wait for it in small steps (this
        // is added to every replay's run time).
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let unplayed = notifier.join().unwrap_or_default();
    let peers = std::mem::take(&mut *shared.peers.lock().expect("peers"));
    for p in peers {
        let _ = p.join();
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let mut report = std::mem::take(&mut *shared.report.lock().expect("report"));
    for c in unplayed {
        report.exchanges.push(Exchange {
            stream_id: c.stream_id,
            peer: c.peer.to_string(),
            status: "not_played".into(),
            ..Default::default()
        });
    }
    report.exchanges.sort_by_key(|e| e.stream_id);
    // A server stopped by the replayer ends the replay normally.
    report.exit_status = if shared.stopped_by_replayer.load(Ordering::Relaxed) { 0 } else { exit_status };
    report.result = if report.passed() { "passed" } else { "failed" }.into();
    Ok(report)
}
