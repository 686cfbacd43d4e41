//! `retrace capture start|list|stop`: capture requests for node agents, written as
//! `RetraceCapture` objects into a captures folder (the agent's `captures_dir`).

use std::path::PathBuf;

use retrace_agent::node::request::{self, API_VERSION, KIND};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Ask for a capture: writes NAMESPACE.NAME.yaml into the captures folder.
    Start(StartArgs),
    /// The requests in the captures folder, with each one's status on this node (if known).
    List(ListArgs),
    /// Withdraw a request: its capture stops, and what it recorded is sealed and uploaded.
    Stop(StopArgs),
}

#[derive(clap::Args)]
pub struct StartArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The agent's captures folder.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Record this cgroup (v2 folder).
    #[arg(long, value_name = "DIR", conflicts_with = "pid")]
    cgroup: Option<String>,
    /// Record this process.
    #[arg(long)]
    pid: Option<u32>,
    /// How long (`30s`, `5m`).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// age recipient (repeatable; default: the agent's).
    #[arg(long = "recipient", short = 'r')]
    recipients: Vec<String>,
    #[arg(long)]
    expires: Option<String>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The agent's spool folder, for each request's status there.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StopArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Start(a) => start(a),
        Command::List(a) => list(a),
        Command::Stop(a) => stop(a),
    }
}

fn file(dir: &std::path::Path, namespace: &str, name: &str) -> PathBuf {
    dir.join(format!("{namespace}.{name}.yaml"))
}

fn start(a: StartArgs) -> anyhow::Result<i32> {
    let selector = match (&a.cgroup, a.pid) {
        (Some(c), None) => format!("cgroup: {}", serde_json::to_string(c)?),
        (None, Some(p)) => format!("pid: {p}"),
        _ => anyhow::bail!("give what to record: --cgroup DIR or --pid PID"),
    };
    retrace_agent::retention::parse_duration(&a.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    for r in &a.recipients {
        retrace_agent::keys::parse_recipient(r)?;
    }
    let mut text = format!(
        "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  selector: {{{selector}}}\n  duration: {}\n",
        a.name, a.namespace, a.duration
    );
    if !a.recipients.is_empty() {
        text.push_str(&format!("  recipients: {}\n", serde_json::to_string(&a.recipients)?));
    }
    if let Some(e) = &a.expires {
        text.push_str(&format!("  expires: {e}\n"));
    }
    let path = file(&a.dir, &a.namespace, &a.name);
    if path.exists() {
        anyhow::bail!("{}/{} is already requested ({}): stop it first", a.namespace, a.name, path.display());
    }
    // Written whole, then renamed: the agent never reads half a request.
    let tmp = a.dir.join(format!(".{}.{}.tmp", a.namespace, a.name));
    std::fs::write(&tmp, text).map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", a.dir.display()))?;
    std::fs::rename(&tmp, &path)?;
    eprintln!("retrace: requested {}/{} ({})", a.namespace, a.name, path.display());
    Ok(0)
}

fn list(a: ListArgs) -> anyhow::Result<i32> {
    let (objects, errors) = request::read_dir(&a.dir);
    for e in errors {
        eprintln!("retrace: warning: {e}");
    }
    for o in objects {
        let phase = a
            .spool
            .as_ref()
            .and_then(|s| {
                std::fs::read(s.join("status").join(format!("{}.{}.json", o.metadata.namespace, o.metadata.name))).ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["phase"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into());
        let what = match (&o.spec.selector.cgroup, o.spec.selector.pid) {
            (Some(c), _) => format!("cgroup {c}"),
            (_, Some(p)) => format!("pid {p}"),
            _ => "?".into(),
        };
        println!("{:<30} {:<10} {:<8} {what}", o.key(), phase, o.spec.duration.as_deref().unwrap_or("60s"));
    }
    Ok(0)
}

fn stop(a: StopArgs) -> anyhow::Result<i32> {
    let path = file(&a.dir, &a.namespace, &a.name);
    std::fs::remove_file(&path)
        .map_err(|e| anyhow::anyhow!("no request {}/{} ({}): {e}", a.namespace, a.name, path.display()))?;
    eprintln!("retrace: withdrew {}/{}", a.namespace, a.name);
    Ok(0)
}
