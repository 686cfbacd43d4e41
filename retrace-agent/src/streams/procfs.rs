//! What an fd of a live process is, from /proc and from a duplicate of the fd itself
//! (`pidfd_getfd`, then getsockname/getpeername): used for fds open before recording began.

use std::{
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{sockaddr, Kind};

/// An fd's identity as found in /proc.
#[derive(Debug, Clone, Default)]
pub struct FdIdentity {
    pub kind: Kind,
    pub path: String,
    pub local: String,
    pub peer: String,
    pub position: u64,
    pub cloexec: bool,
    pub listening: bool,
}

/// The fds a process has open now, with their identities.
pub fn open_fds(pid: u32) -> std::io::Result<Vec<(i32, FdIdentity)>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if let Some(identity) = resolve(pid, fd) {
            fds.push((fd, identity));
        }
    }
    fds.sort_by_key(|(fd, _)| *fd);
    Ok(fds)
}

/// Identity of one fd; `None` if it is not open (any more).
pub fn resolve(pid: u32, fd: i32) -> Option<FdIdentity> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let target = target.to_string_lossy().into_owned();
    let mut id = FdIdentity::default();
    if let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
        for line in info.lines() {
            if let Some(pos) = line.strip_prefix("pos:") {
                id.position = pos.trim().parse().unwrap_or(0);
            }
            if let Some(flags) = line.strip_prefix("flags:") {
                id.cloexec =
                    u32::from_str_radix(flags.trim(), 8).map(|f| f & libc::O_CLOEXEC as u32 != 0).unwrap_or(false);
            }
        }
    }
    if target.starts_with("socket:") {
        socket_identity(pid, fd, &mut id);
    } else if target.starts_with("pipe:") {
        id.kind = Kind::Pipe;
        id.path = target;
    } else if target.starts_with('/') {
        id.kind = match std::fs::metadata(&target) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => Kind::Pipe,
            Ok(m) if m.is_file() || m.is_dir() => Kind::File,
            Ok(_) => Kind::Other,
            Err(_) => Kind::File,
        };
        id.path = target.trim_end_matches(" (deleted)").to_owned();
    } else {
        id.kind = Kind::Other;
        id.path = target;
    }
    Some(id)
}

/// Kind and addresses of a socket fd of another process, through a duplicate of it.
pub fn socket_identity(pid: u32, fd: i32, id: &mut FdIdentity) {
    id.kind = Kind::Other;
    let Some(dup) = duplicate(pid, fd) else { return };
    let raw = dup.as_raw_fd();
    let domain = sockopt(raw, libc::SO_DOMAIN).unwrap_or(0);
    let ty = sockopt(raw, libc::SO_TYPE).unwrap_or(0);
    id.listening = sockopt(raw, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    id.kind = Kind::of_socket(domain as u16, ty as u32);
    id.local = name(raw, libc::getsockname).unwrap_or_default();
    id.peer = name(raw, libc::getpeername).unwrap_or_default();
}

fn duplicate(pid: u32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; each returned fd is owned exactly once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return None;
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if dup < 0 {
            return None;
        }
        Some(OwnedFd::from_raw_fd(dup as i32))
    }
}

fn sockopt(fd: i32, opt: libc::c_int) -> Option<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for the call.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut value as *mut libc::c_int).cast(), &mut len) };
    (rc == 0).then_some(value)
}

type NameFn = unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: i32, f: NameFn) -> Option<String> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage is large enough for any address; len says how large.
    let rc = unsafe { f(fd, storage.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel initialised `len` bytes (zeroed before).
    let bytes = unsafe { std::slice::from_raw_parts(storage.as_ptr().cast::<u8>(), (len as usize).min(128)) };
    sockaddr::format(bytes)
}

/// The processes descended from `pid` now (children, grandchildren…), parents first.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// The working directory of a process, for relative paths.
pub fn cwd(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// argv of a process.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        })
        .unwrap_or_default()
}
