//! The seccomp notifier: answers the sandboxed program's connect and open calls. A connect to
//! an address the recording holds gets a real TCP socket (made inside the sandbox's network
//! namespace) whose other end plays the recorded peer; any other address is refused and
//! reported. A read-only open of a file the recording read to its end gets the recorded bytes;
//! an open for writing gets a scratch file; other opens proceed on the (read-only) disk.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::CString,
    fs::File,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::FileExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use super::{peer, report::Blocked, script::Connection, Shared};

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
#[derive(Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct NotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

const IOCTL_RECV: libc::c_ulong = 0xc050_2100;
const IOCTL_SEND: libc::c_ulong = 0xc018_2101;
const IOCTL_ID_VALID: libc::c_ulong = 0x4008_2102;
const IOCTL_ADDFD: libc::c_ulong = 0x4018_2103;
const ADDFD_FLAG_SETFD: u32 = 1;
const ADDFD_FLAG_SEND: u32 = 2;
const FLAG_CONTINUE: u32 = 1;

/// What the notifier needs to know and where it reports.
pub struct Notifier {
    pub listener: OwnedFd,
    pub child: libc::pid_t,
    /// Recorded outbound connections by peer, in the order they were made.
    pub connections: HashMap<SocketAddr, VecDeque<Connection>>,
    /// Recorded connect attempts that failed, by address: replayed with the same error.
    pub failed_connects: HashMap<String, VecDeque<i32>>,
    /// Files the recording read to their end that do not exist today (the others are
    /// mounted at their paths; `--live` paths are not here): served from memory when opened.
    pub files: HashMap<String, Vec<u8>>,
    pub scratch: PathBuf,
    /// Recorded inbound connections, opened again once the program listens.
    pub inbound: Vec<Connection>,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
}

enum Answer {
    /// Return this value (or -errno).
    Value(i64),
    Error(i32),
    /// Let the kernel run the call as made.
    Continue,
    /// Already answered (ADDFD with SEND).
    Done,
}

