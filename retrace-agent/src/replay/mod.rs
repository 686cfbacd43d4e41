//! Replay: run a program in a sandbox and feed it a recording. The program's outbound
//! connections are answered by the recorded peers, the files it read come from the recording,
//! its writes stay in a private layer, and anything the recording never saw is refused and
//! reported. See `sandbox` for what the kernel enforces, `rootfs` for the filesystem and
//! `notify` for what the replayer answers.

mod clock;
mod datagram;
pub mod denoise;
mod diag;
mod dirstat;
mod h2;
pub mod http;
mod linked_random;
mod listening;
pub mod listing;
mod matching;
mod notify;
mod order;
mod output;
mod peer;
mod random_device;
pub mod report;
mod rootfs;
mod sandbox;
pub mod script;
mod seccomp;
mod tls;

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
    #[error("cannot keep the scratch layer in {path}: {source}")]
    KeepScratch {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct ReplayConfig {
    pub argv: Vec<String>,
    /// Paths served from the disk even if the recording read them.
    pub live: Vec<String>,
    /// Copy what the program wrote here after the run.
    pub keep_scratch: Option<std::path::PathBuf>,
    /// Noise rules (the rules file's `[noise]`).
    pub noise: http::Noise,
}

/// The shim preloaded into the program when the recording holds OpenSSL's random bytes
/// (shim/openssl_rand.c, built by build.rs), and where the sandbox has it.
const OPENSSL_RAND_SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libretrace_openssl_rand.so"));
const OPENSSL_RAND_SHIM_PATH: &str = "/.retrace/libretrace_openssl_rand.so";

/// State shared by the notifier and the peer threads.
#[derive(Default)]
pub struct Shared {
    report: Mutex<ReplayReport>,
    peers: Mutex<Vec<JoinHandle<()>>>,
    /// A server, stopped by the replayer after its recorded clients were played.
    stopped_by_replayer: AtomicBool,
    /// What may differ in HTTP messages besides the built-in noisy headers.
    noise: http::Noise,
    /// The wall clock the program sees.
    clock: clock::VirtualClock,
    /// When the recorder stopped the program, if it did: the clock reads it when the replayer
    /// stops the program.
    stopped_ns: Option<u64>,
    /// The sandbox's init (host pid): every sandboxed process descends from it.
    sandbox_init: libc::pid_t,
    /// The replay's CA, where TLS connections were recorded with their plaintext.
    tls: Option<tls::Authority>,
}

impl Shared {
    fn fail(&self, message: String) {
        self.report.lock().expect("report").errors.push(message);
    }
    fn blocked(&self, blocked: Blocked) {
        self.report.lock().expect("report").blocked.push(blocked);
    }
    fn unmatched(&self, unmatched: report::Unmatched) {
        self.report.lock().expect("report").unmatched.push(unmatched);
    }
    fn absent_socket(&self, path: &str) {
        let mut r = self.report.lock().expect("report");
        if !r.absent_sockets.iter().any(|p| p == path) {
            r.absent_sockets.push(path.to_owned());
        }
    }
    fn tls_refused(&self, refusal: report::TlsRefusal) {
        self.report.lock().expect("report").tls_refused.push(refusal);
    }
    fn tls_terminated(&self) {
        self.report.lock().expect("report").tls_terminated += 1;
    }
    fn request_moved(&self) {
        self.report.lock().expect("report").requests_moved += 1;
    }
    /// A played connection, or one request of one (the report has an entry per recorded
    /// connection: its requests' add up, and the first difference is the connection's).
    fn exchange(&self, exchange: Exchange) {
        let mut report = self.report.lock().expect("report");
        match report.exchanges.iter_mut().find(|e| e.stream_id == exchange.stream_id) {
            Some(e) => e.add(exchange),
            None => report.exchanges.push(exchange),
        }
    }
}

/// A recorded connection, or one of its requests, that the program never asked for: a
/// connection none of whose requests was played is `not_played`; one some of whose were is
/// `diverged`, with `difference` (the request missing).
fn never_asked(exchanges: &mut Vec<Exchange>, stream_id: u64, peer: String, difference: Option<report::Difference>) {
    match exchanges.iter_mut().find(|e| e.stream_id == stream_id) {
        Some(e) if e.status == "not_played" => {}
        Some(e) => e.add(Exchange { status: "diverged".into(), difference, ..Default::default() }),
        None => exchanges.push(Exchange { stream_id, peer, status: "not_played".into(), ..Default::default() }),
    }
}

/// Replays `recording` to `config.argv`; returns when the program has exited and every
/// connection has been played out.
pub fn replay(recording: &Recording, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    let mut script = Script::from_recording(recording)?;
    let filled_from_host = std::mem::take(&mut script.filled_from_host);
    let changed_on_host = std::mem::take(&mut script.changed_on_host);
    let mut live = globset::GlobSetBuilder::new();
    for g in &config.live {
        live.add(globset::Glob::new(g).map_err(|e| ReplayError::Glob(format!("{g}: {e}")))?);
    }
    let live = live.build().map_err(|e| ReplayError::Glob(e.to_string()))?;

    // TLS connections recorded with their plaintext are answered by the replayer's own TLS
    // server, under a CA made for this replay and trusted inside the sandbox only.
    let authority = match script.connections.iter().any(|c| c.tls.is_some()) {
        true => Some(
            tls::Authority::new((recording.manifest.started_ns / 1_000_000_000) as i64)
                .map_err(|e| ReplayError::Sandbox(format!("cannot make the replay CA: {e}")))?,
        ),
        false => None,
    };
    let connections = Arc::new(matching::Pool::new(script.connections));
    let mut failed_connects: HashMap<String, VecDeque<i32>> = HashMap::new();
    for (address, errno) in script.failed_connects {
        failed_connects.entry(address).or_default().push_back(errno);
    }
    // Recorded files are layered in at their paths, with their recorded content.
    let mut rootfs = rootfs::RootFs::prepare()?;
    let (mut files_served, mut files_absent) = (Vec::new(), Vec::new());
    let mut paths: Vec<&String> = script.files.keys().filter(|p| !live.is_match(p)).collect();
    paths.sort();
    for path in paths {
        if path.starts_with("/proc/") {
            continue; // the sandbox's /proc is its own (the kernel's files: below)
        }
        match &script.files[path] {
            script::FileStart::Content(content, mtime_ns) => {
                if rootfs.layer_file(path, content, *mtime_ns)? {
                    files_served.push(path.clone());
                }
            }
            script::FileStart::Absent => {
                if rootfs.hide_file(path)? {
                    files_absent.push(path.clone());
                }
            }
        }
    }
    let mut env = Vec::new();
    if let Some(authority) = &authority {
        env.extend(trust_replay_ca(&mut rootfs, authority, &script.files)?);
    }
    let tees: Vec<output::Tee> =
        script.outputs.into_iter().filter_map(|o| output::Tee::start(o, &config.noise)).collect();
    let stdio: Vec<(i32, std::os::fd::RawFd)> =
        tees.iter().map(|t| (t.fd, std::os::fd::AsRawFd::as_raw_fd(&t.write_end))).collect();
    // The program's clock starts at the recorded command's start, now.
    let script_started_ns = script.started_ns.unwrap_or(recording.manifest.started_ns);
    let clock = clock::VirtualClock::new(script_started_ns);
    // What OpenSSL's random functions returned comes from the replayer through a preloaded shim.
    if !script.library_random.is_empty() {
        rootfs.layer_file(OPENSSL_RAND_SHIM_PATH, OPENSSL_RAND_SHIM, None)?;
        let preload = match std::env::var("LD_PRELOAD") {
            Ok(other) if !other.is_empty() => format!("{OPENSSL_RAND_SHIM_PATH}:{other}"),
            _ => OPENSSL_RAND_SHIM_PATH.to_owned(),
        };
        env.push(("LD_PRELOAD".to_owned(), preload));
    }
    // The random devices the program read when recorded give the recorded bytes again.
    let mut fifos = Vec::new();
    for (device, bytes) in script.random_devices {
        fifos.push((rootfs.random_device(device.trim_start_matches("/dev/"))?, bytes));
    }
    // The kernel's files the program read (memory, load, uptime) say what they said then.
    for (path, content) in script.proc_files.iter().filter(|(path, _)| !live.is_match(path)) {
        rootfs.proc_file(path, content)?;
        files_served.push(path.clone());
    }
    files_served.sort();
    rootfs.settle_folder_times();
    // Whatever has a later time than this in the sandbox, the program changed.
    let started_ns = crate::clock::now_wall_ns() as i128;
    let sandboxed = sandbox::spawn(&config.argv, &env, &rootfs, &stdio, recording.manifest.root_pid)?;

    let shared = Arc::new(Shared {
        noise: config.noise.clone(),
        clock,
        stopped_ns: recording.manifest.stopped_ns,
        sandbox_init: sandboxed.pid,
        tls: authority,
        ..Default::default()
    });
    {
        let mut report = shared.report.lock().expect("report");
        report.files_filled_from_host = filled_from_host;
        report.files_changed_on_host = changed_on_host.into_iter().filter(|p| !live.is_match(p)).collect();
        report.files_served = files_served;
        report.files_absent = files_absent;
        report.internal_connections = script.internal_connections;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let feeders: Vec<random_device::Feeder> =
        fifos.into_iter().map(|(fifo, bytes)| random_device::Feeder::start(fifo, bytes, stop.clone())).collect();
    // The recorded datagram peers listen before the program starts.
    let datagrams = datagram::serve(sandboxed.pid, script.datagrams, script.local_ips, shared.clone(), stop.clone());
    let no_clients = script.inbound.is_empty();
    let notifier = notify::Notifier {
        listener: sandboxed.listener,
        child: sandboxed.pid,
        udp_addresses: script.udp_addresses,
        connections: connections.clone(),
        failed_connects,
        inbound: script.inbound,
        inbound_order: script.inbound_order,
        random: script.random,
        sysinfo: script.sysinfo,
        clock_reads: script.clock_reads,
        namespace_tids: HashMap::new(),
        started_ns,
        at_random: script.at_random,
        linked_random: (!script.library_random.is_empty()).then(Default::default),
        library_random: script.library_random,
        folders: listing::Folders::new(script.listings),
        dir_stats: dirstat::DirStats::default(),
        children: script.children,
        pids: sandboxed.go.pid_setter(),
        shared: shared.clone(),
        stop: stop.clone(),
    };
    let notifier = std::thread::spawn(move || notifier.run());
    let exited = Arc::new(AtomicBool::new(false));
    if let (true, Some(stopped_ns)) = (no_clients, recording.manifest.stopped_ns) {
        // A program the recorder stopped, with no recorded clients whose end would say when:
        // stopped once it has run as long as it had.
        let ran = stopped_ns.saturating_sub(script_started_ns);
        let (shared, exited, child) = (shared.clone(), exited.clone(), sandboxed.pid);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_nanos(ran);
            while Instant::now() < deadline {
                if exited.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited.load(Ordering::Relaxed) {
                peer::stop_program(child, &shared);
            }
        });
    }
    sandboxed.go.start();
    let exit_status = crate::target::wait_exit_code(sandboxed.pid as u32);
    exited.store(true, Ordering::Relaxed);
    let outputs: Vec<report::OutputCheck> = tees.into_iter().map(output::Tee::finish).collect();
    // The notifier ends once no sandboxed process is left: the PID namespace dies with the
    // program, so this wait is short; the deadline only guards against a stuck notifier.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !notifier.is_finished() && Instant::now() < deadline {
        // The notifier ends as soon as the sandbox is empty: wait for it in small steps (this
        // is added to every replay's run time).
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = notifier.join();
    let _ = datagrams.join();
    let peers = std::mem::take(&mut *shared.peers.lock().expect("peers"));
    for p in peers {
        let _ = p.join();
    }
    let unplayed = connections.left();
    let unasked = connections.h2_left();
    let changes = rootfs.changes();
    if let Some(dir) = &config.keep_scratch {
        rootfs.keep(dir, &changes).map_err(|source| ReplayError::KeepScratch { path: dir.clone(), source })?;
    }
    let mut report = std::mem::take(&mut *shared.report.lock().expect("report"));
    for feeder in feeders {
        let fed = feeder.finish();
        report.device_random_replayed += fed.replayed;
        report.device_random_unreplayed += fed.unreplayed;
    }
    report.outputs = outputs;
    (report.clock_reads, report.clock_reads_exact) = shared.clock.reads();
    report.scratch_writes = changes.written;
    report.scratch_removed = changes.removed;
    for c in unplayed {
        let difference = c.piece.map(|piece| report::Difference {
            offset: piece.offset as u64,
            what: "the program never sent this request".into(),
            expected: match c.steps.first() {
                Some(script::Step::Send { bytes, .. }) => peer::context(bytes),
                _ => String::new(),
            },
            ..Default::default()
        });
        never_asked(&mut report.exchanges, c.stream_id, c.peer_name(), difference);
    }
    for (stream_id, peer, request) in unasked {
        let difference = report::Difference { what: format!("the program never sent {request}"), ..Default::default() };
        never_asked(&mut report.exchanges, stream_id, peer, Some(difference));
    }
    report.exchanges.sort_by_key(|e| e.stream_id);
    // A server stopped by the replayer ends the replay normally; a program that ended on its
    // own must end as it did when recorded.
    if shared.stopped_by_replayer.load(Ordering::Relaxed) {
        report.exit_status = 0;
    } else {
        report.exit_status = exit_status;
        if !recording.manifest.stopped_by_recorder {
            report.recorded_exit_status = recording.manifest.exit_status;
        }
    }
    report.result = if report.passed() { "passed" } else { "failed" }.into();
    Ok(report)
}

/// Where the replay CA is, inside the sandbox.
const REPLAY_CA_PATH: &str = "/.retrace/replay-ca.pem";
const REPLAY_BUNDLE_PATH: &str = "/.retrace/ca-bundle.pem";
const REPLAY_CERT_DIR: &str = "/.retrace/certs";

/// Makes the program trust the replay CA, inside the sandbox only: the system's bundles and
/// hashed folders, every CA file the program read when recorded (`curl --cacert`, a client's
/// own bundle), and the variables TLS stacks read (OpenSSL, Go, python requests, node, curl).
/// Returns the variables to set.
fn trust_replay_ca(
    rootfs: &mut rootfs::RootFs,
    authority: &tls::Authority,
    files: &HashMap<String, script::FileStart>,
) -> Result<Vec<(String, String)>, ReplayError> {
    let ca = authority.pem();
    let with_ca = |content: &[u8]| {
        let mut out = content.to_vec();
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(&ca);
        out
    };
    for (path, start) in files {
        if let script::FileStart::Content(content, mtime_ns) = start {
            if tls::holds_certificates(content) {
                rootfs.layer_file(path, &with_ca(content), *mtime_ns)?;
            }
        }
    }
    let mut system_bundle = Vec::new();
    for path in tls::SYSTEM_BUNDLES {
        if files.contains_key(*path) {
            continue;
        }
        if let Ok(content) = std::fs::read(path) {
            if system_bundle.is_empty() {
                system_bundle = content.clone();
            }
            rootfs.layer_file(path, &with_ca(&content), None)?;
        }
    }
    let name = format!("{:08x}.0", authority.subject_hash());
    for dir in tls::SYSTEM_CERT_DIRS {
        if std::path::Path::new(dir).is_dir() {
            rootfs.layer_file(&format!("{dir}/{name}"), &ca, None)?;
        }
    }
    rootfs.layer_file(REPLAY_CA_PATH, &ca, None)?;
    rootfs.layer_file(REPLAY_BUNDLE_PATH, &with_ca(&system_bundle), None)?;
    rootfs.layer_file(&format!("{REPLAY_CERT_DIR}/{name}"), &ca, None)?;
    let mut env: Vec<(String, String)> = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
        .iter()
        .map(|v| (v.to_string(), REPLAY_BUNDLE_PATH.to_owned()))
        .collect();
    env.push(("SSL_CERT_DIR".into(), REPLAY_CERT_DIR.to_owned()));
    env.push(("NODE_EXTRA_CA_CERTS".into(), REPLAY_CA_PATH.to_owned()));
    Ok(env)
}
