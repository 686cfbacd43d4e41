//! The seccomp notifier: answers the sandboxed program's connect, listen and sendto calls. A connect to
//! an address the recording holds gets a real TCP socket (made inside the sandbox's network
//! namespace) whose other end plays the recorded peer; any other address is refused and
//! reported. Clock reads, random bytes and folder listings (getdents64) are answered from the
//! recording, and a new process or thread gets its recorded id. File contents need no answer:
//! the sandbox's overlay serves recorded contents and keeps writes off the host.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::FileExt as _,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use super::{clock, dirstat, listening, matching::Pool, peer, report::Blocked, script::Connection, Shared};

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
const IOCTL_SET_FLAGS: libc::c_ulong = 0x4008_2104;
const FD_SYNC_WAKE_UP: u64 = 1;
const ADDFD_FLAG_SETFD: u32 = 1;
const FLAG_CONTINUE: u32 = 1;
/// getrandom flags no kernel accepts: the preloaded shim (shim/openssl_rand.c) asking for what
/// OpenSSL's random functions returned when recorded.
pub const LIBRARY_RANDOM: u32 = 0x5254_0000;
/// How long the notifier polls without sleeping after answering, where the kernel has no
/// synchronous wake-ups: long enough for the next read of a program reading the clock in a
/// loop, short enough not to take a core from the others.
const SPIN: std::time::Duration = std::time::Duration::from_micros(30);

/// What the notifier needs to know and where it reports.
pub struct Notifier {
    pub listener: OwnedFd,
    pub child: libc::pid_t,
    /// Recorded outbound connections not yet claimed, by peer.
    pub connections: Arc<Pool>,
    /// Where the program's UDP sockets connected or sent when recorded: served by
    /// `datagram` inside the sandbox.
    pub udp_addresses: std::collections::HashSet<String>,
    /// Recorded connect attempts that failed, by address: replayed with the same error.
    pub failed_connects: HashMap<String, VecDeque<i32>>,
    /// Recorded inbound connections, opened again once the program listens, and the order of
    /// their events.
    pub inbound: Vec<Connection>,
    pub inbound_order: Vec<super::script::OrderEvent>,
    /// What getrandom returned, in order: returned again.
    pub random: super::script::RecordedBytes,
    /// What sysinfo returned, in order: returned again.
    pub sysinfo: std::collections::VecDeque<Vec<u8>>,
    /// The wall-clock times each recorded thread read, in order: returned again to the
    /// replayed thread with its id.
    pub clock_reads: HashMap<(u32, super::script::ClockRead), VecDeque<(u64, i128)>>,
    /// Each recorded process's AT_RANDOM bytes, one per exec in order (zeros: not recorded):
    /// written in place of the kernel's at the new image's first system call.
    pub at_random: HashMap<u32, VecDeque<[u8; crate::auxv::AT_RANDOM_LEN]>>,
    /// When the program started (real wall clock, ns): what it changed since has the kernel's
    /// times, moved to its own clock's when it looks (`dirstat::TimeShift`).
    pub started_ns: i128,
    /// Threads' ids in the sandbox, by their id outside it (the notifier's).
    pub namespace_tids: HashMap<u32, u32>,
    /// What OpenSSL's RAND_bytes returned, in order: asked for by the preloaded shim, and by
    /// the programs that have OpenSSL linked in, whose functions are patched after each exec
    /// (None: the recording holds none of it).
    pub library_random: super::script::RecordedBytes,
    pub linked_random: Option<super::linked_random::LinkedRandom>,
    /// The folder listings the program read: served again.
    pub folders: super::listing::Folders,
    /// Merged folders' links and host status, worked out once per folder version.
    pub dir_stats: dirstat::DirStats,
    /// The processes and threads each recorded thread made, in order: made again with the
    /// same ids, where `pids` can set the sandbox's last pid before each.
    pub children: HashMap<u32, VecDeque<u32>>,
    pub pids: Option<super::sandbox::PidSetter>,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
}

enum Answer {
    /// Return this value (or -errno).
    Value(i64),
    Error(i32),
    /// Let the kernel run the call as made.
    Continue,
    /// Already answered (by ADDFD and SEND).
    Done,
}

