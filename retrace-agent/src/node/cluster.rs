//! The API server's view (`[kubernetes]` in the agent's config): `RetraceCapture` objects in
//! every namespace, and the pods on this node only (field selector `spec.nodeName`), each kept
//! current by a kube-rs watch (list, then watch, re-listing with backoff after errors). Each
//! request's status on this node is written to its object as `status.nodes.NODE` (a merge
//! patch of the status subresource, so nodes do not overwrite each other).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
};

use futures::StreamExt as _;
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, GroupVersionKind, Selector, SelectorExt as _},
    runtime::{reflector, watcher, WatchStreamExt as _},
    Client, Config,
};
use serde_json::json;

use super::{log, request::CaptureObject};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubernetes: cannot read the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("kubernetes: no in-cluster service account and no kubeconfig set ({0})")]
    InCluster(String),
    #[error("kubernetes: {0}")]
    Client(String),
}

/// A pod on this node, as far as recording it goes.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// Running (or started) containers: name and runtime id (`containerd://…`).
    pub containers: Vec<(String, String)>,
}

pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: Client,
    resource: ApiResource,
    node: String,
    pods: reflector::Store<Pod>,
    captures: reflector::Store<DynamicObject>,
    synced: Arc<AtomicBool>,
}

impl Cluster {
    /// Connects with `kubeconfig`, else the pod's service account, and starts both watches.
    pub fn connect(kubeconfig: Option<&Path>, node: &str) -> Result<Cluster, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("retrace-kube")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        let config = match kubeconfig {
            Some(path) => {
                let bad = |message: String| ClusterError::Kubeconfig { path: path.display().to_string(), message };
                let file = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                runtime
                    .block_on(Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()))
                    .map_err(|e| bad(e.to_string()))?
            }
            None => Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?,
        };
        let client =
            runtime.block_on(async { Client::try_from(config) }).map_err(|e| ClusterError::Client(e.to_string()))?;
        let gvk = GroupVersionKind::gvk("retrace.dev", "v1alpha1", super::request::KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, "retracecaptures");

        let (pods, pods_writer) = reflector::store();
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let pod_events = reflector(pods_writer, watcher(Api::<Pod>::all(client.clone()), on_node));
        runtime.spawn(pod_events.default_backoff().for_each(|event| async move {
            if let Err(e) = event {
                log("warn", "pod watch failed: it lists again", json!({ "error": e.to_string() }));
            }
        }));
        let captures_writer = reflector::store::Writer::new(resource.clone());
        let captures = captures_writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let capture_events = reflector(captures_writer, watcher(api, watcher::Config::default()));
        runtime.spawn(capture_events.default_backoff().for_each(|event| async move {
            if let Err(e) = event {
                log("warn", "capture request watch failed: it lists again", json!({ "error": e.to_string() }));
            }
        }));
        let synced = Arc::new(AtomicBool::new(false));
        {
            let (pods, captures, synced) = (pods.clone(), captures.clone(), synced.clone());
            runtime.spawn(async move {
                if pods.wait_until_ready().await.is_ok() && captures.wait_until_ready().await.is_ok() {
                    synced.store(true, Relaxed);
                    log("info", "pod and capture request lists synced", json!({}));
                }
            });
        }
        Ok(Cluster { runtime, client, resource, node: node.to_owned(), pods, captures, synced })
    }

    /// Both lists have been read once (readiness).
    pub fn synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    /// The `RetraceCapture` objects now; objects that do not parse come back as errors.
    pub fn captures(&self) -> (Vec<CaptureObject>, Vec<String>) {
        let (mut objects, mut errors) = (Vec::new(), Vec::new());
        for object in self.captures.state() {
            let (namespace, name) =
                (object.metadata.namespace.clone().unwrap_or_default(), object.metadata.name.clone());
            let value = json!({
                "apiVersion": super::request::API_VERSION,
                "kind": super::request::KIND,
                "metadata": { "name": name, "namespace": namespace },
                "spec": object.data.get("spec").cloned().unwrap_or_else(|| json!({})),
            });
            match serde_json::from_value::<CaptureObject>(value) {
                Ok(mut capture) => {
                    capture.metadata.uid = object.metadata.uid.clone();
                    objects.push(capture);
                }
                Err(e) => errors.push(format!("RetraceCapture {namespace}/{}: {e}", name.unwrap_or_default())),
            }
        }
        (objects, errors)
    }

    /// The pods on this node now.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.pods
            .state()
            .iter()
            .filter_map(|pod| {
                let meta = &pod.metadata;
                let containers = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|all| all.iter().filter_map(|c| Some((c.name.clone(), c.container_id.clone()?))).collect())
                    .unwrap_or_default();
                Some(PodInfo {
                    namespace: meta.namespace.clone()?,
                    name: meta.name.clone()?,
                    uid: meta.uid.clone()?,
                    labels: meta.labels.clone().unwrap_or_default(),
                    containers,
                })
            })
            .collect()
    }

    /// `key` of the ConfigMap `name` in `namespace` (a request's redaction rules).
    pub fn config_map(&self, namespace: &str, name: &str, key: &str) -> Result<String, String> {
        let api = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(self.client.clone(), namespace);
        let map = self.runtime.block_on(api.get(name)).map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))?;
        map.data.and_then(|mut d| d.remove(key)).ok_or_else(|| format!("ConfigMap {namespace}/{name} has no key {key}"))
    }

    /// Writes the request's status on this node (`status.nodes.NODE`), without waiting.
    pub fn publish_status(&self, namespace: &str, name: &str, status: &serde_json::Value) {
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, &self.resource);
        let patch = json!({ "status": { "nodes": { self.node.clone(): status } } });
        let name = name.to_owned();
        self.runtime.spawn(async move {
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                // A request from the captures folder has no object: nothing to say.
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    log("warn", "cannot write a capture's status", json!({ "capture": name, "error": e.to_string() }));
                }
            }
        });
    }
}

