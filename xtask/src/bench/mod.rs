//! `cargo xtask bench`: Retrace against no tracing, strace and a bpftrace byte counter, on real
//! servers and a throughput pump, in alternating rounds; writes BENCHMARKS.md and
//! BENCHMARKS.json.

mod replay;
mod report;
mod tracers;
mod workloads;

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use tracers::Tracer;
use workloads::{call_cost, pump, untraced_read_ns, Content, Nginx, Placement, Redis, Sample};

/// One run of the syscall loop in a process the tracer does not trace.
#[derive(Clone, Debug, Serialize)]
pub struct UntracedCost {
    pub tracer: Tracer,
    pub round: usize,
    pub read_ns: f64,
}

/// One run of a system call loop on CPU 0, recorded by an agent on CPU 1 or not.
#[derive(Clone, Debug, Serialize)]
pub struct CallCost {
    pub name: String,
    pub recorded: bool,
    pub round: usize,
    pub ns_per_iteration: f64,
    /// The agent's CPU per iteration (0 unrecorded).
    pub agent_ns_per_iteration: f64,
    pub lost_bytes: u64,
}

/// The loops of the call-cost table: name, what one iteration records, iterations (what they
/// write fits the runs' ring buffer).
const CALL_LOOPS: [(&str, &str, u64); 4] = [
    ("openclose", "`open` + `close` of a 4 KiB file: two metadata records, one with the path", 300_000),
    ("pread", "`pread` of 1 KiB: one data record with its payload", 300_000),
    ("socket", "512 B through a unix socket pair, `write` + `read`: two data records", 200_000),
    ("getppid", "`getppid`: nothing recorded, the `sys_exit` dispatcher only", 2_000_000),
];

/// What a traced call costs the process and the agent: each loop unrecorded and recorded, in
/// alternating rounds.
fn call_costs(root: &Path, retrace: &Path, work: &Path, quick: bool) -> Result<Vec<CallCost>> {
    let bin = compile_helper(root, work, "syscalls")?;
    let mut rows = Vec::new();
    for round in 0..if quick { 1 } else { 3 } {
        for (name, _, iterations) in CALL_LOOPS {
            for recorded in [false, true] {
                eprintln!("bench: call cost {name} round {round} recorded={recorded}");
                let iterations = if quick { iterations / 4 } else { iterations };
                let (ns, agent_ns, lost_bytes) = call_cost(&bin, retrace, work, name, iterations, recorded)?;
                rows.push(CallCost {
                    name: name.into(),
                    recorded,
                    round,
                    ns_per_iteration: ns,
                    agent_ns_per_iteration: agent_ns,
                    lost_bytes,
                });
            }
        }
    }
    Ok(rows)
}

/// The call-cost table alone (`--calls-only`), written in place of the previous one.
pub fn run_calls(root: &Path, quick: bool) -> Result<()> {
    let (retrace, work) = prepare(root)?;
    let rows = call_costs(root, &retrace, &work, quick)?;
    report::update_calls(root, &rows, &head_commit(root)?)
}

/// The pump's rate for the compression table, MB/s.
pub const COMPRESSION_MBPS: u64 = 300;

/// How the highest zero-loss rate of one pump configuration was found.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub sink: String,
    pub chunk: usize,
    pub unrecorded_mbps: f64,
    pub recorded_full_speed_mbps: f64,
    pub full_speed_loss_fraction: f64,
    pub zero_loss_mbps: f64,
    pub zero_loss_sample: Option<Sample>,
    /// At full speed with `--backpressure`: the writer's rate and the bytes lost.
    pub backpressure_mbps: f64,
    pub backpressure_lost_bytes: u64,
}

/// One run of the scaling table: a writer at full speed, 1 MiB writes into a file, recorded
/// with `--backpressure` (zero loss) by an agent given `cores` CPUs.
#[derive(Clone, Debug, Serialize)]
pub struct AgentScaling {
    pub cores: usize,
    pub round: usize,
    pub mbps: f64,
    pub lost_bytes: u64,
    pub recorded_bytes: u64,
    pub cpu_seconds: f64,
}

