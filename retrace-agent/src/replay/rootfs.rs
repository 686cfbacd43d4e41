//! The replayed program's filesystem, prepared by the replayer (real root) before the sandbox
//! starts: every disk mount of the host becomes the read-only lower layer of an overlay whose
//! upper layer is a private tmpfs, so the program can create, rename, remove and change any
//! file while nothing it does reaches the host. Recorded file contents are written into the
//! upper layers at their paths before the program starts ("layered in"). After the run the
//! upper layers say what the program changed, and `--keep-scratch` copies them out.
//!
//! The program runs as root of a user namespace whose ids 0..65536 are the unused host ids
//! `ID_BASE..`: it has no privilege over the host. Lower layers are idmapped mounts for that
//! namespace, so host files keep their owners as the program sees them (root's files are
//! root's, not nobody's).

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use super::ReplayError;

/// Host uid/gid that the sandbox's root is; 0..ID_RANGE inside are ID_BASE.. outside. Far
/// above any real user's id, so nothing on the host belongs to them.
pub const ID_BASE: u32 = 1 << 30;
pub const ID_RANGE: u32 = 65536;
/// Where the sandbox stages its layers before `pivot_root`, in its own mount namespace only.
pub const STAGE: &str = "/tmp";

// Mount API constants (linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Filesystems that are not files (or are made fresh inside): never layered.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "bpf",
    "tracefs",
    "debugfs",
    "securityfs",
    "pstore",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "hugetlbfs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "rpc_pipefs",
    "ramfs",
];
/// Trees the sandbox builds itself.
const OWN_TREES: &[&str] = &["/proc", "/sys", "/dev"];
/// Whether `path` is a file of the kernel's that says the same to every process (not one of
/// a process's own, under `/proc/PID`, or reached through a link into one, as `/proc/self`,
/// `/proc/net` and `/proc/mounts` are: such a path is not its own canonical form): one the
/// sandbox can show with its recorded content. The file the sandbox's init sets pids through
/// stays the kernel's.
pub fn is_system_proc_file(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/") else { return false };
    let first = rest.split('/').next().unwrap_or_default();
    !first.bytes().all(|b| b.is_ascii_digit())
        && path != "/proc/sys/kernel/ns_last_pid"
        && std::fs::canonicalize(path).is_ok_and(|p| p == Path::new(path))
        && std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The sandbox's /dev/shm: a scratch folder, empty at the start.
const SHM: &str = "/dev/shm";

/// One host mount, seen by the program through an overlay.
pub struct Layer {
    /// Mount point, as on the host.
    pub path: String,
    /// A read-only clone of the host mount (idmapped where the filesystem allows).
    pub lower: OwnedFd,
}

/// Everything the sandboxed child needs, prepared here: it then makes only raw syscalls.
pub struct RootFs {
    pub userns: OwnedFd,
    /// The detached tmpfs holding `upper/N`, `work/N`, `lower/N` (mount points), `root`
    /// (where the merged tree is built) and `shm`.
    pub scratch: OwnedFd,
    pub layers: Vec<Layer>,
    /// Files layered in: (scratch path, size, mtime), to tell them from the program's writes.
    layered: Vec<(PathBuf, u64, i64)>,
    /// Whiteouts made here (files the recording created), likewise.
    hidden: Vec<PathBuf>,
    /// Upper folders made here, with the host folder each stands for: given its times once
    /// everything is layered in (adding an entry to a folder moves its modification time).
    folders: Vec<(PathBuf, PathBuf)>,
    /// Devices of the private /dev that are FIFOs in the scratch (`random_device`), by name.
    pub fifo_devices: Vec<String>,
    /// Files of the sandbox's /proc shown with their recorded content (`proc_file`): the
    /// scratch name of each and the path it is bound over.
    pub proc_files: Vec<(String, String)>,
}

/// What the program changed, from the upper layers.
#[derive(Debug, Default)]
pub struct Changes {
    /// Files (and symlinks) created or changed.
    pub written: Vec<String>,
    /// Paths removed (overlay whiteouts).
    pub removed: Vec<String>,
}

fn sandbox_err(what: &str, e: std::io::Error) -> ReplayError {
    ReplayError::Sandbox(format!("{what}: {e}"))
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl RootFs {
    /// The user namespace, the scratch tmpfs and a lower layer for every host disk mount.
    pub fn prepare() -> Result<RootFs, ReplayError> {
        let userns = user_namespace()?;
        let scratch = scratch_tmpfs()?;
        let mut layers = Vec::new();
        for path in disk_mounts().map_err(|e| sandbox_err("cannot read /proc/self/mountinfo", e))? {
            let Some(lower) = lower_layer(&path, &userns) else { continue };
            layers.push(Layer { path, lower });
        }
        if layers.first().is_none_or(|l| l.path != "/") {
            return Err(ReplayError::Sandbox("cannot clone the host's root filesystem".into()));
        }
        let mut root = RootFs {
            userns,
            scratch,
            layers,
            layered: Vec::new(),
            hidden: Vec::new(),
            folders: Vec::new(),
            fifo_devices: Vec::new(),
            proc_files: Vec::new(),
        };
        for dir in ["root", "upper", "work", "lower", "shm"] {
            root.mkdir(&root.scratch_path(dir), 0o755)?;
        }
        root.chmod(&root.scratch_path("shm"), 0o1777)?;
        for (i, layer) in root.layers.iter().enumerate() {
            for dir in ["upper", "work", "lower"] {
                root.mkdir(&root.scratch_path(&format!("{dir}/{i}")), 0o755)?;
            }
            // The merged mount point shows its upper folder's owner, mode and times.
            let upper = root.scratch_path(&format!("upper/{i}"));
            copy_attrs(&upper, std::fs::metadata(&layer.path).ok().as_ref(), 0o755);
            root.folders.push((upper, PathBuf::from(&layer.path)));
        }
        Ok(root)
    }

    /// A FIFO that the sandbox's /dev shows as device `name` (`urandom`): what the replayer
    /// writes into the returned end (read-write, so that the program's open never waits and
    /// its reads never see an end) is what the program reads there.
    pub fn random_device(&mut self, name: &str) -> Result<OwnedFd, ReplayError> {
        let path = self.scratch_path(&format!("dev-{name}"));
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a scratch path");
        // SAFETY: mkfifo and open of a C string; the fd returned is ours.
        let fd = unsafe {
            if libc::mkfifo(c_path.as_ptr(), 0o666) != 0 {
                return Err(sandbox_err("cannot make a random device", last_err()));
            }
            libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)
        };
        if fd < 0 {
            return Err(sandbox_err("cannot open a random device", last_err()));
        }
        self.chmod(&path, 0o666)?;
        std::os::unix::fs::chown(&path, Some(ID_BASE), Some(ID_BASE)).map_err(|e| sandbox_err("scratch owner", e))?;
        self.fifo_devices.push(name.to_owned());
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// A file of the kernel's that the program read whole when recorded (`/proc/meminfo`,
    /// `/proc/loadavg`, `/proc/sys/vm/overcommit_memory`): staged with that content, read-only
    /// and owned by the sandbox's root, for the sandbox to bind over its own /proc's file.
    pub fn proc_file(&mut self, path: &str, content: &[u8]) -> Result<(), ReplayError> {
        let name = format!("proc-{}", self.proc_files.len());
        let staged = self.scratch_path(&name);
        std::fs::write(&staged, content).map_err(|e| sandbox_err("cannot stage a /proc file", e))?;
        self.chmod(&staged, 0o444)?;
        std::os::unix::fs::chown(&staged, Some(ID_BASE), Some(ID_BASE)).map_err(|e| sandbox_err("scratch owner", e))?;
        self.proc_files.push((name, path.to_owned()));
        Ok(())
    }

    /// A path inside the scratch tmpfs, as this process reaches it.
    fn scratch_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{rel}", self.scratch.as_raw_fd()))
    }

    fn mkdir(&self, path: &Path, mode: u32) -> Result<(), ReplayError> {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(sandbox_err("cannot make the scratch layers", e)),
        }
        self.chmod(path, mode)?;
        std::os::unix::fs::chown(path, Some(ID_BASE), Some(ID_BASE)).map_err(|e| sandbox_err("scratch owner", e))
    }

    fn chmod(&self, path: &Path, mode: u32) -> Result<(), ReplayError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| sandbox_err("scratch mode", e))
    }

    /// Where a sandbox path lives in the scratch: its layer's upper folder (or the private
    /// /dev/shm), the host path of that folder, and the path relative to both. None for the
    /// trees the sandbox makes itself.
    fn upper_for<'p>(&self, path: &'p str) -> Option<(PathBuf, &'p str, &'p str)> {
        if let Some(rel) = under(path, SHM) {
            return Some((self.scratch_path("shm"), SHM, rel));
        }
        if OWN_TREES.iter().any(|t| under(path, t).is_some()) {
            return None;
        }
        let (i, layer) = self.layers.iter().enumerate().rev().find(|(_, l)| under(path, &l.path).is_some())?;
        Some((self.scratch_path(&format!("upper/{i}")), &path[..layer.path.len()], under(path, &layer.path)?))
    }

    /// Writes a recorded file's content at `path` in the sandbox (its folders as on the host,
    /// its mode and owner as the host's file has them today, if it exists), with the
    /// modification time the program saw (`mtime_ns`), else the host file's: servers put it in
    /// their answers (Last-Modified, ETag). False if the path cannot be layered (a tree the
    /// sandbox makes itself, or a folder that is a file today).
    pub fn layer_file(&mut self, path: &str, content: &[u8], mtime_ns: Option<i64>) -> Result<bool, ReplayError> {
        let path = follow_links(&resolve_folders(path));
        if Path::new(&path).is_dir() {
            return Ok(false);
        }
        let Some(upper) = self.upper_entry(&path)? else { return Ok(false) };
        let fail = |e| sandbox_err("cannot layer a recorded file", e);
        std::fs::write(&upper, content).map_err(fail)?;
        let host = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file());
        copy_attrs(&upper, host.as_ref(), 0o644);
        let mtime = match mtime_ns {
            Some(ns) => Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns.max(0) as u64)),
            None => host.and_then(|m| m.modified().ok()),
        };
        if let Some(mtime) = mtime {
            let times = std::fs::FileTimes::new().set_modified(mtime).set_accessed(mtime);
            std::fs::File::options().write(true).open(&upper).and_then(|f| f.set_times(times)).map_err(fail)?;
        }
        let meta = std::fs::metadata(&upper).map_err(fail)?;
        self.layered.push((upper, meta.len(), modified_ns(&meta)));
        Ok(true)
    }

    /// Hides the host's file or folder at `path` (an overlay whiteout): the program created
    /// it when recorded, so it must not find it. False if there is nothing to hide.
    pub fn hide_file(&mut self, path: &str) -> Result<bool, ReplayError> {
        let path = resolve_folders(path);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(false);
        }
        let Some(upper) = self.upper_entry(&path)? else { return Ok(false) };
        let c_path =
            CString::new(upper.as_os_str().as_encoded_bytes()).map_err(|_| ReplayError::Sandbox("path".into()))?;
        // SAFETY: mknod of a whiteout (a 0/0 character device) at a path we own.
        if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR, 0) } != 0 {
            return Err(sandbox_err("cannot hide a file the recording created", last_err()));
        }
        let _ = std::os::unix::fs::lchown(&upper, Some(ID_BASE), Some(ID_BASE));
        self.hidden.push(upper);
        Ok(true)
    }

    /// Gives every upper folder this replay made (the layers' roots too) the host folder's
    /// times, as the merged tree shows the upper folder's: the program sees `/`, `/tmp` or its
    /// project folder as the host has them, not the time the replay began.
    pub fn settle_folder_times(&self) {
        for (upper, host) in &self.folders {
            let Ok(meta) = std::fs::metadata(host) else { continue };
            let (Ok(modified), Ok(accessed)) = (meta.modified(), meta.accessed()) else { continue };
            let times = std::fs::FileTimes::new().set_modified(modified).set_accessed(accessed);
            let _ = std::fs::File::open(upper).and_then(|f| f.set_times(times));
        }
    }

    /// Where `path` (folders resolved) goes in the scratch, its folders made there with their
    /// host attributes (so the merged view shows the host's); None for a path that cannot be
    /// layered (a tree the sandbox makes itself, a folder that is a file today).
    /// Callers resolve the folders' symlinks first (`resolve_folders`): a folder made in the
    /// upper layer over a host symlink (/lib -> usr/lib) would hide everything behind it.
    fn upper_entry(&mut self, path: &str) -> Result<Option<PathBuf>, ReplayError> {
        let Some((mut upper, host_root, rel)) = self.upper_for(path) else { return Ok(None) };
        let mut host = PathBuf::from(host_root);
        let components: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let Some((name, folders)) = components.split_last() else { return Ok(None) };
        for folder in folders {
            upper.push(folder);
            host.push(folder);
            if upper.is_dir() {
                continue;
            }
            let meta = std::fs::metadata(&host).ok();
            if meta.as_ref().is_some_and(|m| !m.is_dir()) {
                return Ok(None);
            }
            std::fs::create_dir(&upper).map_err(|e| sandbox_err("cannot layer a recorded file", e))?;
            copy_attrs(&upper, meta.as_ref(), 0o755);
            self.folders.push((upper.clone(), host.clone()));
        }
        upper.push(name);
        if upper.is_dir() {
            return Ok(None);
        }
        Ok(Some(upper))
    }

    /// What the program wrote and removed, by sandbox path (files this replay layered in count
    /// only if the program changed them).
    pub fn changes(&self) -> Changes {
        let mut changes = Changes::default();
        let mut roots: Vec<(PathBuf, String)> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (self.scratch_path(&format!("upper/{i}")), l.path.clone()))
            .collect();
        roots.push((self.scratch_path("shm"), SHM.to_owned()));
        for (upper, prefix) in roots {
            walk(&upper, &mut |path, meta| {
                let rel = path.strip_prefix(&upper).unwrap_or(path);
                let sandbox_path = Path::new(&prefix).join(rel).to_string_lossy().into_owned();
                if meta.file_type().is_dir() {
                    return;
                }
                if is_whiteout(meta) {
                    if !self.hidden.iter().any(|p| p == path) {
                        changes.removed.push(sandbox_path);
                    }
                    return;
                }
                let ours =
                    self.layered.iter().any(|(p, len, t)| p == path && *len == meta.len() && *t == modified_ns(meta));
                if !ours {
                    changes.written.push(sandbox_path);
                }
            });
        }
        changes.written.sort();
        changes.removed.sort();
        changes
    }

    /// Copies what the program wrote into `dir`, at its sandbox paths (`dir/etc/x` for
    /// `/etc/x`); removed paths are listed in `dir/.removed`.
    pub fn keep(&self, dir: &Path, changes: &Changes) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for path in &changes.written {
            let Some((upper, _, rel)) = self.upper_for(path) else { continue };
            let source = upper.join(rel);
            let to = dir.join(path.trim_start_matches('/'));
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let meta = std::fs::symlink_metadata(&source)?;
            if meta.file_type().is_symlink() {
                let _ = std::fs::remove_file(&to);
                std::os::unix::fs::symlink(std::fs::read_link(&source)?, &to)?;
            } else if meta.is_file() {
                std::fs::copy(&source, &to)?;
            }
        }
        if !changes.removed.is_empty() {
            std::fs::write(dir.join(".removed"), changes.removed.join("\n") + "\n")?;
        }
        Ok(())
    }
}

