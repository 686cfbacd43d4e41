//! `retrace record`: launch-and-record or attach-by-PID.

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use retrace_agent::{
    audit::Subject, keys, record, retention, Compression, ProbeConfig, RecordConfig, RulesFile, SegmentPolicy, Target,
};

#[derive(clap::Args)]
pub struct Args {
    /// Recording directory to create.
    #[arg(short, long)]
    output: PathBuf,
    /// Attach to this running process (and follow the children it starts from now on).
    #[arg(long, conflicts_with = "command")]
    pid: Option<u32>,
    /// Record every process in this cgroup (v2) or below it: those there now, and each one that
    /// execs there from now on (a container's processes). Ends with SIGINT/SIGTERM or
    /// --duration.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["command", "pid"])]
    cgroup: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Kernel ring buffer size (power of two; K/M/G suffixes).
    #[arg(long, default_value = "32M", value_parser = super::size::parse)]
    ring_buffer: u64,
    /// Per-syscall payload cap (K/M/G suffixes); beyond it the recording holds an explicit
    /// truncation gap. Default: no cap.
    #[arg(long, value_parser = super::size::parse)]
    max_payload: Option<u64>,
    /// Never drop payload under load: pause the traced processes (SIGSTOP) while the kernel
    /// ring buffer is half full and resume them (SIGCONT) once the agent has drained it. They
    /// run no faster than Retrace can record; their parent sees the stops.
    #[arg(long)]
    backpressure: bool,
    /// Encrypt to this age recipient (`age1…`; repeat for several). Default: your own
    /// retrace identity's (created on first use). The recorder never needs a private key.
    #[arg(long = "recipient", short = 'r', value_name = "RECIPIENT")]
    recipients: Vec<String>,
    /// Redaction rules and capture allowlist (TOML; see SECURITY.md). Built-in detectors
    /// apply without it.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Keep the recording this long (s, m, h, d, w); `retrace gc` deletes it after.
    #[arg(long, default_value = "7d", value_parser = retention::parse_duration)]
    expires: Duration,
    /// Seal segments at this size (they are also sealed every second).
    #[arg(long, default_value = "64M", value_parser = super::size::parse)]
    segment_size: u64,
    /// Compress segments with lz4 before encrypting them: text takes a fraction of the disk,
    /// for more agent CPU (see SECURITY.md on what sizes reveal).
    #[arg(long)]
    compress: bool,
    /// Run the recorder's threads on these CPUs only (e.g. `3` or `2-3`), off the cores the
    /// recorded service uses; the service keeps its own. Default: any CPU.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    cpus: Option<CpuList>,
    /// Threads that seal (encrypt) and hash segments in parallel, beside the writer thread.
    /// Default: the agent's CPUs (`--cpus`, or all it may run on) beyond four, at most 8.
    #[arg(long, value_name = "N")]
    seal_threads: Option<usize>,
    /// Leave the traced programs' vDSO alone: their wall-clock reads are not recorded (replay
    /// then shows the recorded time of each event plus the time elapsed), and an exec is held
    /// only for a program not seen yet. By default each exec is held (~0.25 ms) while its
    /// vDSO's clock entry points are patched into system calls, which are recorded (a clock
    /// read then costs ~0.4 µs more).
    #[arg(long)]
    no_clock: bool,
    /// The command to launch and record.
    #[arg(last = true)]
    command: Vec<String>,
}

