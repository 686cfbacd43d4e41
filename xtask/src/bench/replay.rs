//! Replay speed: a recorded client replayed against its recording, timed against the original
//! run against the real server; and a recorded server fed its recorded inbound connections,
//! timed against the same server answering the same requests live (alternating rounds, wall
//! clock, whole commands).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ReplaySpeed {
    pub client: String,
    pub original_s: Vec<f64>,
    pub replay_s: Vec<f64>,
}

/// redis-cli sending `commands` request/response pairs, recorded once, then timed.
pub fn redis_cli(retrace: &Path, work: &Path, port: u16, commands: usize, rounds: usize) -> Result<ReplaySpeed> {
    let input = work.join("replay-commands.txt");
    let script: String = (0..commands)
        .map(|i| if i % 2 == 0 { format!("SET k{i} v{i}\n") } else { format!("GET k{}\n", i - 1) })
        .collect();
    std::fs::write(&input, script)?;
    let rec = work.join("replay-redis-cli");
    let _ = std::fs::remove_dir_all(&rec);
    let p = port.to_string();
    let run = |cmd: &mut Command| -> Result<f64> {
        let start = Instant::now();
        let status = cmd.stdin(std::fs::File::open(&input)?).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        let secs = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(secs)
    };
    run(Command::new(retrace).arg("record").arg("-o").arg(&rec).args(["--", "redis-cli", "-p", &p]))?;
    let mut speed =
        ReplaySpeed { client: format!("redis-cli, {commands} commands"), original_s: Vec::new(), replay_s: Vec::new() };
    for _ in 0..rounds {
        speed.original_s.push(run(Command::new("redis-cli").args(["-p", &p]))?);
        speed.replay_s.push(run(Command::new(retrace).arg("replay").arg(&rec).args(["--", "redis-cli", "-p", &p]))?);
    }
    Ok(speed)
}

/// A small HTTP server (one connection at a time, no date in its answers) and a client that
/// makes `CONNECTIONS` sequential requests, each on a connection of its own.
const SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req:
        d = c.recv(4096)
        if not d: break
        req += d
    if not req:
        c.close()
        continue
    body = b"answer to " + req.split(b" ")[1] + b"\n"
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    while c.recv(4096): pass
    c.close()
"#;
const CLIENT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    c.shutdown(socket.SHUT_WR)
    while c.recv(4096): pass
    c.close()
"#;

