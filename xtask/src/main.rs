//! Project tasks: `cargo xtask setup | demo | test | bench | fuzz`.
//!
//! Everything a fresh machine needs to build and test Retrace is installed from here, so the
//! README's two commands (`cargo xtask demo`, `cargo xtask test`) work on a clean checkout.

mod bench;
mod fuzz;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Retrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Set up, build, and record a real program end to end (curl against a local HTTP server).
    Demo,
    /// Measure Retrace against strace and bpftrace on redis, nginx and a throughput pump;
    /// writes BENCHMARKS.md and BENCHMARKS.json.
    Bench {
        /// One round and shorter runs (a smoke test of the harness).
        #[arg(long)]
        quick: bool,
        /// Only the replay measurements (a client, a server fed 100 recorded connections),
        /// written in place of the previous ones in BENCHMARKS.md and BENCHMARKS.json.
        #[arg(long)]
        replay_only: bool,
        /// Only the scaling table (one recording given 1, 2, 4... of the machine's CPUs),
        /// written in place of the previous one.
        #[arg(long)]
        scaling_only: bool,
        /// Only the call-cost table (what a recorded open+close, pread and getppid cost the
        /// process and the agent), written in place of the previous one.
        #[arg(long)]
        calls_only: bool,
        /// Build `target/device`: what `xtask/bench/device.sh` needs on a lent many-core
        /// machine where nothing is installed (binaries and every library they load).
        #[arg(long)]
        device_bundle: bool,
        /// Put a device run's `device.md` in BENCHMARKS.md, in place of the previous one.
        #[arg(long, value_name = "FILE")]
        device_report: Option<std::path::PathBuf>,
    },
    /// Run the fuzz targets (recording reader, redactor) for a while each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Set up, build, run every test against the real kernel, then fuzz briefly.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter); fuzzing is skipped
        /// when any are given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    // One line, without anyhow's backtrace (RUST_BACKTRACE is set on the CI machines).
    if let Err(e) = run_task(Cli::parse().task) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Demo => {
            setup::run()?;
            demo()
        }
        Task::Bench { quick, replay_only, scaling_only, calls_only, device_bundle, device_report } => {
            let root = std::env::current_dir()?;
            if let Some(report) = device_report {
                return bench::put_device_report(&root, &report);
            }
            setup::run()?;
            if device_bundle {
                return bench::device_bundle(&root);
            }
            match (replay_only, scaling_only, calls_only) {
                (true, _, _) => bench::run_replays(&root, quick),
                (_, true, _) => bench::run_scaling(&root, quick),
                (_, _, true) => bench::run_calls(&root, quick),
                _ => bench::run(&root, quick),
            }
        }
        Task::Test { args } => {
            setup::run()?;
            // The capture tests drive the real `retrace` binary.
            run(cargo().args(["build", "--release", "--package", "retrace-agent", "--bin", "retrace"]))?;
            // The previous run's scratch folders (recordings of floods, kept for a look after a
            // failure) go now: run after run they filled the disk (57 GB here).
            let scratch = std::env::temp_dir().join("retrace-tests");
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    bail!("could not clear the previous test run's {}: {e}", scratch.display());
                }
            }
            let mut cmd = cargo();
            cmd.args(["test", "--release"]).args(&args);
            run(&mut cmd)?;
            if args.is_empty() {
                fuzz::run(&std::env::current_dir()?, 30)?;
            }
            Ok(())
        }
        Task::Fuzz { seconds } => fuzz::run(&std::env::current_dir()?, seconds),
    }
}

/// The cargo that runs xtask, with the environment the eBPF build needs.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Records curl fetching a page from a local server, then shows what was captured.
fn demo() -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "retrace-agent"]))?;
    let root = std::env::current_dir()?;
    let retrace = root.join("target/release/retrace");
    let work = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("index.html"), "<h1>hello from the retrace demo</h1>\n")?;
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "18931"])
        .current_dir(&work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("failed to start python3 -m http.server")?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    let rec = work.join("rec");
    let result = (|| {
        println!("$ retrace record -o {} -- curl -s http://127.0.0.1:18931/index.html", rec.display());
        run(Command::new(&retrace).arg("record").arg("-o").arg(&rec).args([
            "--",
            "curl",
            "-s",
            "http://127.0.0.1:18931/index.html",
        ]))?;
        println!("\n$ retrace streams {}", rec.display());
        run(Command::new(&retrace).arg("streams").arg(&rec))?;
        println!("\n$ retrace verify {}   # age-encrypted segments, hashes, binding", rec.display());
        run(Command::new(&retrace).arg("verify").arg(&rec))?;
        println!("\n$ retrace inspect {} | head -20", rec.display());
        let out = Command::new(&retrace).arg("inspect").arg(&rec).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines().take(20) {
            println!("{line}");
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}