/// One recording given 1, 2, 4... cores (`xtask/bench/scaling.sh`, which also runs where
/// nothing is installed): its zero-loss rate and the agent's CPU per GB.
fn agent_scaling(root: &Path, retrace: &Path, work: &Path, quick: bool) -> Result<Vec<AgentScaling>> {
    let pump_bin = compile_helper(root, work, "pump")?;
    let (total_mb, rounds) = if quick { ("1024", "1") } else { ("4096", "3") };
    eprintln!("bench: one recording on 1, 2, 4... cores");
    let out = Command::new("bash")
        .arg(root.join("xtask/bench/scaling.sh"))
        .args([retrace, &pump_bin, &work.join("scaling")])
        .args([total_mb, rounds])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run xtask/bench/scaling.sh")?;
    if !out.status.success() {
        bail!("xtask/bench/scaling.sh failed ({})", out.status);
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [cores, round, mbps, cpu, recorded, lost] = f[..] else { bail!("scaling.sh printed {line:?}") };
        rows.push(AgentScaling {
            cores: cores.parse()?,
            round: round.parse()?,
            mbps: mbps.parse()?,
            cpu_seconds: cpu.parse()?,
            recorded_bytes: recorded.parse()?,
            lost_bytes: lost.parse()?,
        });
    }
    Ok(rows)
}

/// The scaling table alone (`--scaling-only`), written in place of the previous one.
pub fn run_scaling(root: &Path, quick: bool) -> Result<()> {
    let (retrace, work) = prepare(root)?;
    let rows = agent_scaling(root, &retrace, &work, quick)?;
    report::update_scaling(root, &rows, &head_commit(root)?)
}

/// `target/device`: the release binary (stripped), a static pump, redis-server,
/// redis-benchmark and taskset, with every library they load and the loader, for
/// `xtask/bench/device.sh` on a lent machine where nothing is installed.
pub fn device_bundle(root: &Path) -> Result<()> {
    let (retrace, _work) = prepare(root)?;
    let bundle = root.join("target/device");
    let _ = std::fs::remove_dir_all(&bundle);
    let (bin, lib) = (bundle.join("bin"), bundle.join("lib"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&lib)?;
    crate::run(Command::new("strip").arg("-o").arg(bin.join("retrace")).arg(&retrace))?;
    crate::run(
        Command::new("cc").args(["-O2", "-static", "-o"]).arg(bin.join("pump")).arg(root.join("xtask/bench/pump.c")),
    )?;
    for program in ["redis-server", "redis-benchmark", "taskset"] {
        let path = which(program)?;
        std::fs::copy(std::fs::canonicalize(&path)?, bin.join(program))?;
    }
    for program in ["retrace", "redis-server", "redis-benchmark", "taskset"] {
        for (name, path) in shared_libraries(&bin.join(program))? {
            std::fs::copy(std::fs::canonicalize(&path)?, lib.join(name))?;
        }
    }
    // The commit the bundle was built at, for the report (the binary's --version has none).
    std::fs::write(bundle.join("commit"), head_commit(root)? + "\n")?;
    let size: u64 = walk_size(&bundle)?;
    eprintln!(
        "bench: {} ({:.1} MiB); on the device: run(command=\"bash xtask/bench/device.sh target/device $OUT\", \
         carry=[\"target/device\"]), then `cargo xtask bench --device-report <files_at>/device.md`",
        bundle.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// A device run's section (`device.md`) in BENCHMARKS.md.
pub fn put_device_report(root: &Path, report: &Path) -> Result<()> {
    let body = std::fs::read_to_string(report).with_context(|| format!("read {}", report.display()))?;
    if !body.trim_start().starts_with("Measured on the lent many-core machine") || !body.contains("| agent cores |") {
        bail!("{} is not a device.md written by xtask/bench/device.sh", report.display());
    }
    report::update_device(root, &body)
}

fn which(program: &str) -> Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed (cargo xtask setup installs the bench's peers)"))
}

/// What `ldd` says `binary` loads: (name it is loaded by, where it is), the loader as
/// `ld-linux-x86-64.so.2`.
fn shared_libraries(binary: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let out = Command::new("ldd").arg(binary).output().context("run ldd")?;
    let mut libraries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            if let Some(path) = rest.split_whitespace().next().filter(|p| p.starts_with('/')) {
                libraries.push((name.to_owned(), path.into()));
            }
        } else if let Some(path) = line.split_whitespace().next().filter(|p| p.contains("/ld-linux")) {
            libraries.push(("ld-linux-x86-64.so.2".to_owned(), path.into()));
        }
    }
    if !libraries.iter().any(|(name, _)| name == "ld-linux-x86-64.so.2") {
        bail!("ldd named no loader for {}", binary.display());
    }
    Ok(libraries)
}

fn walk_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() { walk_size(&entry.path())? } else { entry.metadata()?.len() };
    }
    Ok(total)
}

