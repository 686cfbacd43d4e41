//! The workloads: redis-server under redis-benchmark, nginx under wrk, and the throughput pump.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::tracers::{attach, wait_for, Tracer, TracerCost, RING_BUFFER_MIB};

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub workload: String,
    pub tracer: Tracer,
    pub round: usize,
    /// Requests/s (servers) or MB/s (pump).
    pub throughput: f64,
    /// 99th percentile latency, ms (servers).
    pub p99_ms: Option<f64>,
    pub cost: TracerCost,
}

/// Where a server, its load generator and the tracer run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On every core, as the issue's targets are measured: on two cores the tracer's CPU is
    /// taken from a server and load generator that already keep both busy.
    Shared,
    /// Server and load generator on CPU 0, the tracer on CPU 1: what the traced process itself
    /// pays, as on a node with a core to spare for the agent.
    Split,
}

impl Placement {
    pub fn workload_cpu(self) -> Option<usize> {
        match self {
            Placement::Shared => None,
            Placement::Split => Some(0),
        }
    }

    pub fn tracer_cpu(self) -> Option<usize> {
        match self {
            Placement::Shared => None,
            Placement::Split => Some(1),
        }
    }

    /// Whether this process may run on both CPUs `Split` uses.
    pub fn split_possible() -> bool {
        // SAFETY: fills a plain struct.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
                && libc::CPU_ISSET(0, &set)
                && libc::CPU_ISSET(1, &set)
        }
    }
}

