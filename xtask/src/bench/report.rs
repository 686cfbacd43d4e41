//! BENCHMARKS.md (for people) and BENCHMARKS.json (for tools) from one run's samples.

use super::replay::{ClockCost, ReplaySpeed};
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;

use super::{
    tracers::{Tracer, RING_BUFFER_MIB},
    workloads::{human_size, Sample},
    Throughput, UntracedCost, COMPRESSION_MBPS,
};

/// Median, min and max.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    (median, v[0], v[v.len() - 1])
}

/// The samples' workloads, in the order they were run.
fn workloads_of(samples: &[Sample]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for s in samples {
        if !names.contains(&s.workload.as_str()) {
            names.push(&s.workload);
        }
    }
    names
}

/// The runs of workload `w` under tracer `t`.
fn runs<'a>(samples: &'a [Sample], w: &str, t: Tracer) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.workload == w && s.tracer == t).collect()
}

/// Median throughput of workload `w` under tracer `t`.
fn median_throughput(samples: &[Sample], w: &str, t: Tracer) -> f64 {
    stats(&runs(samples, w, t).iter().map(|s| s.throughput).collect::<Vec<_>>()).0
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

/// "Intel(R) Xeon(R) Processor, 2 CPUs": the Machine section's CPU, and what a section
/// measured alone names (the rest of the file may have been measured on another machine).
fn this_machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{}, {cpus} CPUs", cpu_model())
}

fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    vec![
        ("CPU".into(), this_machine()),
        ("memory".into(), format!("{} GiB", mem / (1 << 20))),
        ("kernel".into(), kernel),
        ("redis".into(), version("redis-server", "--version")),
        (
            "nginx".into(),
            String::from_utf8_lossy(&Command::new("nginx").arg("-v").output().map(|o| o.stderr).unwrap_or_default())
                .trim()
                .to_owned(),
        ),
        ("wrk".into(), version("wrk", "--version")),
        ("strace".into(), version("strace", "-V")),
        ("bpftrace".into(), version("bpftrace", "--version")),
    ]
}

