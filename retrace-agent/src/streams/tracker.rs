//! Turns decoded kernel events into recording records: stream identities, payload at its byte
//! position, gaps for every byte moved but not captured, the syscall timeline, and the process
//! tree. Knows nothing of files on disk or of the CLI.

use std::collections::HashMap;

use bytes::Bytes;
use retrace_common::{
    syscall::{Direction, Sys},
    DataChunk, SyscallRecord, TaskRecord, SYSCALL_HAS_PENDING_LOSS, TASK_GROUP_DEAD,
};

use super::{
    fdtable::{FdEntry, FdTable, FdTables},
    paths, procfs, sockaddr, Kind,
};
use crate::{
    capture::decode::Event,
    store::proto::{self, record::Kind as R, GapReason},
};

const AT_FDCWD: i32 = -100;
const O_CLOEXEC: u64 = 0o2000000;
const SOCK_CLOEXEC: u64 = 0o2000000;
const CLONE_THREAD: u64 = 0x0001_0000;
const CLONE_FILES: u64 = 0x0000_0400;
const CLOSE_RANGE_CLOEXEC: u64 = 4;
const F_DUPFD: u64 = 0;
const F_SETFD: u64 = 2;
const F_DUPFD_CLOEXEC: u64 = 1030;
const EINPROGRESS: i64 = 115;

struct Stream {
    info: proto::StreamInfo,
    refs: u32,
    pos_in: u64,
    pos_out: u64,
}

/// What arrived of a data call whose record has not arrived yet.
#[derive(Default)]
struct PendingCall {
    ts_ns: u64,
    /// Calls of known size are placed on their first chunk: (stream, direction, base), with
    /// the call's byte range reserved in the stream; their payload is written at once.
    placed: Option<(u64, Direction, u64)>,
    /// (offset, length) of the chunks written so far, to find holes.
    spans: Vec<(u64, u64)>,
    /// The call's total bytes, for placed calls.
    total: Option<u64>,
    /// Chunks held until the record (recvmmsg/sendmmsg, whose total is known only then).
    chunks: Vec<(DataChunk, Bytes)>,
    addrs: Vec<(u32, String)>,
}

pub struct Tracker {
    /// Wall clock minus CLOCK_MONOTONIC, in ns.
    clock_offset: i128,
    streams: HashMap<u64, Stream>,
    next_stream: u64,
    tables: FdTables,
    cwd: HashMap<u32, String>,
    pending: HashMap<u32, PendingCall>,
    exit_codes: HashMap<u32, i32>,
    /// Where the stream an fd last named ended, once the fd is closed: the kernel may report
    /// loss for it later (a dropped record's bytes, read from its map at the end).
    closed_fds: HashMap<(u32, i32), ClosedFd>,
    root: u32,
    root_exited: bool,
    /// Lost bytes no stream could be named for.
    pub unattributed_bytes: u64,
    pub totals: Totals,
}

/// What the recording holds, counted as it is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub streams: u64,
    pub recorded_bytes: u64,
    pub lost_bytes: u64,
    pub in_kernel_bytes: u64,
}

impl Tracker {
    pub fn new(root: u32) -> Tracker {
        Tracker {
            clock_offset: clock_offset(),
            streams: HashMap::new(),
            next_stream: 0,
            tables: FdTables::default(),
            cwd: HashMap::new(),
            pending: HashMap::new(),
            exit_codes: HashMap::new(),
            closed_fds: HashMap::new(),
            root,
            root_exited: false,
            unattributed_bytes: 0,
            totals: Totals::default(),
        }
    }

    pub fn root_exited(&self) -> bool {
        self.root_exited
    }