/// Runs `cmd` (and every thread and child it starts) on `cpu` only, if given.
pub fn on_cpu(cmd: &mut Command, cpu: Option<usize>) -> &mut Command {
    if let Some(cpu) = cpu {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

pub struct Redis {
    child: Child,
    port: u16,
    placement: Placement,
}

impl Redis {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn start(work: &Path, placement: Placement) -> Result<Redis> {
        let port = 16379;
        let child = on_cpu(&mut Command::new("redis-server"), placement.workload_cpu())
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--dir"])
            .arg(work)
            .stdout(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        wait_for(
            || {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "ping"])
                    .output()
                    .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
            },
            "redis-server",
        )?;
        Ok(Redis { child, port, placement })
    }

    /// SET and GET of `size`-byte values from 20 clients, under `tracer`.
    pub fn run(&self, retrace: &Path, work: &Path, tracer: Tracer, size: usize, round: usize) -> Result<Vec<Sample>> {
        let requests = match (tracer, size) {
            (Tracer::Strace, _) => 5_000,
            (_, s) if s > 4096 => 40_000,
            _ => 150_000,
        };
        let attached =
            attach(tracer, retrace, work, &[self.child.id()], None, self.placement.tracer_cpu(), RING_BUFFER_MIB)?;
        let out = on_cpu(&mut Command::new("redis-benchmark"), self.placement.workload_cpu())
            .args(["-p", &self.port.to_string(), "-t", "set,get", "-c", "20", "--csv", "-r", "1000"])
            .args(["-d", &size.to_string(), "-n", &requests.to_string()])
            .output()
            .context("run redis-benchmark")?;
        let cost = attached.detach()?;
        let mut samples = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let f: Vec<String> = line.split(',').map(|s| s.trim_matches('"').to_owned()).collect();
            if f.len() < 7 {
                continue;
            }
            samples.push(Sample {
                workload: format!("redis {} {}", f[0], human_size(size)),
                tracer,
                round,
                throughput: f[1].parse()?,
                p99_ms: f[6].parse().ok(),
                cost: cost.clone(),
            });
        }
        if samples.len() != 2 {
            bail!("unexpected redis-benchmark output: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(samples)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub struct Nginx {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
    placement: Placement,
}

/// nginx's TLS port (the `tls/` workloads).
const TLS_PORT: u16 = 18443;

impl Nginx {
    /// nginx with one worker serving 1 KiB and 1 MiB files. `sendfile off`: with sendfile the
    /// body never passes through user memory and no tool could record it (Retrace records such
    /// copies as byte counts only).
    pub fn start(work: &Path, placement: Placement) -> Result<Nginx> {
        let port = 18080;
        let dir = work.join("nginx");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/1k.bin"), pattern(1024))?;
        std::fs::write(dir.join("www/1m.bin"), pattern(1 << 20))?;
        std::fs::write(dir.join("www/64k.bin"), pattern(64 << 10))?;
        // The same files over TLS (the `tls/` workloads), under a self-signed certificate.
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "2", "-subj", "/CN=localhost", "-keyout", "tls.key", "-out", "tls.crt"])
            .current_dir(&dir)
            .output()
            .context("run openssl (cargo xtask setup installs it)")?;
        if !made.status.success() {
            bail!("openssl req failed: {}", String::from_utf8_lossy(&made.stderr));
        }
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
             fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  \
             server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n  \
             server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {d}/tls.crt; ssl_certificate_key {d}/tls.key; \
             root {d}/www; location /tls/ {{ alias {d}/www/; }} }}\n}}\n",
            tls_port = TLS_PORT
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            bail!("port {port} is already in use: stop whatever listens there (a leftover nginx?)");
        }
        let child = on_cpu(&mut Command::new("nginx"), placement.workload_cpu())
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .stderr(Stdio::null())
            .spawn()
            .context("start nginx")?;
        let mut nginx = Nginx { child, port, dir, placement };
        wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "nginx")?;
        if nginx.child.try_wait()?.is_some() {
            bail!("nginx exited at start: see {}", nginx.dir.join("error.log").display());
        }
        Ok(nginx)
    }

    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
        pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        pids
    }

    pub fn run(
        &self,
        retrace: &Path,
        work: &Path,
        tracer: Tracer,
        file: &str,
        round: usize,
        secs: u32,
    ) -> Result<Sample> {
        let attached =
            attach(tracer, retrace, work, &self.pids(), Some("nginx"), self.placement.tracer_cpu(), RING_BUFFER_MIB)?;
        let url = match file.strip_prefix("tls/") {
            Some(_) => format!("https://127.0.0.1:{TLS_PORT}/{file}"),
            None => format!("http://127.0.0.1:{}/{file}", self.port),
        };
        let out = on_cpu(&mut Command::new("wrk"), self.placement.workload_cpu())
            .args(["-t2", "-c20", &format!("-d{secs}s"), "--latency", &url])
            .output()
            .context("run wrk")?;
        let cost = attached.detach()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("unexpected wrk output: {text}"))?;
        let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%")).and_then(|v| parse_duration_ms(v.trim()));
        let workload = match file.strip_prefix("tls/") {
            Some(file) => format!("nginx HTTPS GET {file}"),
            None => format!("nginx GET {file}"),
        };
        Ok(Sample { workload, tracer, round, throughput: rps, p99_ms: p99, cost })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The worker outlives a killed master, and renames itself ("nginx: worker process"):
        // kill the master's children first, while they are still its children.
        let _ = Command::new("pkill").args(["-KILL", "-P", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// wrk's "1.23ms" / "456.00us" / "1.02s".
fn parse_duration_ms(v: &str) -> Option<f64> {
    if let Some(us) = v.strip_suffix("us") {
        return us.parse::<f64>().ok().map(|x| x / 1000.0);
    }
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok();
    }
    v.strip_suffix('s').and_then(|s| s.parse::<f64>().ok()).map(|x| x * 1000.0)
}

/// One pump run: a writer moving `total_mb` MiB in `size`-byte chunks into a file or a socket,
/// at `rate_mbps` (0 = as fast as it can), recorded by `tracer`. Returns MB/s achieved.
#[allow(clippy::too_many_arguments)]
pub fn pump(
    bin: &Path,
    retrace: &Path,
    work: &Path,
    tracer: Tracer,
    sink: &str,
    size: usize,
    total_mb: u64,
    rate_mbps: u64,
    content: Content,
) -> Result<Sample> {
    let mut child = Command::new(bin)
        .args([sink, &size.to_string(), &total_mb.to_string(), &rate_mbps.to_string(), content.name()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start pump")?;
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let writer: u32 = line.trim().parse().context("pump pid")?;
    let attached = attach(tracer, retrace, work, &[writer], None, None, RING_BUFFER_MIB)?;
    child.stdin.take().unwrap().write_all(b"g")?;
    line.clear();
    stdout.read_line(&mut line)?;
    let fields: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    child.wait()?;
    let cost = attached.detach()?;
    let (bytes, secs) = (fields.first().copied().unwrap_or(0.0), fields.get(1).copied().unwrap_or(1.0));
    Ok(Sample {
        workload: match content {
            Content::Pattern => format!("pump {sink} {}", human_size(size)),
            _ => format!("pump {sink} {} {}", human_size(size), content.name()),
        },
        tracer,
        round: 0,
        throughput: bytes / secs / 1e6,
        p99_ms: None,
        cost,
    })
}

/// Nanoseconds per `read(2)` of a process the tracer does not trace, while it traces an idle
/// one: what recording one process costs every other process on the machine.
pub fn untraced_read_ns(bin: &Path, retrace: &Path, work: &Path, tracer: Tracer) -> Result<f64> {
    let mut idle = Command::new("sleep").arg("600").spawn().context("start sleep")?;
    let attached = attach(tracer, retrace, work, &[idle.id()], None, None, RING_BUFFER_MIB);
    let out = Command::new(bin).arg("3000000").output().context("run the syscall loop");
    let _ = idle.kill();
    let _ = idle.wait();
    let cost = attached?.detach();
    let out = out?;
    cost?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("syscall loop output")
}

/// The ring buffer of the call-cost runs: larger than all a loop writes, so that nothing is
/// lost however far the agent falls behind the loop (it drains the rest afterwards).
const CALLS_RING_MIB: u64 = 512;

/// A loop of `xtask/bench/syscalls.c` (`pread`, `openclose`, `socket`, `getppid`) run
/// `iterations` times on CPU 0, recorded by Retrace on CPU 1 (`--cpus 1`) or not: nanoseconds
/// per iteration, the recorder's CPU per iteration (from the loop's start until it has drained
/// what the loop wrote: its CPU stops growing), and the payload bytes it lost.
pub fn call_cost(
    bin: &Path,
    retrace: &Path,
    work: &Path,
    name: &str,
    iterations: u64,
    recorded: bool,
) -> Result<(f64, f64, u64)> {
    let file = work.join("calls.bin");
    if !file.exists() {
        std::fs::write(&file, pattern(4096))?;
    }
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .arg(iterations.to_string())
        .arg(name)
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the syscall loop")?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let pid: u32 = line.trim().parse().with_context(|| format!("syscall loop printed {line:?}"))?;
    let tracer = if recorded { Tracer::Retrace } else { Tracer::None };
    let attached = attach(tracer, retrace, work, &[pid], None, Some(1), CALLS_RING_MIB);
    let measured = attached.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).and_then(|a| {
        let agent_ticks = || a.pid().map_or(Ok(0), process_ticks);
        let before = agent_ticks()?;
        child.stdin.take().expect("piped").write_all(b"g")?;
        line.clear();
        stdout.read_line(&mut line)?;
        let mut after = agent_ticks()?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = agent_ticks()?;
            if now <= after + 1 {
                break;
            }
            after = now;
        }
        let agent_ns = (after - before) as f64 * 1e9 / clock_ticks() as f64;
        let ns: f64 = line.trim().parse().with_context(|| format!("syscall loop printed {line:?}"))?;
        Ok((ns, agent_ns / iterations as f64))
    });
    let _ = child.kill();
    let _ = child.wait();
    let cost = attached?.detach();
    let (ns, agent_ns) = measured?;
    Ok((ns, agent_ns, cost?.lost_bytes))
}

/// A process's user and system CPU so far, in clock ticks.
fn process_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).context("parse /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks() -> u64 {
    // SAFETY: a plain libc query.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// What the pump writes: a short repeating pattern (compresses ~100x, so it is not used for
/// the compression table), JSON log lines, or random bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Pattern,
    Json,
    Random,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Pattern => "pattern",
            Content::Json => "json",
            Content::Random => "random",
        }
    }
}

pub fn human_size(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + 7) as u8).collect()
}