/// Per workload: every tracer's throughput, p99, CPU and loss against the unrecorded runs.
fn server_tables(md: &mut String, samples: &[Sample]) -> Result<()> {
    for w in workloads_of(samples) {
        writeln!(md, "### {w}\n\n| tracer | throughput (req/s) | ratio | p99 (ms) | p99 ratio | tracer CPU (s) | lost bytes |\n|---|---|---|---|---|---|---|")?;
        let base_t = median_throughput(samples, w, Tracer::None);
        let base_p = stats(&runs(samples, w, Tracer::None).iter().filter_map(|s| s.p99_ms).collect::<Vec<_>>()).0;
        for t in Tracer::WITH_BACKPRESSURE {
            let runs = runs(samples, w, t);
            if runs.is_empty() {
                continue;
            }
            let (m, lo, hi) = stats(&runs.iter().map(|s| s.throughput).collect::<Vec<_>>());
            let (pm, plo, phi) = stats(&runs.iter().filter_map(|s| s.p99_ms).collect::<Vec<_>>());
            let cpu = stats(&runs.iter().map(|s| s.cost.cpu_seconds).collect::<Vec<_>>()).0;
            let lost = if matches!(t, Tracer::Retrace | Tracer::RetraceBackpressure) {
                runs.iter().map(|s| s.cost.lost_bytes).sum::<u64>().to_string()
            } else {
                "-".into()
            };
            writeln!(
                md,
                "| {} | {m:.0} [{lo:.0}–{hi:.0}] | {:.3} | {pm:.3} [{plo:.3}–{phi:.3}] | {:.2} | {cpu:.2} | {lost} |",
                t.name(),
                m / base_t,
                pm / base_p
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn write(
    root: &Path,
    samples: &[Sample],
    split: &[Sample],
    throughput: &[Throughput],
    compression: &[Sample],
    untraced: &[UntracedCost],
    replays: &[ReplaySpeed],
    clock: &ClockCost,
    rounds: usize,
) -> Result<()> {
    let mut md = String::new();
    let workloads = workloads_of(samples);
    let of = |w: &str, t: Tracer| runs(samples, w, t);
    let median = |w: &str, t: Tracer| median_throughput(samples, w, t);
    let p99 = |w: &str, t: Tracer| stats(&of(w, t).iter().filter_map(|s| s.p99_ms).collect::<Vec<_>>()).0;

    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Written by `cargo xtask bench` ({} alternating round(s) per configuration). Shared, noisy\nmachines: compare the ratios measured in this one run, not absolute numbers across runs.\n", rounds)?;
    writeln!(md, "## Machine\n")?;
    for (k, v) in machine() {
        writeln!(md, "- {k}: {v}")?;
    }

    // Targets.
    writeln!(md, "\n## Targets\n\n| target | measured | met |\n|---|---|---|")?;
    for w in &workloads {
        let ratio = median(w, Tracer::Retrace) / median(w, Tracer::None);
        let lat = p99(w, Tracer::Retrace) / p99(w, Tracer::None);
        let lost: u64 = of(w, Tracer::Retrace).iter().map(|s| s.cost.lost_bytes).sum();
        writeln!(md, "| {w}: throughput recorded/unrecorded >= 0.97 | {ratio:.3} | {} |", yes(ratio >= 0.97))?;
        writeln!(md, "| {w}: p99 latency within 10% | {:+.1}% | {} |", (lat - 1.0) * 100.0, yes(lat <= 1.10))?;
        let pressed = of(w, Tracer::RetraceBackpressure);
        if pressed.is_empty() {
            writeln!(md, "| {w}: zero loss with full payloads | {lost} bytes lost | {} |", yes(lost == 0))?;
        } else {
            let pressed_lost: u64 = pressed.iter().map(|s| s.cost.lost_bytes).sum();
            let pressed_ratio = median(w, Tracer::RetraceBackpressure) / median(w, Tracer::None);
            writeln!(
                md,
                "| {w}: zero loss with full payloads | {lost} bytes lost; with `--backpressure` {pressed_lost} lost at {pressed_ratio:.3} of unrecorded throughput | {} |",
                yes(lost == 0)
            )?;
        }
    }
    let best = throughput.iter().map(|t| t.zero_loss_mbps).fold(0.0, f64::max);
    writeln!(
        md,
        "| >= 1 GB/s captured with zero loss (best configuration) | {:.0} MB/s | {} |",
        best,
        yes(best >= 1000.0)
    )?;
    // The kernel maps a ring buffer's data pages twice (so records can wrap): it counts twice in RSS.
    let ring_kb = 2 * RING_BUFFER_MIB * 1024;
    let max_rss = samples
        .iter()
        .filter(|s| s.tracer == Tracer::Retrace)
        .map(|s| s.cost.max_rss_kb)
        .chain(throughput.iter().filter_map(|t| t.zero_loss_sample.as_ref().map(|s| s.cost.max_rss_kb)))
        .chain(compression.iter().map(|s| s.cost.max_rss_kb))
        .max()
        .unwrap_or(0);
    writeln!(
        md,
        "| agent peak RSS <= 64 MiB beyond the ring buffer | {:.1} MiB peak, {:.1} MiB beyond the {} MiB ring (mapped twice) | {} |",
        max_rss as f64 / 1024.0,
        max_rss.saturating_sub(ring_kb) as f64 / 1024.0,
        RING_BUFFER_MIB,
        yes(max_rss.saturating_sub(ring_kb) <= 64 * 1024)
    )?;
    md.push_str(&replay_targets(replays));

    writeln!(
        md,
        "\nWhere a target is missed, [docs/performance.md](docs/performance.md) has the profile and the levers."
    )?;
    if !split.is_empty() {
        let median = |w: &str, t: Tracer| median_throughput(split, w, t);
        let ratios: Vec<String> = workloads_of(split)
            .into_iter()
            .map(|w| {
                let base = median(w, Tracer::None);
                format!(
                    "{w} {:.3} (bpftrace count-only {:.3})",
                    median(w, Tracer::Retrace) / base,
                    median(w, Tracer::Bpftrace) / base
                )
            })
            .collect();
        writeln!(
            md,
            "With the tracer on a core of its own ([below](#server-overhead-with-the-tracer-on-a-core-of-its-own)), recorded/unrecorded throughput: {}.",
            ratios.join("; ")
        )?;
    }

    // Server overhead.
    writeln!(md, "\n## Server overhead\n")?;
    writeln!(md, "redis-server under `redis-benchmark -t set,get -c 20 -d SIZE -r 1000 --csv`; nginx (1 worker, `sendfile off`) under\n`wrk -t2 -c20 -dNs --latency`. Retrace: `retrace record --pid PID --ring-buffer 64M` (full payloads); for nginx 1 MiB, where\nit loses payload, also with `--backpressure` (nginx paused while the ring is half full).\nstrace: `strace -f -s 65536 -o /dev/null -p PID...`. bpftrace: a script that sums the return values of\nread/write/readv/writev/recvfrom/sendto/recvmsg/sendmsg/pread64/pwrite64 for the server's processes.\nMedians with [min–max] over the rounds; the ratio is against the unrecorded median.\n")?;
    server_tables(&mut md, samples)?;

    if !split.is_empty() {
        writeln!(md, "## Server overhead with the tracer on a core of its own\n\nThe same servers and load generators on CPU 0 only, the tracer on CPU 1 only (`retrace record --cpus 1`;\nbpftrace started there): what the traced process itself pays for its probes, as on a node with a core to spare for the\nagent. Above, on two shared cores, the agent's CPU is also taken from a server and a load generator\nthat already keep both cores busy. Same commands; the unrecorded runs are pinned the same way.\n")?;
        server_tables(&mut md, split)?;
    }

    // Throughput.
    writeln!(md, "## Capture throughput\n\nA writer (`xtask/bench/pump.c`) moving 1 GiB in fixed chunks into a tmpfs file or a unix socket\n(the reader is not recorded). Full speed first; then the writer's rate is bisected for the highest rate\nrecorded with zero lost bytes. Last, full speed again with `retrace record --backpressure`, which pauses the\nwriter while the ring buffer is half full: the rate it then runs at, and what it lost.\n\n| sink | chunk | unrecorded MB/s | recorded at full speed MB/s | loss at full speed | highest zero-loss MB/s | --backpressure MB/s (lost bytes) |\n|---|---|---|---|---|---|---|")?;
    for t in throughput {
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.1}% | {:.0} | {:.0} ({}) |",
            t.sink,
            human_size(t.chunk),
            t.unrecorded_mbps,
            t.recorded_full_speed_mbps,
            t.full_speed_loss_fraction * 100.0,
            t.zero_loss_mbps,
            t.backpressure_mbps,
            t.backpressure_lost_bytes
        )?;
    }

    // Cost per GB.
    writeln!(md, "\n## Cost per GB captured\n\nFrom the zero-loss runs above: the agent's CPU (user+system) and peak RSS, and the recording's size on\ndisk, per GB of payload recorded (segments are not compressed).\n\n| sink | chunk | agent CPU s/GB | agent peak RSS (MiB) | disk bytes per payload byte |\n|---|---|---|---|---|")?;
    for t in throughput {
        if let Some(s) = &t.zero_loss_sample {
            let gb = s.cost.recorded_bytes.max(1) as f64 / 1e9;
            writeln!(
                md,
                "| {} | {} | {:.2} | {:.1} | {:.3} |",
                t.sink,
                human_size(t.chunk),
                s.cost.cpu_seconds / gb,
                s.cost.max_rss_kb as f64 / 1024.0,
                s.cost.recording_disk_bytes as f64 / s.cost.recorded_bytes.max(1) as f64
            )?;
        }
    }

    // Compression.
    writeln!(md, "\n## Segment compression (`--compress`)\n\nThe pump writing 512 MiB into a tmpfs file in 64 KiB chunks at {COMPRESSION_MBPS} MB/s (a rate recorded with\nzero loss either way), its chunk JSON log lines or random bytes; `retrace record` without and with\n`--compress` (lz4 blocks before encryption), alternating. Medians with [min–max] over the rounds.\n\n| content | segments | agent CPU s/GB | disk bytes per payload byte | lost bytes |\n|---|---|---|---|---|")?;
    for w in workloads_of(compression) {
        for t in [Tracer::Retrace, Tracer::RetraceLz4] {
            let runs = runs(compression, w, t);
            let per_gb = |s: &&Sample| s.cost.recorded_bytes.max(1) as f64 / 1e9;
            let (cpu, cpu_lo, cpu_hi) = stats(&runs.iter().map(|s| s.cost.cpu_seconds / per_gb(s)).collect::<Vec<_>>());
            let (disk, _, _) = stats(
                &runs
                    .iter()
                    .map(|s| s.cost.recording_disk_bytes as f64 / s.cost.recorded_bytes.max(1) as f64)
                    .collect::<Vec<_>>(),
            );
            let lost: u64 = runs.iter().map(|s| s.cost.lost_bytes).sum();
            let segments = if t == Tracer::RetraceLz4 { "lz4" } else { "plain" };
            let content = w.rsplit(' ').next().unwrap_or("");
            writeln!(md, "| {content} | {segments} | {cpu:.2} [{cpu_lo:.2}–{cpu_hi:.2}] | {disk:.3} | {lost} |")?;
        }
    }

    // Processes not recorded.
    writeln!(md, "\n## Cost to processes that are not recorded\n\nWhile the tracer records an idle process, another process reads 64 bytes from `/dev/zero` 3 million\ntimes (`xtask/bench/syscalls.c`). Retrace's syscall hook is the raw `sys_exit` tracepoint: every\nsyscall of every process runs it, and it returns after one lookup of the caller's process;\nbpftrace's counter hooks its ten syscalls' own trace events. Medians with [min–max].\n\n| tracer | ns per read(2) | added ns |\n|---|---|---|")?;
    let base = stats(&untraced.iter().filter(|u| u.tracer == Tracer::None).map(|u| u.read_ns).collect::<Vec<_>>()).0;
    for t in [Tracer::None, Tracer::Retrace, Tracer::Bpftrace] {
        let (m, lo, hi) = stats(&untraced.iter().filter(|u| u.tracer == t).map(|u| u.read_ns).collect::<Vec<_>>());
        writeln!(md, "| {} | {m:.1} [{lo:.1}–{hi:.1}] | {:+.1} |", t.name(), m - base)?;
    }

    // Scaling.
    writeln!(md, "\n## Scaling\n\nRecorded/unrecorded throughput as payload size grows (servers) and the writer's full-speed rate with\nRetrace attached (pump).\n\n| workload | payload | retrace ratio | strace ratio | bpftrace ratio |\n|---|---|---|---|---|")?;
    for w in &workloads {
        let base = median(w, Tracer::None);
        writeln!(
            md,
            "| {w} | {} | {:.3} | {:.3} | {:.3} |",
            w.rsplit(' ').next().unwrap_or(""),
            median(w, Tracer::Retrace) / base,
            median(w, Tracer::Strace) / base,
            median(w, Tracer::Bpftrace) / base
        )?;
    }
    for t in throughput {
        writeln!(
            md,
            "| pump {} | {} chunks | {:.3} | - | - |",
            t.sink,
            human_size(t.chunk),
            t.recorded_full_speed_mbps / t.unrecorded_mbps
        )?;
    }
    // Replay.
    md.push_str(&replay_section(replays, clock));
    std::fs::write(root.join("BENCHMARKS.md"), md)?;
    let json = serde_json::json!({ "machine": machine().into_iter().collect::<std::collections::BTreeMap<_, _>>(), "rounds": rounds, "samples": samples, "split_samples": split, "throughput": throughput, "compression": compression, "untraced": untraced, "replays": replays, "clock_cost": clock });
    std::fs::write(root.join("BENCHMARKS.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// A target table's verdict.
fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

const REPLAY_TARGET: &str = "| replay at least as fast as the original run";
const REPLAY_SECTION: &str = "\n## Replay speed";

/// One line of the targets table per replay measurement.
fn replay_targets(replays: &[ReplaySpeed]) -> String {
    let mut md = String::new();
    for replay in replays {
        let original = stats(&replay.original_s).0;
        let replayed = stats(&replay.replay_s).0;
        md.push_str(&format!(
            "{REPLAY_TARGET} ({}) | replay {:.3} s vs original {:.3} s: {:.2}x | {} |\n",
            replay.client,
            replayed,
            original,
            original / replayed,
            yes(replayed <= original)
        ));
    }
    md
}

fn replay_section(replays: &[ReplaySpeed], clock: &ClockCost) -> String {
    let mut md = format!(
        "{REPLAY_SECTION}\n\nEach program run against its real peer (original), and the same command replayed with\n`retrace replay` against its recording (inside the sandbox it cannot reach the peer at all). Wall\nclock of the whole command, medians with [min–max] over alternating rounds; the replay includes\nopening and decrypting the recording and setting up the sandbox. A client replays against its\nrecorded server; a server is fed its recorded clients (original: the same server started,\nanswering the same requests from a live client, stopped). A server fed concurrent connections\nreplays in the recorded order (a request goes once the program read the one it read before and\nwrote what it wrote before), one request in flight where the recording had up to 20, and each\nof its wall-clock reads is a system call the replayer answers: slower than it ran, and exact\n(docs/performance.md).\n"
    );
    for replay in replays {
        md.push_str(&format!(
            "\n{} ({} rounds)\n\n| run | seconds |\n|---|---|\n",
            replay.client,
            replay.original_s.len()
        ));
        for (name, runs) in [("original", &replay.original_s), ("replay", &replay.replay_s)] {
            let (m, lo, hi) = stats(runs);
            md.push_str(&format!("| {name} | {m:.3} [{lo:.3}–{hi:.3}] |\n"));
        }
    }
    let row = |name: &str, runs: &[f64]| {
        let (m, lo, hi) = stats(runs);
        format!("| {name} | {m:.1} [{lo:.1}–{hi:.1}] |\n")
    };
    md.push_str(&format!(
        "\nA wall-clock read (clock_gettime(CLOCK_REALTIME), 20,000 in a loop, {} rounds): natively through the\nvDSO, and replayed, where the patched vDSO makes it a system call that the replayer answers with\nthe recorded time. A stat of a file (20,000 in a loop): the kernel's, and replayed, where the\nreplayer looks at each (a folder's is answered, `dirstat`) and lets the kernel answer a file's.\n\n| run | ns per call |\n|---|---|\n{}{}{}{}",
        clock.native_ns.len(),
        row("clock, native", &clock.native_ns),
        row("clock, replayed", &clock.replayed_ns),
        row("stat, native", &clock.stat_native_ns),
        row("stat, replayed", &clock.stat_replayed_ns),
    ));
    md
}

/// `cargo xtask bench --replay-only`: the replay measurements of one run put in place of the
/// previous ones (their target lines, their section, their JSON), the rest left as it was.
pub fn update_replays(root: &Path, replays: &[ReplaySpeed], clock: &ClockCost, commit: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path)?;
    let mut md = String::new();
    let mut targets_written = false;
    for line in old.lines() {
        if line.starts_with(REPLAY_TARGET) {
            if !std::mem::replace(&mut targets_written, true) {
                md.push_str(&replay_targets(replays));
            }
            continue;
        }
        md.push_str(line);
        md.push('\n');
    }
    std::fs::write(&path, md)?;
    // The section's text after its heading, up to the next section (scaling, calls).
    let section = replay_section(replays, clock);
    let body = section.strip_prefix(REPLAY_SECTION).unwrap_or(&section);
    replace_section(
        root,
        REPLAY_SECTION,
        &format!("{body}\n(The replay numbers were measured at {commit} by `cargo xtask bench --replay-only`.)\n"),
    )?;
    let json_path = root.join("BENCHMARKS.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
    if let Some(object) = json.as_object_mut() {
        object.remove("replay");
        object.insert("replays".into(), serde_json::json!(replays));
        object.insert("replays_commit".into(), serde_json::json!(commit));
        object.insert("clock_cost".into(), serde_json::json!(clock));
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

const SCALING_SECTION: &str = "\n## One recording across cores";

/// Writes the scaling table in place of the previous one (or at the end), and its rows into
/// BENCHMARKS.json.
pub fn update_scaling(root: &Path, rows: &[super::AgentScaling], commit: &str) -> Result<()> {
    let mut md = String::new();
    md.push_str(&format!(
        "\n\nOne writer at full speed (1 MiB writes into a file, `xtask/bench/pump.c`), recorded with\n\
         `--backpressure` (zero loss: the writer is paused while the agent catches up) by an agent given\n\
         the last N CPUs (`--cpus`; the writer on CPU 0 when there are others). With more than four\n\
         CPUs the agent seals and hashes segments on `--seal-threads` threads (CPUs beyond four, at\n\
         most 8). Medians with [min–max] over the rounds, measured at {commit} by\n\
         `cargo xtask bench --scaling-only` (`xtask/bench/scaling.sh`) on {}.\n\n\
         | agent cores | zero-loss MB/s | agent CPU s/GB | lost bytes |\n|---|---|---|---|\n",
        this_machine()
    ));
    let mut cores: Vec<usize> = rows.iter().map(|r| r.cores).collect();
    cores.sort_unstable();
    cores.dedup();
    for n in cores {
        let of: Vec<&super::AgentScaling> = rows.iter().filter(|r| r.cores == n).collect();
        let (m, lo, hi) = stats(&of.iter().map(|r| r.mbps).collect::<Vec<_>>());
        let (cpu, cpu_lo, cpu_hi) =
            stats(&of.iter().map(|r| r.cpu_seconds / (r.recorded_bytes.max(1) as f64 / 1e9)).collect::<Vec<_>>());
        let lost: u64 = of.iter().map(|r| r.lost_bytes).sum();
        md.push_str(&format!("| {n} | {m:.0} [{lo:.0}–{hi:.0}] | {cpu:.2} [{cpu_lo:.2}–{cpu_hi:.2}] | {lost} |\n"));
    }
    replace_section(root, SCALING_SECTION, &md)?;
    put_json(root, "agent_scaling", serde_json::json!(rows), commit)
}

/// Sets `key` (and `key_commit`) in BENCHMARKS.json, keeping the rest.
fn put_json(root: &Path, key: &str, value: serde_json::Value, commit: &str) -> Result<()> {
    let json_path = root.join("BENCHMARKS.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path)?)?;
    if let Some(object) = json.as_object_mut() {
        object.insert(key.into(), value);
        object.insert(format!("{key}_commit"), serde_json::json!(commit));
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

/// Puts `body` under `heading` in BENCHMARKS.md, in place of what was there (up to the next
/// `## ` heading), or at the end.
fn replace_section(root: &Path, heading: &str, body: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path)?;
    let (before, after) = match old.find(heading) {
        Some(at) => {
            let rest = &old[at + heading.len()..];
            let end = rest.find("\n## ").map_or(old.len(), |i| at + heading.len() + i);
            (old[..at].to_owned(), old[end..].to_owned())
        }
        None => (old.trim_end().to_owned() + "\n", String::new()),
    };
    std::fs::write(&path, format!("{before}{heading}{body}{after}"))?;
    Ok(())
}

const DEVICE_SECTION: &str = "\n## One recording on a many-core machine";

/// The many-core section (`xtask/bench/device.sh`'s `device.md`), in place of the previous one.
pub fn update_device(root: &Path, body: &str) -> Result<()> {
    replace_section(root, DEVICE_SECTION, &format!("\n\n{}\n", body.trim()))
}

const CALLS_SECTION: &str = "\n## What a traced call pays";

/// The call-cost table (`--calls-only` and the full run), in place of the previous one.
pub fn update_calls(root: &Path, rows: &[super::CallCost], commit: &str) -> Result<()> {
    let mut md = format!(
        "\n\nA C loop (`xtask/bench/syscalls.c`) on CPU 0, recorded by `retrace record --cpus 1` (the\n\
         agent on CPU 1) or not: nanoseconds per iteration, and the agent's CPU per iteration (from\n\
         the loop's start until it has drained what the loop wrote; its ring buffer holds all of\n\
         it, so nothing is lost however far it falls behind). Medians with [min–max] over\n\
         alternating rounds, measured at {commit} on {} by `cargo xtask bench --calls-only`.\n\n\
         | loop | unrecorded ns | recorded ns | added ns | agent CPU ns per iteration | lost bytes |\n\
         |---|---|---|---|---|---|\n",
        this_machine()
    );
    for (name, what, _) in super::CALL_LOOPS {
        let of = |recorded: bool, f: fn(&super::CallCost) -> f64| {
            stats(&rows.iter().filter(|r| r.name == name && r.recorded == recorded).map(f).collect::<Vec<_>>())
        };
        let (plain, plain_lo, plain_hi) = of(false, |r| r.ns_per_iteration);
        let (traced, traced_lo, traced_hi) = of(true, |r| r.ns_per_iteration);
        let (agent, agent_lo, agent_hi) = of(true, |r| r.agent_ns_per_iteration);
        let lost: u64 = rows.iter().filter(|r| r.name == name).map(|r| r.lost_bytes).sum();
        md.push_str(&format!(
            "| {what} | {plain:.0} [{plain_lo:.0}–{plain_hi:.0}] | {traced:.0} [{traced_lo:.0}–{traced_hi:.0}] | \
             +{:.0} | {agent:.0} [{agent_lo:.0}–{agent_hi:.0}] | {lost} |\n",
            traced - plain
        ));
    }
    replace_section(root, CALLS_SECTION, &md)?;
    put_json(root, "call_costs", serde_json::json!(rows), commit)
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn a_section_is_replaced_in_place_and_the_others_kept() {
        let root = std::env::temp_dir().join(format!("retrace-xtask-report-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let path = root.join("BENCHMARKS.md");
        std::fs::write(&path, "# B\n\n## One\n\nold one\n\n## Two\n\nold two\n").unwrap();
        replace_section(&root, "\n## One", "\n\nnew one\n").unwrap();
        replace_section(&root, "\n## Two", "\n\nnew two\n").unwrap();
        replace_section(&root, "\n## Three", "\n\nthree\n").unwrap();
        let md = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(md, "# B\n\n## One\n\nnew one\n\n## Two\n\nnew two\n\n## Three\n\nthree\n");
    }
}