    /// Exit status of a process, as passed to exit_group.
    pub fn exit_code(&self, tgid: u32) -> Option<i32> {
        self.exit_codes.get(&tgid).copied()
    }

    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.clock_offset).max(0) as u64
    }

    /// Records the fds a process already has open, known by path/peer and marked as joined
    /// mid-stream: on attach (`origin` "attach"), and for a launched command held before exec
    /// ("inherited": close-on-exec fds are left out, exec closes them).
    pub fn adopt_open_fds(&mut self, tgid: u32, origin: &str, now_mono_ns: u64, out: &mut Vec<proto::Record>) {
        let table = self.tables.table_id(tgid);
        let ts = self.wall_ns(now_mono_ns);
        for (fd, id) in procfs::open_fds(tgid).unwrap_or_default() {
            if origin == "inherited" && id.cloexec {
                continue;
            }
            let sid = self.new_stream(tgid, fd, &id, origin, true, ts, out);
            if let Some(s) = self.streams.get_mut(&sid) {
                s.refs += 1;
            }
            self.tables.table_mut(table).fds.insert(fd, FdEntry { stream: sid, cloexec: id.cloexec });
        }
    }

    pub fn handle(&mut self, event: Event, out: &mut Vec<proto::Record>) {
        match event {
            Event::Chunk { chunk, payload } => self.chunk(chunk, payload, out),
            Event::DatagramAddr { rec, addr } => {
                let mut call = self.take_pending(rec.hdr.tid, rec.hdr.ts_ns, out);
                if let Some(a) = sockaddr::format(&addr) {
                    call.addrs.push((rec.msg_index, a));
                }
                self.pending.insert(rec.hdr.tid, call);
            }
            Event::Syscall { rec, aux } => self.syscall(&rec, &aux, out),
            Event::TaskNew(rec) => self.task_new(&rec, out),
            Event::TaskExec { rec, path } => self.task_exec(&rec, path, out),
            Event::TaskExit(rec) => self.task_exit(&rec, out),
        }
    }

    /// Loss the kernel could not attach to any record, read from its map at the end.
    pub fn pending_loss(
        &mut self,
        tgid: u32,
        fd: i32,
        bytes_in: u64,
        bytes_out: u64,
        now_mono_ns: u64,
        out: &mut Vec<proto::Record>,
    ) {
        let ts = self.wall_ns(now_mono_ns);
        if let Some(entry) = self.tables.get(tgid, fd) {
            self.gap(entry.stream, Direction::In, bytes_in, GapReason::RecordDropped, "", ts, out);
            self.gap(entry.stream, Direction::Out, bytes_out, GapReason::RecordDropped, "", ts, out);
            return;
        }
        // The fd was closed (or its process exited): the loss belongs at the end of the stream
        // it named then.
        let Some(mut closed) = self.closed_fds.get(&(tgid, fd)).copied() else {
            self.unattributed_bytes += bytes_in + bytes_out;
            return;
        };
        for (dir, len) in [(Direction::In, bytes_in), (Direction::Out, bytes_out)] {
            if len == 0 {
                continue;
            }
            let pos = if dir == Direction::In { &mut closed.pos_in } else { &mut closed.pos_out };
            let offset = *pos;
            *pos += len;
            self.push_gap(
                out,
                proto::Gap {
                    stream_id: closed.stream,
                    direction: dir_proto(dir) as i32,
                    ts_ns: ts,
                    offset,
                    length: len,
                    reason: GapReason::RecordDropped as i32,
                    syscall: String::new(),
                },
            );
        }
        self.closed_fds.insert((tgid, fd), closed);
    }

    fn push_gap(&mut self, out: &mut Vec<proto::Record>, gap: proto::Gap) {
        if gap.reason == GapReason::InKernelCopy as i32 {
            self.totals.in_kernel_bytes += gap.length;
        } else {
            self.totals.lost_bytes += gap.length;
        }
        out.push(record(R::Gap(gap)));
    }

    /// Notes where the stream behind a closing fd ended.
    fn remember_closed(&mut self, tgid: u32, fd: i32, stream: u64) {
        let Some(s) = self.streams.get(&stream) else { return };
        if self.closed_fds.len() >= CLOSED_FDS_MAX {
            self.closed_fds.clear();
        }
        self.closed_fds.insert((tgid, fd), ClosedFd { stream, pos_in: s.pos_in, pos_out: s.pos_out });
    }

    /// The pending call of a thread; a different call still pending there lost its record.
    fn take_pending(&mut self, tid: u32, ts_ns: u64, out: &mut Vec<proto::Record>) -> PendingCall {
        match self.pending.remove(&tid) {
            Some(call) if call.ts_ns == ts_ns => call,
            Some(stale) => {
                self.abandon(stale, out);
                PendingCall { ts_ns, ..Default::default() }
            }
            None => PendingCall { ts_ns, ..Default::default() },
        }
    }

    /// A call whose record was dropped. A placed call's reserved range is completed with gaps
    /// (the kernel counts nothing more for it); held chunks are discarded, as the kernel counted
    /// the whole call as lost.
    fn abandon(&mut self, call: PendingCall, out: &mut Vec<proto::Record>) {
        let Some((sid, dir, base)) = call.placed else { return };
        let Some(total) = call.total else { return };
        let ts = self.wall_ns(call.ts_ns);
        let mut expected = 0u64;
        let mut holes = Vec::new();
        for &(offset, len) in &call.spans {
            if offset > expected {
                holes.push((expected, offset - expected));
            }
            expected = offset + len;
        }
        if total > expected {
            holes.push((expected, total - expected));
        }
        for (offset, len) in holes {
            self.push_gap(
                out,
                proto::Gap {
                    stream_id: sid,
                    direction: dir_proto(dir) as i32,
                    ts_ns: ts,
                    offset: base + offset,
                    length: len,
                    reason: GapReason::RecordDropped as i32,
                    syscall: String::new(),
                },
            );
        }
    }

    /// A payload chunk: written at once when its call's size is known, held otherwise.
    fn chunk(&mut self, chunk: DataChunk, payload: Bytes, out: &mut Vec<proto::Record>) {
        let dir = Sys::from_u32(chunk.sys).and_then(Sys::direction);
        let (tid, ts_ns) = (chunk.hdr.tid, chunk.hdr.ts_ns);
        let mut call = self.take_pending(tid, ts_ns, out);
        match dir {
            Some(dir) if chunk.call_bytes > 0 => {
                let ts = self.wall_ns(ts_ns);
                let (sid, dir, base) = match call.placed {
                    Some(p) => p,
                    None => {
                        let sid = self.stream_for_fd(chunk.hdr.tgid, chunk.fd, ts, out);
                        if let Some((_, first)) = call.addrs.first() {
                            self.learn_peer_if_unset(sid, first, out);
                        }
                        // Earlier calls whose records were dropped came first.
                        let name = Sys::from_u32(chunk.sys).map(Sys::name).unwrap_or("?");
                        self.gap(sid, Direction::In, chunk.lost_before_in, GapReason::RecordDropped, name, ts, out);
                        self.gap(sid, Direction::Out, chunk.lost_before_out, GapReason::RecordDropped, name, ts, out);
                        let base = self.position(sid, dir);
                        self.advance(sid, dir, chunk.call_bytes);
                        call.placed = Some((sid, dir, base));
                        call.total = Some(chunk.call_bytes);
                        (sid, dir, base)
                    }
                };
                call.spans.push((chunk.offset, payload.len() as u64));
                self.totals.recorded_bytes += payload.len() as u64;
                let addr = addr_of(&call.addrs, chunk.msg_index);
                out.push(data_record(sid, dir, ts, &chunk, base + chunk.offset, payload, addr));
            }
            _ => call.chunks.push((chunk, payload)),
        }
        self.pending.insert(tid, call);
    }

    fn syscall(&mut self, rec: &SyscallRecord, aux: &Bytes, out: &mut Vec<proto::Record>) {
        let Some(sys) = Sys::from_u32(rec.sys) else { return };
        let tgid = rec.hdr.tgid;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let call = self.take_pending(rec.hdr.tid, rec.hdr.ts_ns, out);
        let ret = rec.ret;
        let args = rec.args;
        let fd0 = args[0] as i32;
        let mut stream_id = 0;
        let mut detail = String::new();
        if sys.direction().is_some() {
            stream_id = self.stream_for_fd(tgid, fd0, ts, out);
            if let Some((local, peer)) = sockaddr::tuple(&rec.sock) {
                self.fill_addresses(stream_id, local, peer, out);
            }
        }
        let placed = call.placed.is_some();
        if rec.flags & SYSCALL_HAS_PENDING_LOSS != 0 && !placed {
            // Bytes of earlier calls on this fd whose records were dropped: they came first.
            let sid = if stream_id != 0 { stream_id } else { self.stream_for_fd(tgid, fd0, ts, out) };
            self.gap(sid, Direction::In, rec.lost_before_in, GapReason::RecordDropped, sys.name(), ts, out);
            self.gap(sid, Direction::Out, rec.lost_before_out, GapReason::RecordDropped, sys.name(), ts, out);
        }
        if let Some(dir) = sys.direction() {
            self.data(stream_id, dir, sys, rec, call, ts, out);
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
                    // Port 0 is chosen by the kernel: listen reports it.
                    let local = Some(local).filter(|l| !l.ends_with(":0"));
                    self.set_addresses(stream_id, local, None, out);
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
                _ => {}
            }
        }
        // A data call that moved bytes is in the timeline through its Data and Gap records.
        if sys.direction().is_some() && ret > 0 {
            return;
        }
        out.push(record(R::Syscall(proto::Syscall {
            ts_ns: ts,
            pid: tgid,
            tid: rec.hdr.tid,
            name: sys.name().to_owned(),
            ret,
            args: args.to_vec(),
            stream_id,
            bytes: rec.bytes,
            detail: if detail.is_empty() && !aux.is_empty() && sys.direction().is_none() { text(aux) } else { detail },
        })));
    }

    /// Places a data call's held chunks at their stream positions (placed calls are already
    /// written) and turns what is missing into gaps.
    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        sid: u64,
        dir: Direction,
        sys: Sys,
        rec: &SyscallRecord,
        call: PendingCall,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if rec.bytes == 0 {
            return;
        }
        let mut budget = Budget { ring: rec.lost_ring, fault: rec.lost_fault, truncated: rec.truncated };
        let (sid, base, spans) = match call.placed {
            Some((placed_sid, _, base)) => (placed_sid, base, call.spans),
            None => {
                let base = self.position(sid, dir);
                if let Some((_, first)) = call.addrs.first() {
                    self.learn_peer_if_unset(sid, first, out);
                }
                let mut spans = Vec::with_capacity(call.chunks.len());
                for (chunk, payload) in call.chunks {
                    spans.push((chunk.offset, payload.len() as u64));
                    self.totals.recorded_bytes += payload.len() as u64;
                    let addr = addr_of(&call.addrs, chunk.msg_index);
                    out.push(data_record(sid, dir, ts, &chunk, base + chunk.offset, payload, addr));
                }
                self.advance(sid, dir, rec.bytes);
                (sid, base, spans)
            }
        };
        let mut expected = 0u64;
        for (offset, len) in spans {
            if offset > expected {
                self.hole(sid, dir, base + expected, offset - expected, &mut budget, false, sys, ts, out);
            }
            expected = offset + len;
        }
        if rec.bytes > expected {
            self.hole(sid, dir, base + expected, rec.bytes - expected, &mut budget, true, sys, ts, out);
        }
    }

    /// Splits a hole into gaps by reason: truncation sits at the end of a call, ring and fault
    /// losses anywhere.
    #[allow(clippy::too_many_arguments)]
    fn hole(
        &mut self,
        sid: u64,
        dir: Direction,
        mut offset: u64,
        len: u64,
        budget: &mut Budget,
        at_end: bool,
        sys: Sys,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        let order: [(GapReason, &mut u64); 3] = if at_end {
            [
                (GapReason::MaxPayload, &mut budget.truncated),
                (GapReason::RingFull, &mut budget.ring),
                (GapReason::Fault, &mut budget.fault),
            ]
        } else {
            [
                (GapReason::RingFull, &mut budget.ring),
                (GapReason::Fault, &mut budget.fault),
                (GapReason::MaxPayload, &mut budget.truncated),
            ]
        };
        let mut left = len;
        let mut pieces = Vec::new();
        for (reason, avail) in order {
            let n = left.min(*avail);
            if n > 0 {
                *avail -= n;
                left -= n;
                pieces.push((reason, n));
            }
        }
        if left > 0 {
            pieces.push((GapReason::RingFull, left));
        }
        for (reason, n) in pieces {
            self.push_gap(
                out,
                proto::Gap {
                    stream_id: sid,
                    direction: dir_proto(dir) as i32,
                    ts_ns: ts,
                    offset,
                    length: n,
                    reason: reason as i32,
                    syscall: sys.name().to_owned(),
                },
            );
            offset += n;
        }
    }

    /// A gap of `len` bytes at the stream's current position, which it then advances.
    #[allow(clippy::too_many_arguments)]
    fn gap(
        &mut self,
        sid: u64,
        dir: Direction,
        len: u64,
        reason: GapReason,
        syscall: &str,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if len == 0 {
            return;
        }
        let offset = self.position(sid, dir);
        self.push_gap(
            out,
            proto::Gap {
                stream_id: sid,
                direction: dir_proto(dir) as i32,
                ts_ns: ts,
                offset,
                length: len,
                reason: reason as i32,
                syscall: syscall.to_owned(),
            },
        );
        self.advance(sid, dir, len);
    }

    fn position(&self, sid: u64, dir: Direction) -> u64 {
        self.streams.get(&sid).map(|s| if dir == Direction::In { s.pos_in } else { s.pos_out }).unwrap_or(0)
    }

    fn advance(&mut self, sid: u64, dir: Direction, n: u64) {
        if let Some(s) = self.streams.get_mut(&sid) {
            match dir {
                Direction::In => s.pos_in += n,
                Direction::Out => s.pos_out += n,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        tgid: u32,
        dirfd: Option<i32>,
        aux: &Bytes,
        fd: i32,
        flags: u64,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        let given = text(aux);
        let base = match dirfd {
            Some(d) if d != AT_FDCWD && !given.starts_with('/') => {
                self.fd_path(tgid, d, ts, out).unwrap_or_else(|| self.cwd_of(tgid))
            }
            _ => self.cwd_of(tgid),
        };
        let path = paths::absolute(&base, &given);
        let kind = match std::fs::metadata(&path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => Kind::Pipe,
            Ok(m) if m.is_file() || m.is_dir() => Kind::File,
            Ok(_) => Kind::Other,
            Err(_) => Kind::File,
        };
        let id = procfs::FdIdentity { kind, path, ..Default::default() };
        let sid = self.new_stream(tgid, fd, &id, "open", false, ts, out);
        self.bind_fd(tgid, fd, sid, flags & O_CLOEXEC != 0, ts, out);
        sid
    }

    fn dup(&mut self, tgid: u32, old: i32, new: i32, cloexec: bool, ts: u64, out: &mut Vec<proto::Record>) -> u64 {
        if old == new {
            return self.stream_for_fd(tgid, old, ts, out);
        }
        let sid = self.stream_for_fd(tgid, old, ts, out);
        self.bind_fd(tgid, new, sid, cloexec, ts, out);
        sid
    }

    /// Points `fd` at stream `sid`, closing what it pointed at before.
    fn bind_fd(&mut self, tgid: u32, fd: i32, sid: u64, cloexec: bool, ts: u64, out: &mut Vec<proto::Record>) {
        if let Some(old) = self.unbind_fd(tgid, fd) {
            self.release(old.stream, ts, out);
        }
        let table = self.tables.table_id(tgid);
        self.tables.table_mut(table).fds.insert(fd, FdEntry { stream: sid, cloexec });
        if let Some(s) = self.streams.get_mut(&sid) {
            s.refs += 1;
        }
    }

    fn unbind_fd(&mut self, tgid: u32, fd: i32) -> Option<FdEntry> {
        let table = self.tables.table_id(tgid);
        let entry = self.tables.table_mut(table).fds.remove(&fd)?;
        self.remember_closed(tgid, fd, entry.stream);
        Some(entry)
    }

    /// One fd fewer refers to the stream; the last one closes it.
    fn release(&mut self, sid: u64, ts: u64, out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            self.streams.remove(&sid);
            out.push(record(R::Close(proto::StreamClose { stream_id: sid, ts_ns: ts })));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_stream(
        &mut self,
        tgid: u32,
        fd: i32,
        id: &procfs::FdIdentity,
        origin: &str,
        joined: bool,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        self.next_stream += 1;
        self.totals.streams += 1;
        let sid = self.next_stream;
        let info = proto::StreamInfo {
            id: sid,
            kind: id.kind.to_proto() as i32,
            pid: tgid,
            fd,
            path: id.path.clone(),
            local: id.local.clone(),
            peer: id.peer.clone(),
            origin: origin.to_owned(),
            joined_mid_stream: joined,
            position: id.position,
            ts_ns: ts,
            listening: id.listening,
        };
        out.push(record(R::Stream(info.clone())));
        // Joined streams count from the file position, so offsets stay true file offsets.
        let pos = if joined && id.kind == Kind::File { id.position } else { 0 };
        self.streams.insert(sid, Stream { info, refs: 0, pos_in: pos, pos_out: pos });
        sid
    }

    /// The stream behind an fd; an fd we never saw opened (inherited, or opened before attach)
    /// is looked up in /proc now and marked as joined mid-stream.
    fn stream_for_fd(&mut self, tgid: u32, fd: i32, ts: u64, out: &mut Vec<proto::Record>) -> u64 {
        if let Some(entry) = self.tables.get(tgid, fd) {
            return entry.stream;
        }
        let id = procfs::resolve(tgid, fd).unwrap_or_else(|| procfs::FdIdentity {
            kind: Kind::Other,
            path: format!("fd {fd} (closed before it could be identified)"),
            ..Default::default()
        });
        let cloexec = id.cloexec;
        let sid = self.new_stream(tgid, fd, &id, "inherited", true, ts, out);
        self.bind_fd(tgid, fd, sid, cloexec, ts, out);
        sid
    }

    fn fd_path(&mut self, tgid: u32, fd: i32, ts: u64, out: &mut Vec<proto::Record>) -> Option<String> {
        let sid = self.stream_for_fd(tgid, fd, ts, out);
        self.streams.get(&sid).map(|s| s.info.path.clone()).filter(|p| p.starts_with('/'))
    }

    fn cwd_of(&mut self, tgid: u32) -> String {
        self.cwd.entry(tgid).or_insert_with(|| procfs::cwd(tgid).unwrap_or_else(|| "/".into())).clone()
    }

    /// Sets the addresses a syscall or the kernel reported, and writes the updated identity.
    fn set_addresses(&mut self, sid: u64, local: Option<String>, peer: Option<String>, out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if let Some(peer) = peer.filter(|p| !p.is_empty()) {
            s.info.peer = peer;
        }
        if let Some(local) = local.filter(|l| !l.is_empty()) {
            s.info.local = local;
        }
        out.push(record(R::Stream(s.info.clone())));
    }

    /// Fills in addresses a socket's stream does not have yet (accepted without asking for
    /// the peer, connected before the kernel chose the port) from what the kernel reported.
    fn fill_addresses(&mut self, sid: u64, local: String, peer: String, out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if !matches!(s.info.kind(), proto::StreamKind::Tcp | proto::StreamKind::Udp) {
            return;
        }
        let mut changed = false;
        if !local.is_empty() && (s.info.local.is_empty() || s.info.local.ends_with(":0")) && s.info.local != local {
            s.info.local = local;
            changed = true;
        }
        if !peer.is_empty() && s.info.peer.is_empty() {
            s.info.peer = peer;
            changed = true;
        }
        if changed {
            out.push(record(R::Stream(s.info.clone())));
        }
    }

    /// The live socket's local address, if `check` accepts what the live fd is now (the agent
    /// runs behind the process, and the fd number may already name another socket).
    fn live_local_if(
        &self,
        tgid: u32,
        fd: i32,
        sid: u64,
        check: impl Fn(&procfs::FdIdentity) -> bool,
    ) -> Option<String> {
        let kind = self.streams.get(&sid)?.info.kind();
        if kind != proto::StreamKind::Udp && kind != proto::StreamKind::Tcp {
            return None;
        }
        let mut live = procfs::FdIdentity::default();
        procfs::socket_identity(tgid, fd, &mut live);
        (check(&live) && !live.local.is_empty()).then_some(live.local)
    }

    fn learn_peer_if_unset(&mut self, sid: u64, peer: &str, out: &mut Vec<proto::Record>) {
        if let Some(s) = self.streams.get_mut(&sid) {
            if s.info.peer.is_empty() {
                s.info.peer = peer.to_owned();
                out.push(record(R::Stream(s.info.clone())));
            }
        }
    }

    fn task_new(&mut self, rec: &TaskRecord, out: &mut Vec<proto::Record>) {
        let parent = rec.hdr.tgid;
        let child = rec.pid as u32;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let thread = rec.clone_flags & CLONE_THREAD != 0;
        if !thread {
            let parent_table = self.tables.table_id(parent);
            if rec.clone_flags & CLONE_FILES != 0 {
                self.tables.attach(child, parent_table);
            } else {
                let copy = FdTable { fds: self.tables.table(parent_table).fds.clone(), users: 0 };
                for entry in copy.fds.values() {
                    if let Some(s) = self.streams.get_mut(&entry.stream) {
                        s.refs += 1;
                    }
                }
                let id = self.tables.new_table(copy);
                self.tables.attach(child, id);
            }
            let cwd = self.cwd_of(parent);
            self.cwd.insert(child, cwd);
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: if thread { "thread" } else { "fork" }.to_owned(),
            pid: parent,
            tid: rec.hdr.tid,
            child,
            clone_flags: rec.clone_flags,
            ..Default::default()
        })));
    }

    fn task_exec(&mut self, rec: &TaskRecord, path: String, out: &mut Vec<proto::Record>) {
        let tgid = rec.hdr.tgid;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        if self.tables.has_process(tgid) {
            // exec unshares the fd table, then closes the close-on-exec fds.
            let table = self.tables.table_id(tgid);
            let fds = self.tables.table(table).fds.clone();
            let shared = self.tables.table(table).users > 1;
            if shared {
                for entry in fds.values() {
                    if let Some(s) = self.streams.get_mut(&entry.stream) {
                        s.refs += 1;
                    }
                }
                let _ = self.tables.detach(tgid);
                let id = self.tables.new_table(FdTable { fds: fds.clone(), users: 0 });
                self.tables.attach(tgid, id);
            }
            for (fd, entry) in fds {
                if entry.cloexec {
                    if let Some(entry) = self.unbind_fd(tgid, fd) {
                        self.release(entry.stream, ts, out);
                    }
                }
            }
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: "exec".to_owned(),
            pid: tgid,
            tid: rec.hdr.tid,
            path,
            ..Default::default()
        })));
    }

    fn task_exit(&mut self, rec: &TaskRecord, out: &mut Vec<proto::Record>) {
        let tgid = rec.hdr.tgid;
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let group_dead = rec.flags & TASK_GROUP_DEAD != 0;
        if group_dead {
            for (fd, entry) in self.tables.detach(tgid) {
                self.remember_closed(tgid, fd, entry.stream);
                self.release(entry.stream, ts, out);
            }
            if tgid == self.root {
                self.root_exited = true;
            }
        }
        out.push(record(R::Process(proto::Process {
            ts_ns: ts,
            event: if group_dead { "exit" } else { "thread_exit" }.to_owned(),
            pid: tgid,
            tid: rec.hdr.tid,
            exit_status: if group_dead { self.exit_codes.get(&tgid).copied().unwrap_or(-1) } else { 0 },
            ..Default::default()
        })));
    }

    /// Closes every stream still open (end of recording), so every stream has an end.
    pub fn finish(&mut self, now_mono_ns: u64, out: &mut Vec<proto::Record>) {
        let pending: Vec<PendingCall> = self.pending.drain().map(|(_, call)| call).collect();
        for call in pending {
            self.abandon(call, out);
        }
        let ts = self.wall_ns(now_mono_ns);
        let mut ids: Vec<u64> = self.streams.keys().copied().collect();
        ids.sort();
        for sid in ids {
            self.streams.remove(&sid);
            out.push(record(R::Close(proto::StreamClose { stream_id: sid, ts_ns: ts })));
        }
    }
}