/// The replay measurements alone (`--replay-only`): a client (redis-cli) and a server fed 100
/// recorded connections, written in place of the previous ones.
pub fn run_replays(root: &Path, quick: bool) -> Result<()> {
    let (retrace, work) = prepare(root)?;
    let replays = replays(&retrace, &work, quick)?;
    eprintln!("bench: what a replayed wall-clock read costs");
    let clock = replay::clock_cost(&retrace, &work, if quick { 3 } else { 5 })?;
    report::update_replays(root, &replays, &clock, &head_commit(root)?)
}

/// Peers installed, the release binary built, an empty work folder: (binary, folder).
fn prepare(root: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    install_peers()?;
    crate::run(crate::cargo().args(["build", "--release", "--package", "retrace-agent", "--bin", "retrace"]))?;
    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    Ok((root.join("target/release/retrace"), work))
}

fn replays(retrace: &Path, work: &Path, quick: bool) -> Result<Vec<replay::ReplaySpeed>> {
    let rounds = if quick { 3 } else { 5 };
    let redis = Redis::start(work, Placement::Shared)?;
    eprintln!("bench: replay of redis-cli");
    let client = replay::redis_cli(retrace, work, redis.port(), if quick { 500 } else { 5000 }, rounds)?;
    drop(redis);
    eprintln!("bench: replay of a server fed 100 connections");
    let server = replay::server(retrace, work, 100, rounds)?;
    eprintln!("bench: replay of redis-server fed redis-benchmark's concurrent connections");
    let concurrent = replay::redis_server(retrace, work, if quick { 2000 } else { 20000 }, rounds)?;
    Ok(vec![client, server, concurrent])
}

