//! The tools compared: nothing, Retrace (`--pid`, full payloads), `strace -f -s 65536`, and a
//! bpftrace script that only counts read/write bytes (the floor of any eBPF hook).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::workloads::on_cpu;

/// The ring buffer Retrace records with in the benchmark.
pub const RING_BUFFER_MIB: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracer {
    None,
    Retrace,
    /// Retrace with `--compress` (the compression table only).
    RetraceLz4,
    /// Retrace with `--backpressure` (where plain Retrace loses payload).
    RetraceBackpressure,
    Strace,
    Bpftrace,
}

impl Tracer {
    pub const ALL: [Tracer; 4] = [Tracer::None, Tracer::Retrace, Tracer::Strace, Tracer::Bpftrace];
    /// With the tracer on a core of its own (strace would only measure itself again).
    pub const SPLIT: [Tracer; 3] = [Tracer::None, Tracer::Retrace, Tracer::Bpftrace];
    /// Where plain Retrace loses payload (nginx 1 MiB), also with `--backpressure`.
    pub const WITH_BACKPRESSURE: [Tracer; 5] =
        [Tracer::None, Tracer::Retrace, Tracer::RetraceBackpressure, Tracer::Strace, Tracer::Bpftrace];

    pub fn name(self) -> &'static str {
        match self {
            Tracer::None => "unrecorded",
            Tracer::Retrace => "retrace",
            Tracer::RetraceLz4 => "retrace --compress",
            Tracer::RetraceBackpressure => "retrace --backpressure",
            Tracer::Strace => "strace",
            Tracer::Bpftrace => "bpftrace (count only)",
        }
    }
}

/// What a tracer cost and captured during one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TracerCost {
    pub cpu_seconds: f64,
    pub max_rss_kb: u64,
    pub recorded_bytes: u64,
    pub lost_bytes: u64,
    pub recording_disk_bytes: u64,
}

pub struct Attached {
    tracer: Tracer,
    child: Option<Child>,
    rec_dir: Option<PathBuf>,
    retrace: PathBuf,
}

/// Starts `tracer` on `pids` (bpftrace filters on `comm` when given, for multi-process servers),
/// on CPU `cpu` only if given; Retrace with a ring buffer of `ring_mib` MiB.
pub fn attach(
    tracer: Tracer,
    retrace: &Path,
    work: &Path,
    pids: &[u32],
    comm: Option<&str>,
    cpu: Option<usize>,
    ring_mib: u64,
) -> Result<Attached> {
    let mut rec_dir = None;
    let child = match tracer {
        Tracer::None => None,
        Tracer::Retrace | Tracer::RetraceLz4 | Tracer::RetraceBackpressure => {
            let dir = work.join("rec");
            let _ = std::fs::remove_dir_all(&dir);
            let mut cmd = Command::new(retrace);
            cmd.args(["record", "-o"]).arg(&dir);
            // Retrace confines itself (`--cpus`); the other tracers are started on the CPU.
            if let Some(cpu) = cpu {
                cmd.args(["--cpus", &cpu.to_string()]);
            }
            let child = cmd
                .args(["--ring-buffer", &format!("{ring_mib}M"), "--pid", &pids[0].to_string()])
                .args(match tracer {
                    Tracer::RetraceLz4 => &["--compress"][..],
                    Tracer::RetraceBackpressure => &["--backpressure"][..],
                    _ => &[],
                })
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start retrace")?;
            wait_for(|| dir.join("manifest.json").exists(), "retrace to start")?;
            std::thread::sleep(Duration::from_millis(300));
            rec_dir = Some(dir);
            Some(child)
        }
        Tracer::Strace => {
            let mut cmd = Command::new("strace");
            on_cpu(&mut cmd, cpu);
            cmd.args(["-f", "-s", "65536", "-o", "/dev/null"]);
            for pid in pids {
                cmd.args(["-p", &pid.to_string()]);
            }
            let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("start strace")?;
            let mut stderr = BufReader::new(child.stderr.take().unwrap());
            let mut attached = 0;
            let mut line = String::new();
            while attached < pids.len() {
                line.clear();
                if stderr.read_line(&mut line)? == 0 {
                    bail!("strace exited before attaching");
                }
                if line.contains("attached") {
                    attached += 1;
                }
            }
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            Some(child)
        }
        Tracer::Bpftrace => {
            let filter = match comm {
                Some(c) => format!("comm == \"{c}\""),
                None => format!("pid == {}", pids[0]),
            };
            let probes =
                ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "pread64", "pwrite64"]
                    .iter()
                    .map(|s| format!("tracepoint:syscalls:sys_exit_{s}"))
                    .collect::<Vec<_>>()
                    .join(",");
            let script = format!("{probes} /{filter} && args->ret > 0/ {{ @bytes = sum(args->ret); }}");
            let mut child = on_cpu(&mut Command::new("bpftrace"), cpu)
                .args(["-e", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("start bpftrace")?;
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line)? == 0 {
                    bail!("bpftrace exited before attaching");
                }
                if line.starts_with("Attaching") {
                    break;
                }
            }
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            std::thread::sleep(Duration::from_millis(300));
            Some(child)
        }
    };
    Ok(Attached { tracer, child, rec_dir, retrace: retrace.to_path_buf() })
}

impl Attached {
    /// The tracer's process, if one was started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the tracer (SIGINT) and reports what it cost.
    pub fn detach(mut self) -> Result<TracerCost> {
        let mut cost = TracerCost::default();
        let Some(child) = self.child.take() else { return Ok(cost) };
        let pid = child.id() as i32;
        // SAFETY: plain syscalls on our own child.
        let usage = unsafe {
            libc::kill(pid, libc::SIGINT);
            let mut status = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::wait4(pid, &mut status, 0, &mut usage);
            usage
        };
        std::mem::forget(child);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        cost.cpu_seconds = secs(usage.ru_utime) + secs(usage.ru_stime);
        cost.max_rss_kb = usage.ru_maxrss as u64;
        if let (Tracer::Retrace | Tracer::RetraceLz4 | Tracer::RetraceBackpressure, Some(dir)) =
            (self.tracer, &self.rec_dir)
        {
            let out = Command::new(&self.retrace).arg("streams").arg(dir).arg("--json").output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let row: serde_json::Value = serde_json::from_str(line)?;
                let n = |k: &str| row[k].as_u64().unwrap_or(0);
                cost.recorded_bytes += n("bytes_in") + n("bytes_out");
                cost.lost_bytes += n("lost_bytes_in") + n("lost_bytes_out");
            }
            cost.recording_disk_bytes = dir_size(dir);
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(cost)
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

pub fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
