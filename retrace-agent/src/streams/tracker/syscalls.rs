//! What each syscall does to streams and fd tables.

use bytes::Bytes;
use retrace_common::{
    config::AUX_SECOND_PATH,
    syscall::{Direction, Sys},
    SyscallRecord, FD_REOPENED, SYSCALL_HAS_PENDING_LOSS,
};

use super::*;

/// How long a path's kind (FIFO, file, other) is taken as known without another stat.
const PATH_KIND_TTL_NS: u64 = 1_000_000_000;
/// Paths whose kind is remembered at most (the map is emptied when full).
const PATH_KINDS_MAX: usize = 4096;

impl Tracker {
    pub(super) fn syscall(&mut self, rec: &SyscallRecord, aux: &Bytes, out: &mut Vec<proto::Record>) {
        let Some(sys) = Sys::from_u32(rec.sys) else { return };
        let tgid = rec.hdr.tgid;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let call = self.take_pending(rec.hdr.tid, rec.hdr.ts_ns, out);
        let ret = rec.ret;
        let args = rec.args;
        let fd0 = args[0] as i32;
        let mut stream_id = 0;
        let mut detail = String::new();
        let mut named = Vec::new();
        let mut random = Vec::new();
        let placed = call.placed.is_some();
        // The fd whose pending entry the record carries: a lifecycle call's (first) new fd, else
        // the first argument (as the kernel's `changed_fds` and `loss_fd` choose it).
        let loss_fd = match sys {
            Sys::Open
            | Sys::Openat
            | Sys::Openat2
            | Sys::Creat
            | Sys::Socket
            | Sys::Accept
            | Sys::Accept4
            | Sys::Dup
            | Sys::Fcntl => ret as i32,
            s if s.makes_anonymous_fd(args[0]) => ret as i32,
            Sys::Dup2 | Sys::Dup3 => args[1] as i32,
            Sys::Pipe | Sys::Pipe2 | Sys::Socketpair => rec.extra[0] as i32,
            _ => fd0,
        };
        if rec.flags & FD_REOPENED != 0 && !placed {
            // The fd was closed or reopened in records the kernel had to drop.
            self.reopen_fd(tgid, loss_fd, ts, out);
        }
        if sys.is_tls() {
            stream_id = self.tls_stream(tgid, fd0, args[3], sys, ts, out);
        } else if sys.direction().is_some() {
            stream_id = self.stream_for_fd(tgid, fd0, ts, out);
            if let Some((local, peer)) = sockaddr::tuple(&rec.sock) {
                self.fill_addresses(stream_id, local, peer, out);
            }
        }
        if rec.flags & SYSCALL_HAS_PENDING_LOSS != 0 && !placed {
            // Bytes of earlier calls on this fd whose records were dropped: they came first.
            let sid = if stream_id != 0 { stream_id } else { self.stream_for_fd(tgid, loss_fd, ts, out) };
            self.gap(sid, Direction::In, rec.lost_before_in, GapReason::RecordDropped, sys.name(), ts, out);
            self.gap(sid, Direction::Out, rec.lost_before_out, GapReason::RecordDropped, sys.name(), ts, out);
        }
        if let Some(dir) = sys.direction() {
            self.data(stream_id, dir, sys, rec, call, ts, out);
        }
        if matches!(sys, Sys::Connect | Sys::Bind) && ret < 0 && ret != -EINPROGRESS {
            // A failed attempt still names where it went (replay answers it the same way).
            detail = sockaddr::format(aux).unwrap_or_default();
        }
        if ret >= 0 || ret == -EINPROGRESS {
            match sys {
                Sys::Open | Sys::Creat => {
                    let flags = if sys == Sys::Creat { 0 } else { args[1] };
                    stream_id = self.open(tgid, None, aux, ret as i32, flags, ts, out);
                }
                Sys::Openat => stream_id = self.open(tgid, Some(fd0), aux, ret as i32, args[2], ts, out),
                Sys::Openat2 => stream_id = self.open(tgid, Some(fd0), aux, ret as i32, rec.extra[0] as u64, ts, out),
                Sys::Chdir => {
                    let base = self.cwd_of(tgid);
                    self.cwd.insert(tgid, paths::absolute(&base, &text(aux)));
                }
                Sys::Fchdir => {
                    if let Some(path) = self.fd_path(tgid, fd0, ts, out) {
                        self.cwd.insert(tgid, path);
                    }
                }
                Sys::Socket => {
                    let id = procfs::FdIdentity {
                        kind: Kind::of_socket(args[0] as u16, args[1] as u32),
                        ..Default::default()
                    };
                    stream_id = self.new_stream(tgid, ret as i32, &id, "socket", false, ts, out);
                    self.bind_fd(tgid, ret as i32, stream_id, args[1] & SOCK_CLOEXEC != 0, ts, out);
                }
                Sys::Socketpair => {
                    let kind = Kind::of_socket(args[0] as u16, args[1] as u32);
                    let (a, b) = (rec.extra[0] as i32, rec.extra[1] as i32);
                    let id = procfs::FdIdentity { kind, peer: "socketpair".into(), ..Default::default() };
                    let sa = self.new_stream(tgid, a, &id, "socketpair", false, ts, out);
                    let sb = self.new_stream(tgid, b, &id, "socketpair", false, ts, out);
                    self.bind_fd(tgid, a, sa, args[1] & SOCK_CLOEXEC != 0, ts, out);
                    self.bind_fd(tgid, b, sb, args[1] & SOCK_CLOEXEC != 0, ts, out);
                    detail = format!("fds=[{a},{b}]");
                }
                Sys::Pipe | Sys::Pipe2 => {
                    let cloexec = sys == Sys::Pipe2 && args[1] & O_CLOEXEC != 0;
                    let (r, w) = (rec.extra[0] as i32, rec.extra[1] as i32);
                    let read_end =
                        procfs::FdIdentity { kind: Kind::Pipe, path: "pipe (read end)".into(), ..Default::default() };
                    let write_end =
                        procfs::FdIdentity { kind: Kind::Pipe, path: "pipe (write end)".into(), ..Default::default() };
                    let sr = self.new_stream(tgid, r, &read_end, "pipe", false, ts, out);
                    let sw = self.new_stream(tgid, w, &write_end, "pipe", false, ts, out);
                    self.bind_fd(tgid, r, sr, cloexec, ts, out);
                    self.bind_fd(tgid, w, sw, cloexec, ts, out);
                    detail = format!("fds=[{r},{w}]");
                }
                Sys::Connect => {
                    stream_id = self.stream_for_fd(tgid, fd0, ts, out);
                    let peer = sockaddr::format(aux).unwrap_or_default();
                    detail = peer.clone();
                    // TCP enters SYN_SENT before the ephemeral port is chosen, and UDP reports
                    // nothing: then ask the live socket, and trust the answer only if it is
                    // still the socket connected to `peer`.
                    let local = match sockaddr::tuple(&rec.sock) {
                        Some((local, _)) if !local.ends_with(":0") => Some(local),
                        _ => self.live_local_if(tgid, fd0, stream_id, |live| live.peer == peer),
                    };
                    self.set_addresses(stream_id, local, Some(peer), out);
                }
                Sys::Bind => {
                    stream_id = self.stream_for_fd(tgid, fd0, ts, out);
                    let local = sockaddr::format(aux).unwrap_or_default();
                    detail = local.clone();
                    // Port 0 is chosen by the kernel: the socket's first data call or listen
                    // reports it, and it is merged into this address then.
                    self.set_addresses(stream_id, Some(local), None, out);
                }
                Sys::Listen => {
                    stream_id = self.stream_for_fd(tgid, fd0, ts, out);
                    let local = sockaddr::tuple(&rec.sock).map(|(local, _)| local);
                    if let Some(s) = self.streams.get_mut(&stream_id) {
                        s.info.listening = true;
                    }
                    self.set_addresses(stream_id, local, None, out);
                }
                Sys::Accept | Sys::Accept4 => {
                    let listener = self.stream_for_fd(tgid, fd0, ts, out);
                    let (kind, local) = self
                        .streams
                        .get(&listener)
                        .map(|s| (s.info.kind(), s.info.local.clone()))
                        .unwrap_or((proto::StreamKind::Other, String::new()));
                    let mut id = procfs::FdIdentity { kind: from_proto(kind), local, ..Default::default() };
                    id.peer = sockaddr::format(aux).unwrap_or_default();
                    if id.peer.is_empty() && kind != proto::StreamKind::Unix {
                        // No address asked for: ask the live socket, and trust the answer only
                        // if it is still a connection of this listener.
                        let mut live = procfs::FdIdentity::default();
                        procfs::socket_identity(tgid, ret as i32, &mut live);
                        if !live.local.is_empty() && (live.local == id.local || id.local.is_empty()) {
                            id.local = live.local;
                            id.peer = live.peer;
                        }
                    }
                    if !id.peer.is_empty() && super::fds::is_unspecified(&id.local) {
                        // A listener on a wildcard: the connection's own local address is the
                        // live socket's (if that fd is still this connection).
                        let mut live = procfs::FdIdentity::default();
                        procfs::socket_identity(tgid, ret as i32, &mut live);
                        if live.peer == id.peer && !live.local.is_empty() {
                            id.local = live.local;
                        }
                    }
                    detail = id.peer.clone();
                    stream_id = self.new_stream(tgid, ret as i32, &id, "accept", false, ts, out);
                    let cloexec = sys == Sys::Accept4 && args[3] & SOCK_CLOEXEC != 0;
                    self.bind_fd(tgid, ret as i32, stream_id, cloexec, ts, out);
                }
                Sys::Close => {
                    if let Some(entry) = self.unbind_fd(tgid, fd0) {
                        stream_id = entry.stream;
                        self.release(entry.stream, ts, out);
                    }
                }
                Sys::CloseRange => {
                    let (first, last) = (args[0] as u32, args[1] as u32);
                    let table = self.tables.table_id(tgid);
                    let fds: Vec<i32> = self
                        .tables
                        .table(table)
                        .fds
                        .keys()
                        .copied()
                        .filter(|&fd| fd >= 0 && (fd as u32) >= first && (fd as u32) <= last)
                        .collect();
                    for fd in fds {
                        if args[2] & CLOSE_RANGE_CLOEXEC != 0 {
                            if let Some(e) = self.tables.table_mut(table).fds.get_mut(&fd) {
                                e.cloexec = true;
                            }
                        } else if let Some(entry) = self.unbind_fd(tgid, fd) {
                            self.release(entry.stream, ts, out);
                        }
                    }
                }
                Sys::Fstat | Sys::Newfstatat | Sys::Statx => stream_id = self.stream_for_fd(tgid, fd0, ts, out),
                Sys::Getrandom | Sys::OpensslRand if self.record_random => {
                    random = aux[..aux.len().min(ret as usize)].to_vec()
                }
                Sys::Sysinfo if ret == 0 => random = aux.to_vec(),
                // The time read (a timespec or timeval; `time`'s is its result).
                Sys::ClockGettime | Sys::Gettimeofday if ret == 0 => random = aux.to_vec(),
                Sys::Mkdir | Sys::Mkdirat | Sys::Rename | Sys::Renameat | Sys::Renameat2 | Sys::Link | Sys::Linkat => {
                    named = self.named_paths(tgid, sys, args, aux, ts, out);
                    detail = named.join(" -> ");
                }
                Sys::Lseek => {
                    stream_id = self.stream_for_fd(tgid, fd0, ts, out);
                    if let Some(s) = self.streams.get_mut(&stream_id) {
                        if s.info.kind == proto::StreamKind::File as i32 {
                            s.file_pos = Some(ret as u64);
                        }
                    }
                }
                Sys::Dup => stream_id = self.dup(tgid, fd0, ret as i32, false, ts, out),
                Sys::Dup2 => stream_id = self.dup(tgid, fd0, ret as i32, false, ts, out),
                Sys::Dup3 => stream_id = self.dup(tgid, fd0, ret as i32, args[2] & O_CLOEXEC != 0, ts, out),
                Sys::Fcntl => match args[1] {
                    F_DUPFD | F_DUPFD_CLOEXEC => {
                        stream_id = self.dup(tgid, fd0, ret as i32, args[1] == F_DUPFD_CLOEXEC, ts, out)
                    }
                    F_SETFD => {
                        let table = self.tables.table_id(tgid);
                        if let Some(e) = self.tables.table_mut(table).fds.get_mut(&fd0) {
                            e.cloexec = args[2] & 1 != 0;
                        }
                    }
                    _ => {}
                },
                Sys::Sendfile | Sys::Splice | Sys::CopyFileRange if ret > 0 => {
                    // sendfile(out, in, ..); splice/copy_file_range(in, _, out, ..).
                    let (fd_in, fd_out) =
                        if sys == Sys::Sendfile { (args[1] as i32, fd0) } else { (fd0, args[2] as i32) };
                    let s_in = self.stream_for_fd(tgid, fd_in, ts, out);
                    let s_out = self.stream_for_fd(tgid, fd_out, ts, out);
                    self.gap(s_in, Direction::In, ret as u64, GapReason::InKernelCopy, sys.name(), ts, out);
                    self.gap(s_out, Direction::Out, ret as u64, GapReason::InKernelCopy, sys.name(), ts, out);
                    stream_id = s_out;
                }
                Sys::ExitGroup => {
                    self.exit_codes.insert(tgid, (args[0] & 0xff) as i32);
                }
                s if s.makes_anonymous_fd(args[0]) => {
                    stream_id = self.anonymous_fd(tgid, sys, args, aux, ret as i32, ts, out)
                }
                _ => {}
            }
        }
        // A data call that moved bytes is in the timeline through its Data and Gap records.
        if sys.direction().is_some() && ret > 0 {
            return;
        }
        // One that moved none on a file says where the file ended (a read at the end).
        let file_offset = match sys.direction() {
            Some(_) if ret == 0 => self.file_offset(stream_id, sys, args[3], 0),
            _ => None,
        };
        let is_file = |s: &Stream| s.info.kind == proto::StreamKind::File as i32;
        let (file_size, file_mtime_ns) = match sys {
            Sys::Fstat | Sys::Newfstatat | Sys::Statx if self.streams.get(&stream_id).is_some_and(is_file) => {
                (Some(rec.extra[0] as u64), (rec.extra[1] != i64::MIN).then_some(rec.extra[1]))
            }
            _ => (None, None),
        };
        out.push(record(R::Syscall(proto::Syscall {
            ts_ns: ts,
            pid: tgid,
            tid: rec.hdr.tid,
            name: proto_text::name(sys.name()),
            ret,
            args: args.to_vec(),
            stream_id,
            bytes: rec.bytes,
            detail: if detail.is_empty()
                && !aux.is_empty()
                && sys.direction().is_none()
                && sys != Sys::Getrandom
                && sys != Sys::OpensslRand
                && sys != Sys::Sysinfo
                && sys != Sys::ClockGettime
                && sys != Sys::Gettimeofday
            {
                text(aux)
            } else {
                detail
            },
            file_offset,
            file_size,
            file_mtime_ns,
            paths: named,
            random,
        })));
    }