/// Mode and owner from the host's `meta` (ids moved into the sandbox's range), or
/// `default_mode` and root.
fn copy_attrs(path: &Path, meta: Option<&std::fs::Metadata>, default_mode: u32) {
    let mode = meta.map_or(default_mode, |m| m.mode() & 0o7777);
    let inside = |id: u32| ID_BASE + if id < ID_RANGE { id } else { 65534 };
    let (uid, gid) = meta.map_or((ID_BASE, ID_BASE), |m| (inside(m.uid()), inside(m.gid())));
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
}

fn modified_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// `path` relative to `prefix` if it is at or under it.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Where a symlink at `path` leads (through every link in turn, as an open would), so that a
/// file read through a link (`/etc/localtime`) is layered in at its target and the link
/// stays a link (`readlink` names the time zone). `path` itself if it is no link.
fn follow_links(path: &str) -> String {
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return path.to_owned();
    }
    if let Ok(target) = std::fs::canonicalize(path) {
        return target.to_string_lossy().into_owned();
    }
    // A link to nothing (yet): its target, followed by hand.
    let mut path = path.to_owned();
    // As the kernel, give up on a loop after 40 links.
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&path) else { break };
        let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
        path = resolve_folders(&normalize(&parent.join(target)));
    }
    path
}

/// `path` without `.` and `..` components (lexically: its folders' links are resolved after).
fn normalize(path: &Path) -> String {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// The path with every folder's symlinks resolved (the last component kept as it is).
fn resolve_folders(path: &str) -> String {
    let p = Path::new(path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else { return path.to_owned() };
    // The longest existing ancestor, canonical, then the rest as given.
    let mut existing = parent.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
            (Some(n), Some(up)) => {
                rest.push(n);
                existing = up.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out.push(name);
    out.to_string_lossy().into_owned()
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        visit(&path, &meta);
        if meta.is_dir() {
            walk(&path, visit);
        }
    }
}

/// A user namespace mapping 0..ID_RANGE to ID_BASE.. on the host, held by an fd: a helper
/// process makes it and is gone before this returns.
fn user_namespace() -> Result<OwnedFd, ReplayError> {
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: a pipe into a local array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sandbox_err("pipe", last_err()));
    }
    // SAFETY: the child makes raw syscalls only, then waits to be killed.
    let helper = unsafe { libc::fork() };
    if helper < 0 {
        return Err(sandbox_err("fork", last_err()));
    }
    if helper == 0 {
        unsafe {
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            libc::write(pipe[1], [if ok { b'y' } else { b'n' }].as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    }
    // SAFETY: our pipe's ends.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    drop(write_end);
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a local.
    let n = unsafe { libc::read(read_end.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let result = (|| {
        if n != 1 || byte[0] != b'y' {
            return Err(ReplayError::Sandbox(
                "cannot create a user namespace (replay needs root, and user namespaces enabled)".into(),
            ));
        }
        let map = format!("0 {ID_BASE} {ID_RANGE}\n");
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{helper}/{file}"), &map)
                .map_err(|e| sandbox_err(&format!("cannot write the user namespace's {file}"), e))?;
        }
        let ns =
            std::fs::File::open(format!("/proc/{helper}/ns/user")).map_err(|e| sandbox_err("user namespace", e))?;
        Ok(OwnedFd::from(ns))
    })();
    // SAFETY: our helper child.
    unsafe {
        libc::kill(helper, libc::SIGKILL);
        libc::waitpid(helper, std::ptr::null_mut(), 0);
    }
    result
}

/// A tmpfs mount attached nowhere, owned by the sandbox's root: only fds reach it.
fn scratch_tmpfs() -> Result<OwnedFd, ReplayError> {
    let fail = |what: &str| sandbox_err(&format!("cannot make the scratch tmpfs ({what})"), last_err());
    // SAFETY: the mount API on C strings we own; each fd returned is ours.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 1 /* FSOPEN_CLOEXEC */) as RawFd;
        if fs < 0 {
            return Err(fail("fsopen"));
        }
        let fs = OwnedFd::from_raw_fd(fs);
        let id = CString::new(ID_BASE.to_string()).expect("digits");
        for (key, value) in [(c"uid", id.as_c_str()), (c"gid", id.as_c_str()), (c"mode", c"0755")] {
            if libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
                != 0
            {
                return Err(fail("options"));
            }
        }
        if libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, 0, 0, 0) != 0 {
            return Err(fail("create"));
        }
        let mnt = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) as RawFd;
        if mnt < 0 {
            return Err(fail("fsmount"));
        }
        Ok(OwnedFd::from_raw_fd(mnt))
    }
}

