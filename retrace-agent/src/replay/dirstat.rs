//! The status of folders that the overlay merged. A folder that holds a file the replayer
//! layered in (or one the program wrote) exists in both of its overlay's layers, and overlayfs
//! reports such a folder with one link and the size of its tmpfs copy: `ls -l` would show
//! `1 root root 80` where the recording saw `2 root root 4096`. The replayer answers the stat
//! calls (stat, lstat, fstat, newfstatat, statx) that land on such a folder with the kernel's
//! own answer and these fields set as a disk's: two links plus one per subfolder, and the
//! host folder's size and blocks. The roots of the trees the sandbox mounts itself (/proc,
//! /sys, /dev) show the host's, and so do the random devices the replayer plays (FIFOs in the
//! sandbox). A file (or folder) the program changed in the sandbox gets its times moved onto
//! the program's clock (`TimeShift`). Every other stat is left to the kernel.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{
    rootfs::{ID_BASE, ID_RANGE},
    script::RANDOM_DEVICES,
};

/// `struct statx` is 256 bytes; its fields used here, by offset.
const STATX_SIZE: usize = 256;
const STX_NLINK: usize = 16;
const STX_UID: usize = 20;
const STX_GID: usize = 24;
const STX_SIZE: usize = 40;
const STX_BLOCKS: usize = 48;
/// `struct statx_timestamp` (i64 seconds, u32 nanoseconds) fields.
const STX_ATIME: usize = 64;
const STX_BTIME: usize = 80;
const STX_CTIME: usize = 96;
const STX_MTIME: usize = 112;

/// The times of what the program changed in the sandbox. The kernel stamps a file it writes
/// with the real time; the program's clock reads the recorded one (`make` would call the
/// Makefile it just wrote "in the future", `ls -l` would show today). A time from the replay
/// on (`since_ns`, real) is moved back by how far the real clock is ahead of the program's
/// (`by_ns`, at the stat).
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeShift {
    pub since_ns: i128,
    pub by_ns: i128,
}

impl TimeShift {
    /// Whether the file was changed during the replay.
    fn stamped(&self, st: &libc::stat) -> bool {
        let at = |sec: i64, nsec: i64| sec as i128 * 1_000_000_000 + nsec as i128;
        self.by_ns != 0
            && (at(st.st_mtime, st.st_mtime_nsec) >= self.since_ns
                || at(st.st_ctime, st.st_ctime_nsec) >= self.since_ns)
    }

    /// Moves one time back, if it is from the replay on; whether it did. A time is moved the
    /// same way each time it is seen (`moved`: by real time), though the clocks' distance
    /// changes: `tar` stats a file before and after reading it and calls any change a change.
    fn apply(&self, moved: &mut std::collections::HashMap<i128, i128>, sec: &mut i64, nsec: &mut i64) -> bool {
        let t = *sec as i128 * 1_000_000_000 + *nsec as i128;
        if self.by_ns == 0 || t < self.since_ns {
            return false;
        }
        if moved.len() >= MOVED_TIMES {
            moved.clear();
        }
        let moved = *moved.entry(t).or_insert(t - self.by_ns);
        (*sec, *nsec) = (moved.div_euclid(1_000_000_000) as i64, moved.rem_euclid(1_000_000_000) as i64);
        true
    }
}

/// What was worked out for a merged folder: its links (two plus its subfolders) and the host
/// folder at its path. Kept while the folder is unchanged (same inode, same mtime and ctime:
/// a subfolder made or removed inside changes both), since counting subfolders lists it
/// whole (~40 µs for /etc, against ~7 µs for the rest of the answer).
#[derive(Default)]
pub struct DirStats {
    merged: std::collections::HashMap<FolderVersion, (u64, Option<libc::stat>)>,
    /// Times from the replay on, as the program was shown them (`TimeShift::apply`).
    moved: std::collections::HashMap<i128, i128>,
}

/// Enough remembered times for the files a program changes; past it the memory starts over.
const MOVED_TIMES: usize = 1 << 16;

/// A folder as it is now: device, inode, mtime and ctime (seconds and nanoseconds).
type FolderVersion = (u64, u64, [i64; 4]);

/// Enough merged folders for any program's working set; past it the cache starts over.
const CACHED_FOLDERS: usize = 4096;