/// A server's run, timed: started, waited for on `port`, fed by `clients`, stopped with SIGINT
/// (a recorder stops its command; the server stops).
fn serve_with(server: &mut Command, port: u16, what: &str, clients: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut child = server.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{what} did not listen on port {port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    clients()?;
    // SAFETY: SIGINT to our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    Ok(start.elapsed().as_secs_f64())
}

/// The server's run: started, `connections` requests answered, stopped.
fn serve(server: &mut Command, client: &Path, port: u16, connections: usize) -> Result<f64> {
    serve_with(server, port, "the bench's HTTP server", || {
        // The readiness probe was a connection too: the client makes the rest.
        let status =
            Command::new("python3").arg(client).arg(port.to_string()).arg((connections - 1).to_string()).status()?;
        if !status.success() {
            bail!("the bench's HTTP client failed: {status}");
        }
        Ok(())
    })
}

/// A server recorded answering `connections` connections, replayed (the replayer plays the
/// clients), timed against the live server answering them.
pub fn server(retrace: &Path, work: &Path, connections: usize, rounds: usize) -> Result<ReplaySpeed> {
    let (server, client) = (work.join("replay-server.py"), work.join("replay-client.py"));
    std::fs::write(&server, SERVER)?;
    std::fs::write(&client, CLIENT)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let p = port.to_string();
    let rec = work.join("replay-server");
    let _ = std::fs::remove_dir_all(&rec);
    let mut record = Command::new(retrace);
    record.arg("record").arg("-o").arg(&rec).args(["--", "python3"]).arg(&server).arg(&p);
    serve(&mut record, &client, port, connections).context("recording the bench's HTTP server")?;
    let mut speed = ReplaySpeed {
        client: format!("an HTTP server (python) fed {connections} recorded connections"),
        original_s: Vec::new(),
        replay_s: Vec::new(),
    };
    for _ in 0..rounds {
        speed.original_s.push(serve(Command::new("python3").arg(&server).arg(&p), &client, port, connections)?);
        let start = Instant::now();
        let out =
            Command::new(retrace).arg("replay").arg(&rec).args(["--", "python3"]).arg(&server).arg(&p).output()?;
        speed.replay_s.push(start.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("the server's replay failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(speed)
}

/// redis-server's run: started, `requests` INCR and LPUSH from redis-benchmark's 20
/// concurrent connections answered, stopped.
fn serve_benchmark(server: &mut Command, port: u16, requests: usize) -> Result<f64> {
    serve_with(server, port, "redis-server", || {
        let (n, p) = (requests.to_string(), port.to_string());
        let status = Command::new("redis-benchmark")
            .args(["-p", &p, "-c", "20", "-n", &n, "-t", "incr,lpush", "-q"])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("redis-benchmark failed: {status}");
        }
        Ok(())
    })
}

/// redis-server recorded under redis-benchmark (20 connections at once), replayed (the
/// replayer plays them concurrently, in the recorded order), timed against the live run.
pub fn redis_server(retrace: &Path, work: &Path, requests: usize, rounds: usize) -> Result<ReplaySpeed> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let p = port.to_string();
    let server = ["redis-server", "--port", &p, "--save", "", "--appendonly", "no"];
    let rec = work.join("replay-redis-server");
    let _ = std::fs::remove_dir_all(&rec);
    let mut record = Command::new(retrace);
    record.arg("record").arg("-o").arg(&rec).arg("--").args(server);
    serve_benchmark(&mut record, port, requests).context("recording redis-server")?;
    let mut speed = ReplaySpeed {
        client: format!("redis-server fed redis-benchmark's 20 connections, {requests} INCR + {requests} LPUSH"),
        original_s: Vec::new(),
        replay_s: Vec::new(),
    };
    for _ in 0..rounds {
        speed.original_s.push(serve_benchmark(Command::new(server[0]).args(&server[1..]), port, requests)?);
        let start = Instant::now();
        let out = Command::new(retrace).arg("replay").arg(&rec).arg("--").args(server).output()?;
        speed.replay_s.push(start.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!("redis-server's replay failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(speed)
}

/// Times `CALLS` wall-clock reads and `CALLS` stats of a file with the (native) monotonic
/// clock: ns per call of each, on one line.
const CLOCK_LOOP: &str = r#"
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#define CALLS 20000
static double since(struct timespec a) {
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / CALLS;
}
int main(int argc, char **argv) {
    struct timespec t, a;
    struct stat st;
    (void)argc;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < CALLS; i++) clock_gettime(CLOCK_REALTIME, &t);
    double clock_ns = since(a);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < CALLS; i++) stat(argv[0], &st);
    printf("%.1f %.1f\n", clock_ns, since(a));
    return 0;
}
"#;

/// What a wall-clock read and a stat cost: natively (vDSO; the kernel) and replayed (system
/// calls the replayer answers, or looks at and lets through), ns per call.
#[derive(Clone, Debug, Serialize)]
pub struct ClockCost {
    pub native_ns: Vec<f64>,
    pub replayed_ns: Vec<f64>,
    pub stat_native_ns: Vec<f64>,
    pub stat_replayed_ns: Vec<f64>,
}

pub fn clock_cost(retrace: &Path, work: &Path, rounds: usize) -> Result<ClockCost> {
    let source = work.join("clock-loop.c");
    let binary = work.join("clock-loop");
    std::fs::write(&source, CLOCK_LOOP)?;
    let status = Command::new("cc").args(["-O2", "-o"]).arg(&binary).arg(&source).status()?;
    if !status.success() {
        bail!("cannot compile the clock loop");
    }
    let ns = |out: std::process::Output| -> Result<(f64, f64)> {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace().map(str::parse::<f64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(clock)), Some(Ok(stat))) => Ok((clock, stat)),
            _ => bail!("the clock loop printed {text:?}"),
        }
    };
    let rec = work.join("replay-clock");
    let _ = std::fs::remove_dir_all(&rec);
    let recorded = Command::new(retrace).arg("record").arg("-o").arg(&rec).arg("--").arg(&binary).output()?;
    if !recorded.status.success() {
        bail!("recording the clock loop failed: {}", String::from_utf8_lossy(&recorded.stderr));
    }
    let mut cost = ClockCost {
        native_ns: Vec::new(),
        replayed_ns: Vec::new(),
        stat_native_ns: Vec::new(),
        stat_replayed_ns: Vec::new(),
    };
    for _ in 0..rounds {
        let (clock, stat) = ns(Command::new(&binary).output()?)?;
        cost.native_ns.push(clock);
        cost.stat_native_ns.push(stat);
        // Its output (durations) differs from the recorded one: --lenient.
        let mut replay = Command::new(retrace);
        replay.arg("replay").arg(&rec).args(["--lenient", "--"]).arg(&binary);
        let (clock, stat) = ns(replay.output()?)?;
        cost.replayed_ns.push(clock);
        cost.stat_replayed_ns.push(stat);
    }
    Ok(cost)
}