/// A read-only clone of the host mount at `path`, idmapped into the sandbox's user namespace
/// where the filesystem supports it (else its files show as nobody's, still readable).
fn lower_layer(path: &str, userns: &OwnedFd) -> Option<OwnedFd> {
    let c_path = CString::new(path).ok()?;
    // SAFETY: open_tree and mount_setattr on our own fds and C strings.
    unsafe {
        let fd =
            libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
                as RawFd;
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let set = |attr: u64| {
            let attr = MountAttr { attr_set: attr, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr,
                std::mem::size_of::<MountAttr>(),
            ) == 0
        };
        if !set(MOUNT_ATTR_RDONLY | MOUNT_ATTR_IDMAP) && !set(MOUNT_ATTR_RDONLY) {
            return None;
        }
        Some(fd)
    }
}

/// Mount points of the host's file-holding filesystems, parents first; the topmost mount
/// where several share a point.
fn disk_mounts() -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<String> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else { continue };
        let point = unescape(point);
        if PSEUDO_FS.contains(fstype) || OWN_TREES.iter().any(|t| under(&point, t).is_some()) {
            continue;
        }
        points.retain(|p| *p != point);
        points.push(point);
    }
    points.sort_by_key(|p| if p == "/" { 0 } else { p.matches('/').count() });
    Ok(points)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fall_under_their_mount() {
        assert_eq!(under("/etc/x", "/"), Some("etc/x"));
        assert_eq!(under("/work/a/b", "/work"), Some("a/b"));
        assert_eq!(under("/workshop/a", "/work"), None);
        assert_eq!(under("/work", "/work"), Some(""));
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
    }
}