    /// An fd that names no file or peer (eventfd, memfd, epoll...): a stream named the way
    /// /proc names it, bound with its close-on-exec flag.
    #[allow(clippy::too_many_arguments)]
    fn anonymous_fd(
        &mut self,
        tgid: u32,
        sys: Sys,
        args: [u64; 6],
        aux: &Bytes,
        fd: i32,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        const MFD_CLOEXEC: u64 = 1;
        let (path, cloexec) = match sys {
            Sys::Eventfd => ("anon_inode:[eventfd]".to_owned(), false),
            Sys::Eventfd2 => ("anon_inode:[eventfd]".to_owned(), args[1] & O_CLOEXEC != 0),
            Sys::MemfdCreate => (format!("memfd:{}", text(aux)), args[1] & MFD_CLOEXEC != 0),
            Sys::EpollCreate => ("anon_inode:[eventpoll]".to_owned(), false),
            Sys::EpollCreate1 => ("anon_inode:[eventpoll]".to_owned(), args[0] & O_CLOEXEC != 0),
            Sys::TimerfdCreate => ("anon_inode:[timerfd]".to_owned(), args[1] & O_CLOEXEC != 0),
            Sys::Signalfd => ("anon_inode:[signalfd]".to_owned(), false),
            Sys::Signalfd4 => ("anon_inode:[signalfd]".to_owned(), args[3] & O_CLOEXEC != 0),
            Sys::InotifyInit => ("anon_inode:inotify".to_owned(), false),
            Sys::InotifyInit1 => ("anon_inode:inotify".to_owned(), args[0] & O_CLOEXEC != 0),
            // pidfds are always close-on-exec.
            _ => ("anon_inode:[pidfd]".to_owned(), true),
        };
        let id = procfs::FdIdentity { kind: Kind::Other, path, ..Default::default() };
        let sid = self.new_stream(tgid, fd, &id, sys.name(), false, ts, out);
        self.bind_fd(tgid, fd, sid, cloexec, ts, out);
        sid
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        &mut self,
        tgid: u32,
        dirfd: Option<i32>,
        aux: &Bytes,
        fd: i32,
        flags: u64,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        let path = self.resolve(tgid, dirfd, &text(aux), ts, out);
        if let Some(watch) = &self.tls_watch {
            if crate::capture::tls::is_shared_object(&path) {
                // A library being loaded (dlopen too): it may be a TLS library of its own.
                watch.push(crate::capture::tls::Candidate::File(path.clone().into()));
            }
        }
        let kind = self.path_kind(&path, ts);
        let id = procfs::FdIdentity { kind, path, ..Default::default() };
        let sid = self.new_stream(tgid, fd, &id, "open", false, ts, out);
        if let Some(s) = self.streams.get_mut(&sid) {
            s.append = flags & O_APPEND != 0;
        }
        self.bind_fd(tgid, fd, sid, flags & O_CLOEXEC != 0, ts, out);
        sid
    }

