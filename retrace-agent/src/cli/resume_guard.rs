//! `retrace resume-guard` (hidden): started by `record --backpressure`; see
//! `capture::pauses`.

#[derive(clap::Args)]
pub struct Args {
    /// The kernel's list of paused processes.
    #[arg(long)]
    map_id: u32,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    retrace_agent::capture::pauses::run_guard(args.map_id)?;
    Ok(0)
}
