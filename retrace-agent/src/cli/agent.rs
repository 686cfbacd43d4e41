//! `retrace agent`: the node agent (see `retrace_agent::node`).

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use retrace_agent::node::{self, config::AgentConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The agent's configuration (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Only check the configuration, then exit.
    #[arg(long)]
    check: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let config = AgentConfig::read(&args.config)?;
    if args.check {
        config.drain_timeout()?;
        println!("{}: ok (node {})", args.config.display(), config.node());
        return Ok(0);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
    node::run(config, &STOP)?;
    Ok(0)
}
