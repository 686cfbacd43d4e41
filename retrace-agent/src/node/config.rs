//! The node agent's configuration (`retrace agent --config FILE`, TOML).

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name (default: `$NODE_NAME`, else the hostname): recordings go under it.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Capture requests (`RetraceCapture` objects, `*.yaml`) read from here (as well as from
    /// the API server with `[kubernetes]`).
    #[serde(default)]
    pub captures_dir: Option<PathBuf>,
    /// Recordings are written here, and kept until uploaded.
    pub spool_dir: PathBuf,
    /// Prometheus metrics (`/metrics`), `/healthz` and `/readyz` on this address.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_captures")]
    pub max_concurrent_captures: usize,
    /// No capture records more than this many bytes (a request's maxBytes may ask for less).
    #[serde(default)]
    pub max_bytes_per_capture: Option<u64>,
    /// No capture records more than this many payload bytes a second (enforced in the kernel;
    /// a request's maxBytesPerSecond may ask for less).
    #[serde(default)]
    pub max_bytes_per_second_per_capture: Option<u64>,
    /// The agent's resident memory cap: above it no capture starts (Pending), and after 2 s
    /// over it the newest running capture ends (sealed and uploaded).
    #[serde(default)]
    pub memory_max_bytes: Option<u64>,
    /// Kernel ring buffer per capture (bytes, power of two).
    #[serde(default = "default_ring")]
    pub ring_buffer_bytes: u32,
    /// Threads per capture that seal and hash its segments in parallel (a capture's writer
    /// thread alone seals ~1 GB/s). Default: the CPUs the agent may use (its cgroup's CPU
    /// limit counted) beyond four, at most 8; 0 on small machines and under tight limits.
    #[serde(default)]
    pub seal_threads: Option<usize>,
    /// Recipients used when a capture names none (public keys only: a node never holds an
    /// identity).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Everything under the spool stays within this many bytes: past it the oldest sealed
    /// segments of ended captures are dropped (counted gaps), then running captures end.
    #[serde(default)]
    pub spool_max_bytes: Option<u64>,
    /// On SIGTERM: how long to keep uploading before exiting (what is left stays spooled).
    #[serde(default = "default_drain")]
    pub drain_timeout: String,
    #[serde(default, alias = "storage")]
    pub upload: Option<Upload>,
    #[serde(default)]
    pub policy: Policy,
    /// Watch `RetraceCapture` objects and this node's pods through the API server.
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// A kubeconfig file; default: the pod's service account (in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// Where recordings go: `s3://bucket/prefix` (AWS environment or profile for credentials).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub url: String,
    /// Another S3 server (`http://` allowed), instead of `AWS_ENDPOINT_URL` or AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Which namespaces may be recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Only these (empty: any not denied).
    #[serde(default)]
    pub allow_namespaces: Vec<String>,
    #[serde(default = "default_deny")]
    pub deny_namespaces: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { allow_namespaces: Vec::new(), deny_namespaces: default_deny() }
    }
}

impl Policy {
    pub fn allows(&self, namespace: &str) -> bool {
        !self.deny_namespaces.iter().any(|n| n == namespace)
            && (self.allow_namespaces.is_empty() || self.allow_namespaces.iter().any(|n| n == namespace))
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_max_captures() -> usize {
    4
}
fn default_ring() -> u32 {
    32 << 20
}
fn default_drain() -> String {
    "45s".into()
}
fn default_deny() -> Vec<String> {
    vec!["kube-system".into()]
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent config {path}: {message}")]
    Parse { path: String, message: String },
}

impl AgentConfig {
    pub fn read(path: &Path) -> Result<AgentConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p.clone(),
            message: e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "),
        })?;
        if config.captures_dir.is_none() && config.kubernetes.is_none() {
            let message = "set captures_dir (a folder of requests), [kubernetes] (the API server), or both".into();
            return Err(ConfigError::Parse { path: p, message });
        }
        Ok(config)
    }

    pub fn drain_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        crate::retention::parse_duration(&self.drain_timeout)
            .map_err(|e| ConfigError::Parse { path: "drain_timeout".into(), message: e })
    }

    pub fn node(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .or_else(|| nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "node".into())
    }

    /// Each capture's seal threads: as configured, else from the CPUs the agent may use.
    pub fn seal_threads(&self) -> usize {
        self.seal_threads.unwrap_or_else(|| crate::cpus::seal_threads(crate::cpus::usable()))
    }
}