impl DirStats {
    /// A stat-family call of thread `pid`: `None` to let the kernel answer, else its return
    /// value or errno.
    pub fn answer(&mut self, pid: u32, nr: i64, args: &[u64; 6], shift: TimeShift) -> Option<Result<i64, i32>> {
        let (target, out, statx) = match nr {
            libc::SYS_fstat => (Target::Fd(args[0] as i32), args[1], None),
            libc::SYS_stat | libc::SYS_lstat => {
                let path = read_path(pid, args[0])?;
                (Target::Path { dirfd: libc::AT_FDCWD, path, follow: nr == libc::SYS_stat }, args[1], None)
            }
            libc::SYS_newfstatat | libc::SYS_statx => {
                let (flags, out) = if nr == libc::SYS_newfstatat { (args[3], args[2]) } else { (args[2], args[4]) };
                let path = read_path(pid, args[1])?;
                let target = if path.is_empty() && flags & libc::AT_EMPTY_PATH as u64 != 0 {
                    Target::Fd(args[0] as i32)
                } else {
                    let follow = flags & libc::AT_SYMLINK_NOFOLLOW as u64 == 0;
                    Target::Path { dirfd: args[0] as i32, path, follow }
                };
                (target, out, (nr == libc::SYS_statx).then_some((flags as i32, args[3] as u32)))
            }
            _ => return None,
        };
        let file = target.open(pid)?;
        // SAFETY: fstat of our own fd into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
            return None;
        }
        let mut merged = None;
        match st.st_mode & libc::S_IFMT {
            // A random device the replayer plays is a FIFO: it shows the host's device.
            libc::S_IFIFO => {
                let path = fd_path(&file)?;
                if RANDOM_DEVICES.contains(&path.as_str()) {
                    return Some(host_status(pid, &path, out, statx));
                }
            }
            libc::S_IFDIR if st.st_nlink != 1 => {
                // The root of a tree the sandbox makes itself (its own /proc, /sys, /dev) shows
                // the host's, as the recording saw it, not a fresh mount's owner and times.
                if let Some(path) = (st.st_ino <= 2).then(|| fd_path(&file)).flatten() {
                    if OWN_ROOTS.contains(&path.as_str()) {
                        return Some(host_status(pid, &path, out, statx));
                    }
                }
            }
            libc::S_IFDIR => {
                // A merged folder (a disk's folder has at least two links: its entry and its `.`).
                let version = (st.st_dev, st.st_ino, [st.st_mtime, st.st_mtime_nsec, st.st_ctime, st.st_ctime_nsec]);
                merged = Some(match self.merged.get(&version) {
                    Some(known) => *known,
                    None => {
                        let known = (2 + subfolders(&file)?, host_folder(&file));
                        if self.merged.len() >= CACHED_FOLDERS {
                            self.merged.clear();
                        }
                        self.merged.insert(version, known);
                        known
                    }
                });
            }
            _ => {}
        }
        // Anything else the kernel answers as it is, unless the program changed it here.
        if merged.is_none() && !shift.stamped(&st) {
            return None;
        }
        match statx {
            None => {
                if let Some((links, host)) = &merged {
                    st.st_nlink = *links;
                    if let Some(host) = host {
                        (st.st_size, st.st_blocks, st.st_blksize) = (host.st_size, host.st_blocks, host.st_blksize);
                    }
                }
                st.st_uid = inside(st.st_uid);
                st.st_gid = inside(st.st_gid);
                shift.apply(&mut self.moved, &mut st.st_atime, &mut st.st_atime_nsec);
                shift.apply(&mut self.moved, &mut st.st_mtime, &mut st.st_mtime_nsec);
                shift.apply(&mut self.moved, &mut st.st_ctime, &mut st.st_ctime_nsec);
                // SAFETY: the struct's bytes, as the kernel would copy them out.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&st as *const libc::stat).cast::<u8>(),
                        std::mem::size_of::<libc::stat>(),
                    )
                };
                Some(super::clock::write_to(pid, out, bytes).map(|()| 0))
            }
            Some((flags, mask)) => {
                let mut stx = [0u8; STATX_SIZE];
                let sync = flags & libc::AT_STATX_SYNC_TYPE;
                // SAFETY: statx of our own fd into a buffer of struct statx's size.
                let done = unsafe {
                    libc::statx(
                        file.as_raw_fd(),
                        c"".as_ptr(),
                        libc::AT_EMPTY_PATH | sync,
                        mask,
                        stx.as_mut_ptr().cast(),
                    )
                };
                if done != 0 {
                    return None;
                }
                let put = |stx: &mut [u8; STATX_SIZE], at: usize, bytes: &[u8]| {
                    stx[at..at + bytes.len()].copy_from_slice(bytes)
                };
                if let Some((links, host)) = &merged {
                    put(&mut stx, STX_NLINK, &(*links as u32).to_ne_bytes());
                    if let Some(host) = host {
                        put(&mut stx, STX_SIZE, &(host.st_size as u64).to_ne_bytes());
                        put(&mut stx, STX_BLOCKS, &(host.st_blocks as u64).to_ne_bytes());
                    }
                }
                for at in [STX_ATIME, STX_BTIME, STX_CTIME, STX_MTIME] {
                    let mut sec = i64::from_ne_bytes(stx[at..at + 8].try_into().expect("8 bytes"));
                    let mut nsec = i64::from(u32::from_ne_bytes(stx[at + 8..at + 12].try_into().expect("4 bytes")));
                    if shift.apply(&mut self.moved, &mut sec, &mut nsec) {
                        put(&mut stx, at, &sec.to_ne_bytes());
                        put(&mut stx, at + 8, &(nsec as u32).to_ne_bytes());
                    }
                }
                for at in [STX_UID, STX_GID] {
                    let id = u32::from_ne_bytes(stx[at..at + 4].try_into().expect("4 bytes"));
                    put(&mut stx, at, &inside(id).to_ne_bytes());
                }
                Some(super::clock::write_to(pid, out, &stx).map(|()| 0))
            }
        }
    }
}