/// A parsed `--cpus` list (a newtype: clap would take a bare `Vec` for repeated values).
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    retrace_agent::cpus::parse(text).map(CpuList).map_err(|e| e.to_string().trim_start_matches("--cpus: ").to_owned())
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let target = match (args.pid, &args.cgroup, args.command.is_empty()) {
        (None, Some(dir), true) => Target::Cgroup(dir.clone()),
        (Some(pid), None, true) => Target::Attach(pid),
        (None, None, false) => Target::Launch(args.command.clone()),
        (None, None, true) => {
            bail!(
                "nothing to record: give a command after `--`, a running process with --pid, or a cgroup with --cgroup"
            )
        }
        _ => bail!("give one of --pid, --cgroup or a command"),
    };
    let ring = args.ring_buffer;
    if !ring.is_power_of_two() || !(4096..=(1 << 31)).contains(&ring) {
        bail!("--ring-buffer must be a power of two between 4K and 2G (e.g. 32M), not {ring}");
    }
    if args.max_payload == Some(0) {
        bail!("--max-payload must be at least 1 byte (leave it out to capture everything)");
    }
    let duration = match args.duration {
        Some(s) if !(s > 0.0 && s.is_finite()) => bail!("--duration must be a positive number of seconds"),
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    if args.segment_size < 4096 {
        bail!("--segment-size must be at least 4K");
    }
    let rules = match &args.rules {
        Some(path) => RulesFile::read(path)?,
        None => RulesFile::default(),
    }
    .check()?;
    let recipients = if args.recipients.is_empty() {
        vec![keys::default_recipient()?]
    } else {
        args.recipients.iter().map(|r| keys::parse_recipient(r)).collect::<Result<_, _>>()?
    };
    let what = match &target {
        Target::Attach(pid) => format!("pid {pid}"),
        Target::Launch(argv) => format!("launch {}", argv[0]),
        Target::Cgroup(dir) => format!("cgroup {}", dir.display()),
    };
    super::audit("record_start", Subject::recording(&args.output, "").detail(what))?;
    let config = RecordConfig {
        output: args.output.clone(),
        probes: ProbeConfig {
            ring_buffer_bytes: ring as u32,
            max_payload: args.max_payload,
            backpressure: args.backpressure,
            hold_execs: true,
            record_clock: !args.no_clock,
        },
        duration,
        segments: SegmentPolicy {
            max_bytes: args.segment_size,
            compression: if args.compress { Compression::Lz4 } else { Compression::None },
            seal_threads: args.seal_threads.unwrap_or_else(|| {
                let cpus = match &args.cpus {
                    Some(list) => list.0.len(),
                    None => retrace_agent::cpus::usable(),
                };
                retrace_agent::cpus::seal_threads(cpus)
            }),
            ..SegmentPolicy::default()
        },
        recipients,
        expires: args.expires,
        rules,
        agent_cpus: args.cpus.as_ref().map(|c| c.0.clone()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop_tx.send(true);
        });
        record(config, target, stop_rx).await
    })?;
    let redacted: u64 = summary.redaction.by_rule.values().map(|(_, bytes)| bytes).sum();
    super::audit(
        "record_stop",
        Subject::recording(&args.output, &summary.manifest.id)
            .detail(format!("{} bytes recorded, {redacted} redacted", summary.totals.recorded_bytes)),
    )?;
    let t = summary.totals;
    let mut line = format!("{} streams, {} bytes recorded, {} bytes lost", t.streams, t.recorded_bytes, t.lost_bytes);
    if t.in_kernel_bytes > 0 {
        line.push_str(&format!(
            ", {} bytes moved inside the kernel (sendfile/splice, not captured)",
            t.in_kernel_bytes
        ));
    }
    if redacted > 0 {
        let rules: Vec<String> =
            summary.redaction.by_rule.iter().map(|(rule, (n, _))| format!("{rule} x{n}")).collect();
        line.push_str(&format!(", {redacted} bytes redacted ({})", rules.join(", ")));
    }
    if summary.redaction.not_captured_bytes > 0 {
        line.push_str(&format!(
            ", {} bytes of {} streams kept as metadata only (capture allowlist)",
            summary.redaction.not_captured_bytes, summary.redaction.not_captured_streams
        ));
    }
    eprintln!("retrace: {line} -> {}", args.output.display());
    if std::env::var_os("RETRACE_PIPELINE_STATS").is_some() {
        eprintln!("retrace: {}", retrace_agent::stages::report());
    }
    let k = summary.kernel;
    if k.chunk_bytes_dropped + k.records_dropped + k.task_records_dropped > 0 {
        eprintln!(
            "retrace: warning: the kernel ring buffer overflowed ({} payload bytes, {} records dropped; \
             each is a gap in the recording): record again with a larger --ring-buffer (now {})",
            k.chunk_bytes_dropped,
            k.records_dropped + k.task_records_dropped,
            super::size::format(args.ring_buffer)
        );
    }
    if k.pauses > 0 {
        eprintln!(
            "retrace: the traced processes were paused {} times to let the agent catch up (--backpressure)",
            k.pauses
        );
    }
    if k.program_misses > 0 {
        eprintln!(
            "retrace: warning: the kernel skipped the probes {} times (see `retrace inspect`): some calls are missing",
            k.program_misses
        );
    }
    Ok(summary.exit_status.unwrap_or(0))
}