pub fn run(root: &Path, quick: bool) -> Result<()> {
    // eBPF run-time accounting (what `RETRACE_PROBE_STATS` reads) slows every eBPF program,
    // Retrace's and bpftrace's alike: numbers taken with it on are not comparable.
    if std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() != "0") {
        bail!("kernel.bpf_stats_enabled is on and slows every eBPF program: run `sysctl -w kernel.bpf_stats_enabled=0` first");
    }
    let (retrace, work) = prepare(root)?;
    let pump_bin = compile_helper(root, &work, "pump")?;
    let syscalls_bin = compile_helper(root, &work, "syscalls")?;
    let rounds = if quick { 1 } else { 3 };
    let secs = if quick { 2 } else { 5 };

    let mut samples: Vec<Sample> = Vec::new();
    let replay_speeds = replays(&retrace, &work, quick)?;
    let clock_cost = replay::clock_cost(&retrace, &work, rounds.max(3))?;
    {
        let redis = Redis::start(&work, Placement::Shared)?;
        for size in [512, 16 * 1024] {
            for round in 0..rounds {
                for tracer in Tracer::ALL {
                    eprintln!("bench: redis {size}B round {round} {}", tracer.name());
                    samples.extend(redis.run(&retrace, &work, tracer, size, round)?);
                }
            }
        }
    }
    {
        let nginx = Nginx::start(&work, Placement::Shared)?;
        // `tls/`: the same nginx over TLS, where Retrace records the plaintext through its
        // uprobes on libssl as well as the ciphertext.
        for file in ["1k.bin", "1m.bin", "tls/1k.bin", "tls/64k.bin"] {
            let tracers = match file {
                "1m.bin" => &Tracer::WITH_BACKPRESSURE[..],
                f if f.starts_with("tls/") => &[Tracer::None, Tracer::Retrace][..],
                _ => &Tracer::ALL[..],
            };
            for round in 0..rounds {
                for &tracer in tracers {
                    eprintln!("bench: nginx {file} round {round} {}", tracer.name());
                    samples.push(nginx.run(&retrace, &work, tracer, file, round, secs)?);
                }
            }
        }
    }
    // The same servers with the tracer on a core of its own: what the traced process pays.
    let mut split = Vec::new();
    if Placement::split_possible() {
        {
            let redis = Redis::start(&work, Placement::Split)?;
            for round in 0..rounds {
                for tracer in Tracer::SPLIT {
                    eprintln!("bench: redis 512B, tracer on CPU 1, round {round} {}", tracer.name());
                    split.extend(redis.run(&retrace, &work, tracer, 512, round)?);
                }
            }
        }
        let nginx = Nginx::start(&work, Placement::Split)?;
        for round in 0..rounds {
            for tracer in Tracer::SPLIT {
                eprintln!("bench: nginx 1k.bin, tracer on CPU 1, round {round} {}", tracer.name());
                split.push(nginx.run(&retrace, &work, tracer, "1k.bin", round, secs)?);
            }
        }
    } else {
        eprintln!("bench: fewer than two CPUs (0 and 1) to run on: no runs with the tracer on a core of its own");
    }
    let total_mb = if quick { 256 } else { 1024 };
    let mut throughput = Vec::new();
    for sink in ["file", "socket"] {
        for chunk in [4096, 64 * 1024, 1 << 20] {
            eprintln!("bench: pump {sink} {chunk}");
            let base = pump(&pump_bin, &retrace, &work, Tracer::None, sink, chunk, total_mb, 0, Content::Pattern)?;
            let full = pump(&pump_bin, &retrace, &work, Tracer::Retrace, sink, chunk, total_mb, 0, Content::Pattern)?;
            let pressed = pump(
                &pump_bin,
                &retrace,
                &work,
                Tracer::RetraceBackpressure,
                sink,
                chunk,
                total_mb,
                0,
                Content::Pattern,
            )?;
            let moved = (full.cost.recorded_bytes + full.cost.lost_bytes).max(1) as f64;
            // Bisect the writer's rate for the highest one recorded without losing a byte.
            let (mut lo, mut hi, mut best) = (0.0f64, base.throughput, None);
            if full.cost.lost_bytes == 0 {
                lo = full.throughput;
                best = Some(full.clone());
            } else {
                for _ in 0..if quick { 3 } else { 5 } {
                    let mid = (lo + hi) / 2.0;
                    let s = pump(
                        &pump_bin,
                        &retrace,
                        &work,
                        Tracer::Retrace,
                        sink,
                        chunk,
                        total_mb,
                        mid as u64,
                        Content::Pattern,
                    )?;
                    if s.cost.lost_bytes == 0 {
                        lo = s.throughput;
                        best = Some(s);
                    } else {
                        hi = mid;
                    }
                }
            }
            throughput.push(Throughput {
                sink: sink.into(),
                chunk,
                unrecorded_mbps: base.throughput,
                recorded_full_speed_mbps: full.throughput,
                full_speed_loss_fraction: full.cost.lost_bytes as f64 / moved,
                zero_loss_mbps: lo,
                zero_loss_sample: best,
                backpressure_mbps: pressed.throughput,
                backpressure_lost_bytes: pressed.cost.lost_bytes,
            });
        }
    }
    // Segment compression: CPU and disk per GB, with and without, at a rate both keep up with.
    let mut compression = Vec::new();
    for content in [Content::Json, Content::Random] {
        for round in 0..rounds {
            for tracer in [Tracer::Retrace, Tracer::RetraceLz4] {
                eprintln!("bench: compression {} round {round} {}", content.name(), tracer.name());
                let mut s = pump(
                    &pump_bin,
                    &retrace,
                    &work,
                    tracer,
                    "file",
                    64 << 10,
                    total_mb / 2,
                    COMPRESSION_MBPS,
                    content,
                )?;
                s.round = round;
                compression.push(s);
            }
        }
    }
    let mut untraced = Vec::new();
    for round in 0..rounds.max(3) {
        for tracer in [Tracer::None, Tracer::Retrace, Tracer::Bpftrace] {
            eprintln!("bench: untraced process round {round} {}", tracer.name());
            untraced.push(UntracedCost {
                tracer,
                round,
                read_ns: untraced_read_ns(&syscalls_bin, &retrace, &work, tracer)?,
            });
        }
    }
    report::write(root, &samples, &split, &throughput, &compression, &untraced, &replay_speeds, &clock_cost, rounds)?;
    let scaling = agent_scaling(root, &retrace, &work, quick)?;
    let commit = head_commit(root)?;
    report::update_scaling(root, &scaling, &commit)?;
    let calls = call_costs(root, &retrace, &work, quick)?;
    report::update_calls(root, &calls, &commit)?;
    eprintln!("bench: wrote BENCHMARKS.md and BENCHMARKS.json");
    Ok(())
}

/// The checked-out commit, short, for the tables that say where they were measured.
fn head_commit(root: &Path) -> Result<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(root).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Builds `xtask/bench/NAME.c` into `work/NAME`.
fn compile_helper(root: &Path, work: &Path, name: &str) -> Result<std::path::PathBuf> {
    let bin = work.join(name);
    crate::run(Command::new("cc").args(["-O2", "-o"]).arg(&bin).arg(root.join(format!("xtask/bench/{name}.c"))))?;
    Ok(bin)
}

/// The benchmark's peers, from Debian's packages.
fn install_peers() -> Result<()> {
    let wanted = [
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("nginx", "nginx"),
        ("openssl", "openssl"),
        ("wrk", "wrk"),
        ("bpftrace", "bpftrace"),
        ("strace", "strace"),
        ("cc", "gcc"),
    ];
    crate::setup::install_missing(&wanted).context("install the benchmark's peers")
}