    /// A path as the kernel resolves it: relative to `dirfd` (None or AT_FDCWD: the cwd).
    fn resolve(&mut self, tgid: u32, dirfd: Option<i32>, given: &str, ts: u64, out: &mut Vec<proto::Record>) -> String {
        let base = match dirfd {
            _ if given.starts_with('/') => String::new(),
            Some(d) if d != AT_FDCWD => self.fd_path(tgid, d, ts, out).unwrap_or_else(|| self.cwd_of(tgid)),
            _ => self.cwd_of(tgid),
        };
        paths::absolute(&base, given)
    }

    /// The absolute paths a mkdir, rename or link named: (dirfd, path) pairs as the call gave
    /// them, the second path in the second half of `aux`.
    fn named_paths(
        &mut self,
        tgid: u32,
        sys: Sys,
        args: [u64; 6],
        aux: &Bytes,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> Vec<String> {
        let c_str = |bytes: &[u8]| {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let first = c_str(&aux[..aux.len().min(AUX_SECOND_PATH)]);
        let second = c_str(aux.get(AUX_SECOND_PATH..).unwrap_or_default());
        let at = |i: usize| Some(args[i] as i32);
        let named: Vec<(Option<i32>, String)> = match sys {
            Sys::Mkdir => vec![(None, text(aux))],
            Sys::Mkdirat => vec![(at(0), text(aux))],
            Sys::Rename | Sys::Link => vec![(None, first), (None, second)],
            _ => vec![(at(0), first), (at(2), second)],
        };
        named.into_iter().map(|(dirfd, path)| self.resolve(tgid, dirfd, &path, ts, out)).collect()
    }

    /// A FIFO, a file or directory, or something else (a device), from a stat of the path
    /// made at most `PATH_KIND_TTL_NS` ago.
    fn path_kind(&mut self, path: &str, ts: u64) -> Kind {
        if let Some(&(kind, seen)) = self.path_kinds.get(path) {
            if ts.saturating_sub(seen) < PATH_KIND_TTL_NS {
                return kind;
            }
        }
        let kind = match std::fs::metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => Kind::Pipe,
            Ok(m) if m.is_file() || m.is_dir() => Kind::File,
            Ok(_) => Kind::Other,
            Err(_) => Kind::File,
        };
        if self.path_kinds.len() >= PATH_KINDS_MAX {
            self.path_kinds.clear();
        }
        self.path_kinds.insert(path.to_owned(), (kind, ts));
        kind
    }

    pub(super) fn dup(
        &mut self,
        tgid: u32,
        old: i32,
        new: i32,
        cloexec: bool,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        if old == new {
            return self.stream_for_fd(tgid, old, ts, out);
        }
        let sid = self.stream_for_fd(tgid, old, ts, out);
        self.bind_fd(tgid, new, sid, cloexec, ts, out);
        sid
    }
}