impl Notifier {
    /// Answers until every sandboxed process is gone (or `stop`).
    pub fn run(mut self) {
        // Sockets handed to the program must live in its network namespace.
        if let Err(e) = enter_netns(self.child) {
            self.shared.fail(format!("cannot enter the sandbox's network namespace: {e}"));
            return;
        }
        let listener = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                self.shared.fail(format!("cannot listen inside the sandbox: {e}"));
                return;
            }
        };
        // Wake this thread on the CPU of the process that made the call, and that process on
        // ours when answered: a round trip without a migration, two to five times faster
        // (Linux 6.6). Older kernels refuse, and the notifier spins after each answer instead.
        // SAFETY: SET_FLAGS takes a u64 of flags by value.
        let sync_wake_up = unsafe { libc::ioctl(self.listener.as_raw_fd(), IOCTL_SET_FLAGS, FD_SYNC_WAKE_UP) } == 0;
        // Processes that exec'd and whose new vDSO is not patched yet.
        let mut patch_pending: std::collections::HashSet<u32> = std::collections::HashSet::new();
        let mut last_answer = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // Notifications come in bursts (a program reading the clock in a loop): without
            // synchronous wake-ups, poll without sleeping for a while after each, so the next
            // costs no wake-up.
            let timeout = if !sync_wake_up && last_answer.elapsed() < SPIN { 0 } else { 200 };
            // SAFETY: poll on one fd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if n <= 0 {
                std::hint::spin_loop();
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
            let nr = req.data.nr as i64;
            let answer = match nr {
                libc::SYS_connect => self.connect(&req, &listener),
                libc::SYS_clock_gettime | libc::SYS_gettimeofday | libc::SYS_time => {
                    let recorded = self.recorded_time(req.pid, nr, &req.data.args);
                    match clock::answer(&self.shared.clock, recorded, req.pid, nr, &req.data.args) {
                        Some(Ok(value)) => Answer::Value(value),
                        Some(Err(errno)) => Answer::Error(errno),
                        None => Answer::Continue,
                    }
                }
                libc::SYS_getrandom => self.getrandom(&req),
                libc::SYS_sysinfo => self.sysinfo(&req),
                libc::SYS_fstat | libc::SYS_stat | libc::SYS_lstat | libc::SYS_newfstatat | libc::SYS_statx => {
                    let shift = dirstat::TimeShift {
                        since_ns: self.started_ns,
                        by_ns: crate::clock::now_wall_ns() as i128 - self.shared.clock.peek(),
                    };
                    match self.dir_stats.answer(req.pid, nr, &req.data.args, shift) {
                        Some(Ok(n)) => Answer::Value(n),
                        Some(Err(errno)) => Answer::Error(errno),
                        None => Answer::Continue,
                    }
                }
                libc::SYS_clone | libc::SYS_clone3 | libc::SYS_fork | libc::SYS_vfork => self.new_task(req.pid),
                libc::SYS_getdents64 => match self.folders.answer(req.pid, &req.data.args) {
                    Some(Ok(n)) => {
                        self.shared.report.lock().expect("report").listings_served += 1;
                        Answer::Value(n)
                    }
                    Some(Err(errno)) => Answer::Error(errno),
                    None => Answer::Continue,
                },
                // A new image: its vDSO is patched at its first system call (the loader's brk,
                // the runtime's arch_prctl or set_tid_address), before any of its code reads the
                // clock. The thread may become its process's leader: both are marked.
                libc::SYS_execve | libc::SYS_execveat => {
                    patch_pending.insert(req.pid);
                    if let Ok(tgid) = crate::target::thread_group_of(req.pid) {
                        patch_pending.insert(tgid);
                    }
                    Answer::Continue
                }
                libc::SYS_brk | libc::SYS_arch_prctl | libc::SYS_set_tid_address => {
                    if patch_pending.remove(&req.pid) {
                        if let Err(e) = crate::vdso::patch(req.pid) {
                            self.shared.fail(format!("cannot patch the clock of pid {}: {e}", req.pid));
                        }
                        if let Some(Err(e)) = self.linked_random.as_mut().map(|l| l.patch(req.pid)) {
                            self.shared
                                .fail(format!("cannot patch OpenSSL's random functions in pid {}: {e}", req.pid));
                        }
                        self.recorded_at_random(req.pid);
                    }
                    Answer::Continue
                }
                libc::SYS_sendto => self.sendto(&req),
                libc::SYS_listen => {
                    // The program becomes a server: let it listen, then play its recorded
                    // clients (from this thread's network namespace) once.
                    self.respond(req.id, Answer::Continue);
                    if !self.inbound.is_empty() {
                        let inbound = std::mem::take(&mut self.inbound);
                        let order = std::mem::take(&mut self.inbound_order);
                        let (shared, child) = (self.shared.clone(), self.child);
                        let handle = std::thread::spawn(move || peer::play_clients(inbound, order, child, shared));
                        self.shared.peers.lock().expect("peers").push(handle);
                    }
                    Answer::Done
                }
                _ => Answer::Continue,
            };
            self.respond(req.id, answer);
            last_answer = std::time::Instant::now();
        }
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
        if family == libc::AF_UNIX as u16 {
            // One of the program's own sockets, bound in the sandbox: a connection inside it.
            let path = absolute(req.pid, libc::AT_FDCWD, &address);
            let names: Vec<&str> = [Some(address.as_str()), path.as_deref()].into_iter().flatten().collect();
            if listening::unix(&names) {
                return Answer::Continue;
            }
            // A recorded server's socket (gone now, or still the host's): played like TCP.
            if let Some(peer) = names.iter().find_map(|n| self.connections.unix_peer(n)) {
                if self.connections.knows(&peer) {
                    return self.play(req, listener, peer);
                }
            }
        }
        if family == libc::AF_UNIX as u16 && !address.starts_with('@') {
            // A socket path that does not exist in the sandbox is no way out: answer what the kernel
            // would (libc probes /var/run/nscd/socket on every user lookup, for one).
            let path = absolute(req.pid, libc::AT_FDCWD, &address);
            let in_sandbox = path.map(|p| format!("/proc/{}/root{p}", req.pid));
            if in_sandbox.is_some_and(|p| std::fs::symlink_metadata(p).is_err()) {
                self.shared.absent_socket(&address);
                return Answer::Error(libc::ENOENT);
            }
        }
        if family != libc::AF_UNIX as u16 && socket_type(req.pid, req.data.args[0] as i32) == Some(libc::SOCK_DGRAM) {
            // A datagram socket: connected to a recorded peer, it reaches the replayer's.
            if self.udp_addresses.contains(&address) {
                return Answer::Continue;
            }
            self.shared.blocked(Blocked { syscall: "connect".into(), address, pid: req.pid });
            return Answer::Error(libc::ECONNREFUSED);
        }
        let to = address.parse::<SocketAddr>().ok();
        if to.is_some_and(|to| !self.connections.has(&to) && listening::tcp(to)) {
            // A server the program runs in the sandbox, and its own client of it.
            return Answer::Continue;
        }
        let Some(peer) = to.filter(|a| self.connections.knows(a)) else {
            self.shared.blocked(Blocked { syscall: "connect".into(), address, pid: req.pid });
            return Answer::Error(libc::ECONNREFUSED);
        };
        self.play(req, listener, peer)
    }

    /// Puts a socket to the replayer in place of the program's, and plays the recorded
    /// connection to `peer` that the program's first bytes pick over it.
    fn play(&self, req: &Notif, listener: &TcpListener, peer: SocketAddr) -> Answer {
        match self.hand_socket(req, listener) {
            Ok(server_side) => {
                let (pool, shared) = (self.connections.clone(), self.shared.clone());
                let handle = std::thread::spawn(move || peer::play_matched(pool, peer, server_side, shared));
                self.shared.peers.lock().expect("peers").push(handle);
                Answer::Done
            }
            // The call is gone: a signal interrupted it (Go preempts goroutines with SIGURG; the
            // call comes again) or the process exited.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Answer::Done,
            Err(e) => {
                self.shared.fail(format!("cannot hand a socket to the program: {e}"));
                Answer::Error(libc::ECONNREFUSED)
            }
        }
    }

    /// The next wall-clock time thread `tid` read when recorded with the same kind of call
    /// (`nr`, `args`), if the recording has one left.
    fn recorded_time(&mut self, tid: u32, nr: i64, args: &[u64; 6]) -> Option<i128> {
        if self.clock_reads.is_empty() {
            return None;
        }
        let kind = super::script::ClockRead::of_call(nr, args)?;
        let inside = self.inside_id(tid)?;
        let queue = self.clock_reads.get_mut(&(inside, kind))?;
        // Reads the recording made while the program waited for what the replay delivered at
        // once are past (`VirtualClock::deliver`).
        // Those after the next event the replay waits for are not due yet: the clock answers
        // until it comes.
        while queue.front().is_some_and(|&(at, _)| self.shared.clock.stale(at)) {
            queue.pop_front();
        }
        let &(at, ns) = queue.front()?;
        if self.shared.clock.next_event().is_some_and(|next| i128::from(at) > next) {
            return None;
        }
        queue.pop_front();
        Some(ns)
    }

    /// Thread `tid`'s id in the sandbox (its recorded one), looked up once.
    fn inside_id(&mut self, tid: u32) -> Option<u32> {
        if let Some(&inside) = self.namespace_tids.get(&tid) {
            return Some(inside);
        }
        let inside = namespace_tid(tid)?;
        self.namespace_tids.insert(tid, inside);
        Some(inside)
    }

    /// A new image of process `pid`: its AT_RANDOM bytes become those its recorded exec had.
    fn recorded_at_random(&mut self, pid: u32) {
        if self.at_random.is_empty() {
            return;
        }
        let Some(bytes) = self.inside_id(pid).and_then(|inside| self.at_random.get_mut(&inside)?.pop_front()) else {
            return;
        };
        if bytes == [0; crate::auxv::AT_RANDOM_LEN] {
            return; // that exec's were not recorded
        }
        match crate::auxv::write(pid, &bytes) {
            Ok(()) => self.shared.report.lock().expect("report").at_random_replayed += 1,
            Err(e) => self.shared.fail(format!("cannot set the AT_RANDOM bytes of pid {pid}: {e}")),
        }
    }

    /// A clone, fork or vfork of thread `tid`: the task it makes gets the id the recorded one
    /// got (the sandbox's last pid set to the one before), where the recording says.
    fn new_task(&mut self, tid: u32) -> Answer {
        if self.children.is_empty() {
            return Answer::Continue;
        }
        let Some(pids) = &self.pids else { return Answer::Continue };
        let next = namespace_tid(tid).and_then(|inside| self.children.get_mut(&inside)?.pop_front());
        if let Some(child) = next.filter(|&c| c > 1) {
            pids.set_last(child - 1);
        }
        Answer::Continue
    }

    /// getrandom: the next recorded bytes (as many as asked, at most as many as recorded);
    /// the kernel's once the recorded ones are used up.
    fn getrandom(&mut self, req: &Notif) -> Answer {
        match req.data.args[2] as u32 {
            LIBRARY_RANDOM => return self.library_random(req, false),
            super::linked_random::LINKED_RANDOM => return self.library_random(req, true),
            _ => {}
        }
        let wanted = req.data.args[1] as usize;
        let tid = self.inside_id(req.pid);
        let Some(recorded) = self.random.take(tid, wanted) else {
            self.shared.report.lock().expect("report").random_unreplayed += 1;
            return Answer::Continue;
        };
        let n = recorded.len().min(wanted);
        match clock::write_to(req.pid, req.data.args[0], &recorded[..n]) {
            Ok(()) => {
                self.shared.report.lock().expect("report").random_reads += 1;
                Answer::Value(n as i64)
            }
            Err(errno) => Answer::Error(errno),
        }
    }

    /// The system's uptime, load and memory as the recorded call saw them, in order; the
    /// kernel's once those are used up.
    fn sysinfo(&mut self, req: &Notif) -> Answer {
        let Some(recorded) = self.sysinfo.pop_front() else { return Answer::Continue };
        match clock::write_to(req.pid, req.data.args[0], &recorded) {
            Ok(()) => Answer::Value(0),
            Err(errno) => Answer::Error(errno),
        }
    }

    /// The ask for the next bytes OpenSSL returned: exactly as many as asked, or else ENOSYS
    /// (the shim then calls the real function) or, for a patched function (`fresh`), as many
    /// fresh ones.
    fn library_random(&mut self, req: &Notif, fresh: bool) -> Answer {
        let wanted = req.data.args[1] as usize;
        if wanted == 0 {
            return Answer::Value(0);
        }
        let tid = self.inside_id(req.pid);
        let recorded = self.library_random.take(tid, wanted);
        let mut report = self.shared.report.lock().expect("report");
        let Some(recorded) = recorded else {
            report.library_random_unreplayed += 1;
            if !fresh {
                return Answer::Error(libc::ENOSYS);
            }
            // As OpenSSL would answer: a negative `num` (sign-extended) is refused.
            if wanted > i32::MAX as usize {
                return Answer::Error(libc::EINVAL);
            }
            return match fill_fresh(req.pid, req.data.args[0], wanted) {
                Ok(()) => Answer::Value(wanted as i64),
                Err(errno) => Answer::Error(errno),
            };
        };
        match clock::write_to(req.pid, req.data.args[0], &recorded[..wanted]) {
            Ok(()) => {
                report.library_random_reads += 1;
                Answer::Value(wanted as i64)
            }
            Err(errno) => Answer::Error(errno),
        }
    }

    /// A datagram to an address: to a recorded peer it goes (the replayer's socket there
    /// answers); any other is refused and reported.
    fn sendto(&mut self, req: &Notif) -> Answer {
        let len = (req.data.args[5] as usize).min(128);
        let Some(raw) = read_mem(req.pid, req.data.args[4], len) else { return Answer::Error(libc::EFAULT) };
        if !self.valid(req.id) {
            return Answer::Error(libc::EINTR);
        }
        let address = crate::streams::sockaddr::format(&raw).unwrap_or_else(|| "?".into());
        if self.udp_addresses.contains(&address) {
            return Answer::Continue;
        }
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
}