#[derive(Clone, Copy)]
struct ClosedFd {
    stream: u64,
    pos_in: u64,
    pos_out: u64,
}

/// Bound on remembered closed fds (a long recording opens many).
const CLOSED_FDS_MAX: usize = 1 << 16;

struct Budget {
    ring: u64,
    fault: u64,
    truncated: u64,
}

fn addr_of(addrs: &[(u32, String)], index: u32) -> String {
    addrs.iter().find(|(i, _)| *i == index).map(|(_, a)| a.clone()).unwrap_or_default()
}

fn data_record(
    sid: u64,
    dir: Direction,
    ts: u64,
    chunk: &DataChunk,
    offset: u64,
    payload: Bytes,
    addr: String,
) -> proto::Record {
    record(R::Data(proto::Data {
        stream_id: sid,
        direction: dir_proto(dir) as i32,
        ts_ns: ts,
        pid: chunk.hdr.tgid,
        tid: chunk.hdr.tid,
        syscall: Sys::from_u32(chunk.sys).map(Sys::name).unwrap_or("?").to_owned(),
        offset,
        payload,
        msg_index: chunk.msg_index,
        addr,
    }))
}

fn record(kind: R) -> proto::Record {
    proto::Record { kind: Some(kind) }
}

fn text(aux: &Bytes) -> String {
    String::from_utf8_lossy(aux).trim_end_matches('\0').to_owned()
}

fn dir_proto(dir: Direction) -> proto::Direction {
    match dir {
        Direction::In => proto::Direction::In,
        Direction::Out => proto::Direction::Out,
    }
}

fn from_proto(kind: proto::StreamKind) -> Kind {
    match kind {
        proto::StreamKind::File => Kind::File,
        proto::StreamKind::Tcp => Kind::Tcp,
        proto::StreamKind::Udp => Kind::Udp,
        proto::StreamKind::Unix => Kind::Unix,
        proto::StreamKind::Pipe => Kind::Pipe,
        _ => Kind::Other,
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now.
fn clock_offset() -> i128 {
    let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).expect("realtime clock");
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    ns(real) - ns(mono)
}

/// CLOCK_MONOTONIC now, in ns (the kernel's timestamps' clock).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