/// The cgroups a pod selector picks on this node: each matching pod's, or with `containers`
/// those containers' (by name); with the target names (`namespace/pod[/container]`).
pub fn select(
    pods: &[PodInfo],
    namespace: &str,
    selector: &LabelSelector,
    containers: &[String],
    root: &Path,
) -> Result<Vec<(String, PathBuf)>, String> {
    let selector = Selector::try_from(selector.clone()).map_err(|e| format!("podSelector: {e}"))?;
    let mut targets = Vec::new();
    for pod in pods.iter().filter(|p| p.namespace == namespace && selector.matches(&p.labels)) {
        let Some(dir) = super::pods::pod_cgroup(root, &pod.uid) else { continue };
        if containers.is_empty() {
            targets.push((format!("{}/{}", pod.namespace, pod.name), dir));
            continue;
        }
        for (name, id) in pod.containers.iter().filter(|(name, _)| containers.contains(name)) {
            if let Some(container) = super::pods::container_cgroup(&dir, id) {
                targets.push((format!("{}/{}/{name}", pod.namespace, pod.name), container));
            }
        }
    }
    targets.sort();
    Ok(targets)
}

/// `RetraceCapture` objects on the API server, for `retrace capture start|list|stop`.
pub struct Requests {
    runtime: tokio::runtime::Runtime,
    client: Client,
    resource: ApiResource,
}

impl Requests {
    /// With `kubeconfig`, else `$KUBECONFIG`, `~/.kube/config` or the pod's service account.
    pub fn connect(kubeconfig: Option<&Path>) -> Result<Requests, ClusterError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        let config = match kubeconfig {
            Some(path) => {
                let bad = |message: String| ClusterError::Kubeconfig { path: path.display().to_string(), message };
                let file = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                runtime
                    .block_on(Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()))
                    .map_err(|e| bad(e.to_string()))?
            }
            None => runtime.block_on(Config::infer()).map_err(|e| ClusterError::InCluster(e.to_string()))?,
        };
        let client =
            runtime.block_on(async { Client::try_from(config) }).map_err(|e| ClusterError::Client(e.to_string()))?;
        let gvk = GroupVersionKind::gvk("retrace.dev", "v1alpha1", super::request::KIND);
        Ok(Requests { runtime, client, resource: ApiResource::from_gvk_with_plural(&gvk, "retracecaptures") })
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.resource),
            None => Api::all_with(self.client.clone(), &self.resource),
        }
    }

    /// Creates the request (`spec` as JSON).
    pub fn create(&self, namespace: &str, name: &str, spec: serde_json::Value) -> Result<(), ClusterError> {
        let mut object = DynamicObject::new(name, &self.resource).within(namespace);
        object.data = json!({ "spec": spec });
        self.runtime
            .block_on(self.api(Some(namespace)).create(&kube::api::PostParams::default(), &object))
            .map(|_| ())
            .map_err(|e| ClusterError::Client(short(&e)))
    }

    /// Every request: (namespace, name, spec, status).
    pub fn list(&self) -> Result<Vec<(String, String, serde_json::Value, serde_json::Value)>, ClusterError> {
        let list = self
            .runtime
            .block_on(self.api(None).list(&kube::api::ListParams::default()))
            .map_err(|e| ClusterError::Client(short(&e)))?;
        Ok(list
            .items
            .into_iter()
            .map(|o| {
                (
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default(),
                    o.data.get("spec").cloned().unwrap_or_default(),
                    o.data.get("status").cloned().unwrap_or_default(),
                )
            })
            .collect())
    }

    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        self.runtime
            .block_on(self.api(Some(namespace)).delete(name, &kube::api::DeleteParams::default()))
            .map(|_| ())
            .map_err(|e| ClusterError::Client(short(&e)))
    }
}

/// The API server's message where it sent one.
fn short(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}