/// Writes `len` fresh random bytes at `addr` in `pid`'s memory, 64 KiB at a time.
fn fill_fresh(pid: u32, addr: u64, len: usize) -> Result<(), i32> {
    let mut chunk = [0u8; 65536];
    let mut done = 0;
    while done < len {
        let n = chunk.len().min(len - done);
        // SAFETY: getrandom writes at most `n` bytes into our buffer.
        let got = unsafe { libc::getrandom(chunk.as_mut_ptr().cast(), n, 0) };
        if got <= 0 {
            return Err(libc::EIO);
        }
        clock::write_to(pid, addr + done as u64, &chunk[..got as usize])?;
        done += got as usize;
    }
    Ok(())
}

/// Options the program set on its socket before connecting (timeouts, buffer sizes, keepalive,
/// TCP_NODELAY) carried over to the replacement: read from a copy of its socket.
fn copy_socket_options(pid: u32, their_fd_number: i32, ours: i32) {
    let Some(theirs) = their_fd(pid, their_fd_number) else { return };
    let theirs = theirs.as_raw_fd();
    // SAFETY: getsockopt/setsockopt read and write buffers of the size passed.
    unsafe {
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
    }
}

/// SOCK_STREAM, SOCK_DGRAM...: the type of the program's socket `fd` (None if it is none).
fn socket_type(pid: u32, fd: i32) -> Option<i32> {
    let theirs = their_fd(pid, fd)?;
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `kind`.
    let ok = unsafe {
        libc::getsockopt(
            theirs.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (ok == 0).then_some(kind)
}

/// A copy of the program's `fd` (`pid` may be any of its threads).
pub(super) fn their_fd(pid: u32, fd: i32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open/pidfd_getfd return fds we then own.
    unsafe {
        // A thread's own pidfd (Linux 6.9) spares reading its thread group from /proc.
        let mut pidfd = libc::syscall(libc::SYS_pidfd_open, pid, PIDFD_THREAD) as i32;
        if pidfd < 0 {
            let tgid = crate::target::thread_group_of(pid).ok()?;
            pidfd = libc::syscall(libc::SYS_pidfd_open, tgid, 0) as i32;
        }
        if pidfd < 0 {
            return None;
        }
        let theirs = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        (theirs >= 0).then(|| OwnedFd::from_raw_fd(theirs))
    }
}

/// Thread `tid`'s id inside its PID namespace (the last of its `NSpid` ids).
fn namespace_tid(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let ids = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    ids.split_whitespace().last()?.parse().ok()
}

/// `pidfd_open`'s flag for a pidfd of one thread (`O_EXCL`).
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

pub(super) fn enter_netns(pid: libc::pid_t) -> std::io::Result<()> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: setns on this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Up to `len` bytes of thread `pid`'s memory at `addr`: fewer where its mapping ends.
pub(super) fn read_mem(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    // SAFETY: one local iovec over our own buffer; the remote side is only read. A read that
    // runs into an unmapped page returns what came before it (one system call, where opening
    // /proc/PID/mem took three).
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
        let n = mem.read_at(&mut buf, addr).ok()?;
        buf.truncate(n);
        return Some(buf);
    }
    buf.truncate(n as usize);
    Some(buf)
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