impl Notifier {
    /// Answers until every sandboxed process is gone (or `stop`); returns the recorded
    /// connections the program never made.
    pub fn run(mut self) -> Vec<Connection> {
        // Sockets handed to the program must live in its network namespace.
        if let Err(e) = enter_netns(self.child) {
            self.shared.fail(format!("cannot enter the sandbox's network namespace: {e}"));
            return Vec::new();
        }
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                self.shared.fail(format!("cannot listen inside the sandbox: {e}"));
                return Vec::new();
            }
        };
        let mut scratch_paths: HashSet<String> = HashSet::new();
        while !self.stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one fd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, 200) };
            if n <= 0 {
                continue;
            }
            if pfd.revents & libc::POLLIN == 0 {
                break; // POLLHUP: every sandboxed process is gone
            }
            let mut req = Notif::default();
            // SAFETY: RECV fills a seccomp_notif.
            if unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_RECV, &mut req) } != 0 {
                continue; // the caller died meanwhile (ENOENT)
            }
            let answer = match req.data.nr as i64 {
                libc::SYS_connect => self.connect(&req, &listener),
                libc::SYS_openat => self.open(&req, req.data.args[0] as i32, 1, 2, &mut scratch_paths),
                libc::SYS_open => self.open(&req, libc::AT_FDCWD, 0, 1, &mut scratch_paths),
                libc::SYS_creat => self.open(&req, libc::AT_FDCWD, 0, usize::MAX, &mut scratch_paths),
                libc::SYS_sendto => self.sendto(&req),
                libc::SYS_listen => {
                    // The program becomes a server: let it listen, then play its recorded
                    // clients (from this thread's network namespace) once.
                    self.respond(req.id, Answer::Continue);
                    if !self.inbound.is_empty() {
                        let inbound = std::mem::take(&mut self.inbound);
                        let (shared, child) = (self.shared.clone(), self.child);
                        let handle = std::thread::spawn(move || peer::play_clients(inbound, child, shared));
                        self.shared.peers.lock().expect("peers").push(handle);
                    }
                    Answer::Done
                }
                _ => Answer::Continue,
            };
            self.respond(req.id, answer);
        }
        let mut left: Vec<Connection> = self.connections.into_values().flatten().collect();
        left.sort_by_key(|c| c.stream_id);
        left
    }

    fn respond(&self, id: u64, answer: Answer) {
        let mut resp = NotifResp { id, ..Default::default() };
        match answer {
            Answer::Done => return,
            Answer::Value(v) => resp.val = v,
            Answer::Error(e) => resp.error = -e,
            Answer::Continue => resp.flags = FLAG_CONTINUE,
        }
        // SAFETY: SEND takes a seccomp_notif_resp; failure means the caller is gone.
        unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_SEND, &resp) };
    }

    /// The notification still stands (the caller did not die or get replaced) after we read
    /// its memory: what we read was its argument.
    fn valid(&self, id: u64) -> bool {
        // SAFETY: ID_VALID reads a u64.
        unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_ID_VALID, &id) == 0 }
    }

    fn connect(&mut self, req: &Notif, listener: &TcpListener) -> Answer {
        let len = (req.data.args[2] as usize).min(128);
        let Some(raw) = read_mem(req.pid, req.data.args[1], len) else { return Answer::Error(libc::EFAULT) };
        if !self.valid(req.id) {
            return Answer::Error(libc::EINTR);
        }
        let family = u16::from_ne_bytes([raw.first().copied().unwrap_or(0), raw.get(1).copied().unwrap_or(0)]);
        if family != libc::AF_INET as u16 && family != libc::AF_INET6 as u16 && family != libc::AF_UNIX as u16 {
            return Answer::Continue; // netlink and friends: inside the empty namespace
        }
        let address = crate::streams::sockaddr::format(&raw).unwrap_or_else(|| "?".into());
        if let Some(errno) = self.failed_connects.get_mut(&address).and_then(VecDeque::pop_front) {
            return Answer::Error(errno); // it failed the same way when recorded
        }
        if family == libc::AF_UNIX as u16 && !address.starts_with('@') {
            // A socket path that does not exist on the host is no way out: answer what the kernel
            // would (libc probes /var/run/nscd/socket on every user lookup, for one).
            let path = absolute(req.pid, libc::AT_FDCWD, &address);
            if path.as_deref().is_some_and(|p| std::fs::symlink_metadata(p).is_err()) {
                self.shared.absent_socket(&address);
                return Answer::Error(libc::ENOENT);
            }
        }
        let parsed = address.parse::<SocketAddr>().ok();
        let Some(connection) = parsed.and_then(|a| self.connections.get_mut(&a)).and_then(VecDeque::pop_front) else {
            self.shared.blocked(Blocked { syscall: "connect".into(), address, pid: req.pid });
            return Answer::Error(libc::ECONNREFUSED);
        };
        match self.hand_socket(req, listener) {
            Ok(server_side) => {
                let shared = self.shared.clone();
                let handle = std::thread::spawn(move || peer::play(connection, server_side, shared));
                self.shared.peers.lock().expect("peers").push(handle);
                Answer::Done
            }
            Err(e) => {
                self.shared.fail(format!("cannot hand a socket to the program: {e}"));
                Answer::Error(libc::ECONNREFUSED)
            }
        }
    }

    /// A datagram to an address: nothing in the recording answers datagrams yet, so every one
    /// is refused and reported.
    fn sendto(&mut self, req: &Notif) -> Answer {
        let len = (req.data.args[5] as usize).min(128);
        let Some(raw) = read_mem(req.pid, req.data.args[4], len) else { return Answer::Error(libc::EFAULT) };
        if !self.valid(req.id) {
            return Answer::Error(libc::EINTR);
        }
        let address = crate::streams::sockaddr::format(&raw).unwrap_or_else(|| "?".into());
        self.shared.blocked(Blocked { syscall: "sendto".into(), address, pid: req.pid });
        Answer::Error(libc::EACCES)
    }

    /// Connects a fresh TCP socket to our listener and puts it in the program's fd table in
    /// place of the socket it is connecting (same non-blocking flag); returns our end.
    fn hand_socket(&self, req: &Notif, listener: &TcpListener) -> std::io::Result<TcpStream> {
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server_side, _) = listener.accept()?;
        let sockfd = req.data.args[0] as i32;
        let flags = fd_flags(req.pid, sockfd).unwrap_or(0);
        if flags & libc::O_NONBLOCK != 0 {
            client.set_nonblocking(true)?;
        }
        copy_socket_options(req.pid, sockfd, client.as_raw_fd());
        let addfd = NotifAddfd {
            id: req.id,
            flags: ADDFD_FLAG_SETFD,
            srcfd: client.as_raw_fd() as u32,
            newfd: sockfd as u32,
            newfd_flags: (flags & libc::O_CLOEXEC) as u32,
        };
        // SAFETY: ADDFD takes a seccomp_notif_addfd.
        if unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_ADDFD, &addfd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.respond(req.id, Answer::Value(0));
        Ok(server_side)
    }

    fn open(
        &mut self,
        req: &Notif,
        dirfd: i32,
        path_arg: usize,
        flags_arg: usize,
        scratch_paths: &mut HashSet<String>,
    ) -> Answer {
        let flags = if flags_arg == usize::MAX {
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC
        } else {
            req.data.args[flags_arg] as i32
        };
        let Some(path) = read_cstring(req.pid, req.data.args[path_arg]) else { return Answer::Continue };
        if !self.valid(req.id) {
            return Answer::Error(libc::EINTR);
        }
        let Some(path) = absolute(req.pid, dirfd, &path) else { return Answer::Continue };
        if ["/dev/", "/proc/", "/sys/"].iter().any(|p| path.starts_with(p)) || flags & libc::O_DIRECTORY != 0 {
            return Answer::Continue;
        }
        let writes = flags & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) != 0;
        let cloexec = if flags & libc::O_CLOEXEC != 0 { libc::O_CLOEXEC as u32 } else { 0 };
        if writes || scratch_paths.contains(&path) {
            // Writes go to the scratch area, never to the host's files.
            let file = match self.scratch_file(&path, flags, scratch_paths) {
                Ok(f) => f,
                Err(e) => return Answer::Error(e.raw_os_error().unwrap_or(libc::EACCES)),
            };
            return self.add_fd(req.id, file.as_raw_fd(), cloexec);
        }
        let Some(content) = self.files.get(&path) else { return Answer::Continue };
        let memfd = match memfd_with(&path, content) {
            Ok(f) => f,
            Err(e) => return Answer::Error(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        self.shared.served(&path);
        self.add_fd(req.id, memfd.as_raw_fd(), cloexec)
    }

    fn scratch_file(&self, path: &str, flags: i32, scratch_paths: &mut HashSet<String>) -> std::io::Result<File> {
        let target = self.scratch.join(path.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !scratch_paths.contains(path) && flags & libc::O_TRUNC == 0 && Path::new(path).is_file() {
            std::fs::copy(path, &target)?; // read-modify-write starts from the host's content
        }
        let mut options = std::fs::OpenOptions::new();
        let access = flags & libc::O_ACCMODE;
        options
            .read(access != libc::O_WRONLY)
            .write(access != libc::O_RDONLY || flags & libc::O_CREAT != 0)
            .append(flags & libc::O_APPEND != 0)
            .create(flags & libc::O_CREAT != 0)
            .truncate(flags & libc::O_TRUNC != 0);
        let file = options.open(&target)?;
        if scratch_paths.insert(path.to_owned()) {
            self.shared.scratch_write(path);
        }
        Ok(file)
    }

    /// Puts `fd` in the program's table as the result of its call.
    fn add_fd(&self, id: u64, fd: i32, newfd_flags: u32) -> Answer {
        let addfd = NotifAddfd { id, flags: ADDFD_FLAG_SEND, srcfd: fd as u32, newfd: 0, newfd_flags };
        // SAFETY: ADDFD with SEND answers the notification with the new fd number.
        if unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_ADDFD, &addfd) } < 0 {
            return Answer::Error(libc::EMFILE);
        }
        Answer::Done
    }
}

