//! Pods and containers to cgroups (v2), whatever the kubelet's cgroup driver and the runtime:
//! the systemd driver names a pod's slice `kubepods-<qos>-pod<UID with _>.slice` and a
//! container's scope `cri-containerd-<ID>.scope`, `crio-<ID>.scope` or `docker-<ID>.scope`;
//! the cgroupfs driver names them `pod<UID>` and `<ID>`.

use std::path::{Path, PathBuf};

/// How deep below the cgroup root a pod's folder may be (kubepods/qos/pod, under slices).
const DEPTH: usize = 6;

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = mounts.lines().find(|l| l.split(" - ").nth(1).is_some_and(|fs| fs.starts_with("cgroup2 ")))?;
    Some(PathBuf::from(line.split(' ').nth(4)?))
}

/// The folder of the pod `uid` under `root`.
pub fn pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let names = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let is_pod = |name: &str| names.iter().any(|n| name == n || name.ends_with(&format!("-{n}.slice")));
    let mut level = vec![root.to_owned()];
    for _ in 0..DEPTH {
        let mut next = Vec::new();
        for dir in level {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if is_pod(&entry.file_name().to_string_lossy()) {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}

/// The folder of container `id` (the runtime's id, without its `containerd://` prefix) in
/// the pod's folder.
pub fn container_cgroup(pod: &Path, id: &str) -> Option<PathBuf> {
    let id = id.rsplit("://").next().unwrap_or(id);
    std::fs::read_dir(pod).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        p.is_dir() && (name == id || name.ends_with(&format!("-{id}.scope")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_containers_are_found_under_both_drivers_and_every_runtime() {
        let root = std::env::temp_dir().join(format!("retrace-pods-{}", std::process::id()));
        let uid = "8f2d1c3e-aaaa-bbbb-cccc-0123456789ab";
        let systemd = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ));
        for scope in ["cri-containerd-c1.scope", "crio-c2.scope", "docker-c3.scope"] {
            std::fs::create_dir_all(systemd.join(scope)).unwrap();
        }
        assert_eq!(pod_cgroup(&root, uid).as_deref(), Some(systemd.as_path()));
        assert_eq!(container_cgroup(&systemd, "containerd://c1"), Some(systemd.join("cri-containerd-c1.scope")));
        assert_eq!(container_cgroup(&systemd, "cri-o://c2"), Some(systemd.join("crio-c2.scope")));
        assert_eq!(container_cgroup(&systemd, "docker://c3"), Some(systemd.join("docker-c3.scope")));
        let other = "11111111-2222-3333-4444-555555555555";
        let cgroupfs = root.join(format!("kubepods/besteffort/pod{other}"));
        std::fs::create_dir_all(cgroupfs.join("c4")).unwrap();
        assert_eq!(pod_cgroup(&root, other).as_deref(), Some(cgroupfs.as_path()));
        assert_eq!(container_cgroup(&cgroupfs, "containerd://c4"), Some(cgroupfs.join("c4")));
        assert_eq!(pod_cgroup(&root, "no-such-pod"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
