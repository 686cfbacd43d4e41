//! `retrace gc`: delete the expired recordings under a folder.

use std::path::PathBuf;

use retrace_agent::{audit::Subject, now_wall_ns, retention};

#[derive(clap::Args)]
pub struct Args {
    /// Folder holding recordings (searched a few levels deep).
    store: PathBuf,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let now = now_wall_ns();
    let mut deleted = 0;
    let mut kept = 0;
    for found in retention::find_recordings(&args.store)? {
        let manifest = match found.manifest {
            Ok(m) => m,
            Err(e) => {
                eprintln!("retrace: warning: skipping {}: {e}", found.dir.display());
                continue;
            }
        };
        if !manifest.expired(now) {
            kept += 1;
            continue;
        }
        if args.dry_run {
            println!(
                "would delete {} (expired {})",
                found.dir.display(),
                retrace_agent::audit::rfc3339(manifest.expires_ns)
            );
            continue;
        }
        // Logged first: a deletion that cannot be audited does not happen.
        super::audit("gc_delete", Subject::recording(&found.dir, &manifest.id))?;
        std::fs::remove_dir_all(&found.dir)
            .map_err(|e| anyhow::anyhow!("cannot delete {}: {e}", found.dir.display()))?;
        println!("deleted {}", found.dir.display());
        deleted += 1;
    }
    eprintln!("retrace: {deleted} expired recording(s) deleted, {kept} kept");
    Ok(0)
}