/// Options the program set on its socket before connecting (timeouts, buffer sizes, keepalive,
/// TCP_NODELAY) carried over to the replacement: read from a copy of its socket.
fn copy_socket_options(pid: u32, their_fd: i32, ours: i32) {
    // SAFETY: pidfd_open/pidfd_getfd give us our own fds; getsockopt/setsockopt read and write
    // buffers of the size passed.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return;
        }
        let theirs = libc::syscall(libc::SYS_pidfd_getfd, pidfd, their_fd, 0) as i32;
        libc::close(pidfd);
        if theirs < 0 {
            return;
        }
        let options = [
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            (libc::SOL_SOCKET, libc::SO_RCVBUF),
            (libc::SOL_SOCKET, libc::SO_SNDBUF),
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
            (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
            (libc::SOL_SOCKET, libc::SO_LINGER),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        ];
        for (level, name) in options {
            let mut value = [0u8; 32];
            let mut len = value.len() as libc::socklen_t;
            if libc::getsockopt(theirs, level, name, value.as_mut_ptr().cast(), &mut len) == 0 {
                libc::setsockopt(ours, level, name, value.as_ptr().cast(), len);
            }
        }
        libc::close(theirs);
    }
}

fn enter_netns(pid: libc::pid_t) -> std::io::Result<()> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: setns on this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn read_mem(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; len];
    let n = mem.read_at(&mut buf, addr).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn read_cstring(pid: u32, addr: u64) -> Option<String> {
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    let mut at = addr;
    while out.len() < 4096 {
        // Up to the page end at most: the next page may not be mapped.
        let room = (4096 - (at % 4096) as usize).min(chunk.len());
        let n = mem.read_at(&mut chunk[..room], at).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    None
}

/// The path as the kernel would resolve its start: relative to the cwd or to `dirfd`.
fn absolute(pid: u32, dirfd: i32, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(crate::streams::paths::absolute("/", path));
    }
    let base = if dirfd == libc::AT_FDCWD {
        std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()?
    };
    Some(crate::streams::paths::absolute(&base.to_string_lossy(), path))
}

/// The file status flags of the program's fd (as `/proc/PID/fdinfo` shows them).
fn fd_flags(pid: u32, fd: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(flags.trim(), 8).ok()
}

fn memfd_with(path: &str, content: &[u8]) -> std::io::Result<File> {
    let name = CString::new(format!("retrace:{}", path.rsplit('/').next().unwrap_or("file"))).unwrap_or_default();
    // SAFETY: memfd_create with a valid name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(content)?;
    // The program reads from the start, like a freshly opened file.
    // SAFETY: lseek on our fd.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    Ok(file)
}
