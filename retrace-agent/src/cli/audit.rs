//! `retrace audit verify`: check the audit log's hash chain.

use std::path::PathBuf;

use retrace_agent::audit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check that no entry was edited, removed or reordered.
    Verify {
        /// The log (default: RETRACE_AUDIT_LOG or $XDG_STATE_HOME/retrace/audit.jsonl).
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Verify { log } => {
            let path = match log {
                Some(p) => p,
                None => audit::default_path()?,
            };
            let report = audit::verify(&path)?;
            for problem in &report.problems {
                println!("FAIL {problem}");
            }
            let ok = report.problems.is_empty();
            println!("{} {}: {} entries", if ok { "OK" } else { "FAILED" }, path.display(), report.entries);
            Ok(if ok { 0 } else { 1 })
        }
    }
}
