//! Capture requests: `RetraceCapture` objects (`retrace.dev/v1alpha1`), read from the
//! captures directory (`*.yaml`, one object or several separated by `---`).

use std::{path::Path, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

pub const API_VERSION: &str = "retrace.dev/v1alpha1";
pub const KIND: &str = "RetraceCapture";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaptureObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The API server's id of the object (a request recreated under the same name is new).
    #[serde(default)]
    pub uid: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// What to record on this node: a cgroup (v2 folder) or a process.
    #[serde(default)]
    pub selector: Selector,
    /// How long (`30s`, `5m`); default 60 s.
    #[serde(default)]
    pub duration: Option<String>,
    /// Stop once the recording holds this many bytes (checked every 50 ms).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Payload bytes a second, enforced in the kernel: beyond it calls are recorded without
    /// their payload (counted `rate_limit` gaps); the pod never waits.
    #[serde(default)]
    pub max_bytes_per_second: Option<u64>,
    /// age recipients (`age1…`); default: the agent's.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// How long the recording is kept (`7d`).
    #[serde(default)]
    pub expires: Option<String>,
    /// Redaction rules (TOML) applied at record time: inline, or a ConfigMap's key.
    #[serde(default)]
    pub rules: Option<Rules>,
    /// The pods to record (as `selector.podSelector`).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Only these containers of them (as `selector.containers`).
    #[serde(default)]
    pub containers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    #[serde(default)]
    pub inline: Option<String>,
    #[serde(default)]
    pub config_map_ref: Option<ConfigMapRef>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct ConfigMapRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// A cgroup v2 folder.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// A pod on this node, by UID: its cgroup (systemd or cgroupfs driver; containerd, CRI-O
    /// or docker), or with `containerID` one container's.
    #[serde(default, rename = "podUID")]
    pub pod_uid: Option<String>,
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
    /// Pods on this node in the request's namespace, by label (`matchLabels`,
    /// `matchExpressions`), followed as they come and go; needs the agent's `[kubernetes]`.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Only these containers of the selected pods (names); default: the whole pod.
    #[serde(default)]
    pub containers: Vec<String>,
}

impl CaptureObject {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Names this request's content: a request that ran to its end is not run again unless
    /// it changed.
    pub fn fingerprint(&self) -> String {
        let digest = blake3::hash(format!("{self:?}").as_bytes());
        digest.to_hex()[..16].to_owned()
    }

    /// The pod selector and container names, from `spec.selector` or `spec`.
    pub fn pod_selector(&self) -> Option<(&LabelSelector, &[String])> {
        let selector = &self.spec.selector;
        match (&selector.pod_selector, &self.spec.pod_selector) {
            (Some(pods), _) => Some((pods, &selector.containers)),
            (None, Some(pods)) => Some((pods, &self.spec.containers)),
            (None, None) => None,
        }
    }

    pub fn duration(&self) -> Result<Duration, String> {
        match &self.spec.duration {
            Some(d) => crate::retention::parse_duration(d),
            None => Ok(Duration::from_secs(60)),
        }
    }
}

/// Every capture object in `dir`; files that do not parse are returned as errors by path.
pub fn read_dir(dir: &Path) -> (Vec<CaptureObject>, Vec<String>) {
    let (mut objects, mut errors) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else {
        errors.push(format!("cannot read the captures folder {}", dir.display()));
        return (objects, errors);
    };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for document in serde_yaml::Deserializer::from_str(&text) {
            match CaptureObject::deserialize(document) {
                Ok(o) if o.api_version == API_VERSION && o.kind == KIND => objects.push(o),
                Ok(_) => {}
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
    }
    (objects, errors)
}