/// What a stat call is about.
enum Target {
    Fd(i32),
    Path { dirfd: i32, path: String, follow: bool },
}

impl Target {
    /// The file, opened (`O_PATH`) as the program would find it: its fd, or its path resolved
    /// inside the sandbox's root (absolute symlinks included).
    fn open(&self, pid: u32) -> Option<OwnedFd> {
        match self {
            Target::Fd(fd) => super::notify::their_fd(pid, *fd),
            Target::Path { dirfd, path, follow } => {
                let full = if path.starts_with('/') {
                    path.clone()
                } else {
                    let base = match *dirfd {
                        libc::AT_FDCWD => std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?,
                        fd => std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?,
                    };
                    format!("{}/{path}", base.to_str()?)
                };
                let root = open_path(&format!("/proc/{pid}/root"))?;
                let how = OpenHow {
                    flags: (libc::O_PATH | libc::O_CLOEXEC | if *follow { 0 } else { libc::O_NOFOLLOW }) as u64,
                    mode: 0,
                    resolve: RESOLVE_IN_ROOT,
                };
                let path = CString::new(full).ok()?;
                // SAFETY: openat2 with a valid struct open_how; the fd returned is ours.
                let fd = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        root.as_raw_fd(),
                        path.as_ptr(),
                        &how as *const OpenHow,
                        std::mem::size_of::<OpenHow>(),
                    )
                };
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
            }
        }
    }
}

const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn open_path(path: &str) -> Option<OwnedFd> {
    let path = CString::new(path).ok()?;
    // SAFETY: openat of a C string; the fd returned is ours.
    let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How many subfolders the folder holds (as listed through the overlay).
fn subfolders(folder: &OwnedFd) -> Option<u64> {
    // SAFETY: openat of "." under our fd; fdopendir takes the new fd over.
    let dir = unsafe {
        let fd = libc::openat(folder.as_raw_fd(), c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        libc::fdopendir(fd)
    };
    if dir.is_null() {
        return None;
    }
    let mut count = 0;
    loop {
        // SAFETY: readdir on a live DIR*; the entry is read before the next call.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        let entry = unsafe { &*entry };
        let name = unsafe { std::ffi::CStr::from_ptr(entry.d_name.as_ptr()) };
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.d_type {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: fstatat of a name in the folder, not following links.
                (unsafe { libc::fstatat(libc::dirfd(dir), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0)
                    && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        count += u64::from(is_dir);
    }
    // SAFETY: closes the DIR* and its fd.
    unsafe { libc::closedir(dir) };
    Some(count)
}

/// The trees the sandbox mounts afresh.
const OWN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Our fd's path, as the sandbox names it (its mounts are not under our root).
fn fd_path(file: &OwnedFd) -> Option<String> {
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    path.to_str().map(str::to_owned)
}

/// The host's status of `path` (stat, or statx with the program's flags and mask), written
/// where the program asked.
fn host_status(pid: u32, path: &str, out: u64, statx: Option<(i32, u32)>) -> Result<i64, i32> {
    let path = CString::new(path).map_err(|_| libc::EINVAL)?;
    let mut buf = [0u8; STATX_SIZE];
    let (done, len) = match statx {
        // SAFETY: stat and statx of a C string into buffers of their structs' sizes.
        None => (unsafe { libc::stat(path.as_ptr(), buf.as_mut_ptr().cast()) }, std::mem::size_of::<libc::stat>()),
        Some((flags, mask)) => {
            let flags = flags & libc::AT_STATX_SYNC_TYPE;
            (unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), flags, mask, buf.as_mut_ptr().cast()) }, STATX_SIZE)
        }
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    super::clock::write_to(pid, out, &buf[..len]).map(|()| 0)
}

/// The host's folder at the same path, when there is one: its size and blocks are a disk's.
fn host_folder(file: &OwnedFd) -> Option<libc::stat> {
    let path = CString::new(fd_path(file)?).ok()?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: lstat of a C string into a zeroed struct.
    (unsafe { libc::lstat(path.as_ptr(), &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR).then_some(st)
}

/// A host id as the sandbox's user namespace shows it.
fn inside(id: u32) -> u32 {
    if (ID_BASE..ID_BASE + ID_RANGE).contains(&id) {
        id - ID_BASE
    } else {
        65534
    }
}

/// The NUL-terminated path at `addr` in the program's memory.
fn read_path(pid: u32, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let bytes = super::notify::read_mem(pid, addr, libc::PATH_MAX as usize)?;
    let end = bytes.iter().position(|&b| b == 0)?;
    String::from_utf8(bytes[..end].to_vec()).ok()
}
