//! `retrace capture start|list|stop`: capture requests for node agents, as `RetraceCapture`
//! objects on the API server (`--kubeconfig`, or `--kube` for the usual kubeconfig) or in a
//! captures folder (`--dir`, the agent's `captures_dir`).

use std::path::PathBuf;

use retrace_agent::node::{
    cluster::Requests,
    request::{self, API_VERSION, KIND},
};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Ask for a capture: writes NAMESPACE.NAME.yaml into the captures folder.
    Start(StartArgs),
    /// The requests in the captures folder, with each one's status on this node (if known).
    List(ListArgs),
    /// Withdraw a request: its capture stops, and what it recorded is sealed and uploaded.
    Stop(StopArgs),
}

/// Where requests live: a folder, or the API server.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Place {
    /// The agent's captures folder.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The API server this kubeconfig names.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server of $KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long)]
    kube: bool,
}

impl Place {
    fn api(&self) -> anyhow::Result<Option<Requests>> {
        if self.dir.is_some() {
            return Ok(None);
        }
        Ok(Some(Requests::connect(self.kubeconfig.as_deref())?))
    }
}

#[derive(clap::Args)]
pub struct StartArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[command(flatten)]
    place: Place,
    /// Record this cgroup (v2 folder).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["pid", "pods"])]
    cgroup: Option<String>,
    /// Record this process.
    #[arg(long, conflicts_with = "pods")]
    pid: Option<u32>,
    /// Record the pods of the namespace with these labels (`app=web,tier=front`), on every
    /// node where they run.
    #[arg(long, value_name = "LABELS")]
    pods: Option<String>,
    /// Only this container of them (repeatable).
    #[arg(long = "container", requires = "pods")]
    containers: Vec<String>,
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
    #[command(flatten)]
    place: Place,
    /// The agent's spool folder, for each request's status there.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StopArgs {
    name: String,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[command(flatten)]
    place: Place,
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
    let selector = match (&a.cgroup, a.pid, &a.pods) {
        (Some(c), None, None) => serde_json::json!({ "cgroup": c }),
        (None, Some(p), None) => serde_json::json!({ "pid": p }),
        (None, None, Some(labels)) => {
            let mut match_labels = serde_json::Map::new();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--pods: `{pair}` is not LABEL=VALUE (e.g. --pods app=web)"))?;
                match_labels.insert(k.trim().to_owned(), serde_json::json!(v.trim()));
            }
            let mut s = serde_json::json!({ "podSelector": { "matchLabels": match_labels } });
            if !a.containers.is_empty() {
                s["containers"] = serde_json::json!(a.containers);
            }
            s
        }
        _ => anyhow::bail!("give what to record: --pods LABELS, --cgroup DIR or --pid PID"),
    };
    retrace_agent::retention::parse_duration(&a.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    for r in &a.recipients {
        retrace_agent::keys::parse_recipient(r)?;
    }
    let mut spec = serde_json::json!({ "selector": selector, "duration": a.duration });
    if !a.recipients.is_empty() {
        spec["recipients"] = serde_json::json!(a.recipients);
    }
    if let Some(e) = &a.expires {
        spec["expires"] = serde_json::json!(e);
    }
    if let Some(api) = a.place.api()? {
        api.create(&a.namespace, &a.name, spec)?;
        eprintln!("retrace: requested {}/{} (RetraceCapture on the API server)", a.namespace, a.name);
        return Ok(0);
    }
    let dir = a.place.dir.as_deref().expect("a folder");
    let object = serde_json::json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": { "name": a.name, "namespace": a.namespace },
        "spec": spec,
    });
    let text = serde_yaml::to_string(&object)?;
    let path = file(dir, &a.namespace, &a.name);
    if path.exists() {
        anyhow::bail!("{}/{} is already requested ({}): stop it first", a.namespace, a.name, path.display());
    }
    // Written whole, then renamed: the agent never reads half a request.
    let tmp = dir.join(format!(".{}.{}.tmp", a.namespace, a.name));
    std::fs::write(&tmp, text).map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", dir.display()))?;
    std::fs::rename(&tmp, &path)?;
    eprintln!("retrace: requested {}/{} ({})", a.namespace, a.name, path.display());
    Ok(0)
}

fn list(a: ListArgs) -> anyhow::Result<i32> {
    if let Some(api) = a.place.api()? {
        for (namespace, name, spec, status) in api.list()? {
            let nodes = status["nodes"].as_object().cloned().unwrap_or_default();
            let phases: Vec<String> =
                nodes.iter().map(|(node, s)| format!("{node}:{}", s["phase"].as_str().unwrap_or("?"))).collect();
            let phases = if phases.is_empty() { "-".to_owned() } else { phases.join(",") };
            let duration = spec["duration"].as_str().unwrap_or("60s");
            println!("{:<30} {:<24} {duration:<8} {}", format!("{namespace}/{name}"), phases, spec["selector"]);
        }
        return Ok(0);
    }
    let (objects, errors) = request::read_dir(a.place.dir.as_deref().expect("a folder"));
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
    if let Some(api) = a.place.api()? {
        api.delete(&a.namespace, &a.name)?;
        eprintln!("retrace: withdrew {}/{}", a.namespace, a.name);
        return Ok(0);
    }
    let path = file(a.place.dir.as_deref().expect("a folder"), &a.namespace, &a.name);
    std::fs::remove_file(&path)
        .map_err(|e| anyhow::anyhow!("no request {}/{} ({}): {e}", a.namespace, a.name, path.display()))?;
    eprintln!("retrace: withdrew {}/{}", a.namespace, a.name);
    Ok(0)
}
