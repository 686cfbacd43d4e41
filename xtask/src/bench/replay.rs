//! Replay speed: a recorded client replayed against its recording, timed against the original
//! run against the real server (alternating rounds, wall clock, whole commands).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Result};
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
