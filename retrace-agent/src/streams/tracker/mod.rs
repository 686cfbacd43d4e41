//! Turns decoded kernel events into recording records: stream identities, payload at its byte
//! position, gaps for every byte moved but not captured, the syscall timeline, and the process
//! tree. Knows nothing of files on disk or of the CLI.
//!
//! One file per concern: `data` (payload placement, gaps, loss), `syscalls` (what each syscall
//! does to streams), `fds` (fd tables and stream identities), `process` (fork, exec, exit).

mod data;
mod fds;
mod process;
mod syscalls;
mod tls;

use crate::FastMap as HashMap;

use bytes::Bytes;
use retrace_common::{
    syscall::{Direction, Sys},
    DataChunk,
};

use super::{
    fdtable::{FdEntry, FdTable, FdTables},
    paths, procfs, sockaddr, Kind,
};
use crate::{
    capture::decode::Event,
    store::{
        proto::{self, record::Kind as R, GapReason},
        proto_text,
    },
};

const AT_FDCWD: i32 = -100;
const O_CLOEXEC: u64 = 0o2000000;
const O_APPEND: u64 = 0o2000;
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
    /// A file's position (the open file description's, shared through dup and fork), while
    /// known.
    file_pos: Option<u64>,
    /// Opened with O_APPEND: every write goes to the end, wherever that is.
    append: bool,
    /// TLS handshake details (see `tls.rs`).
    hello: tls::HelloState,
    /// A socket that carried a TLS stream: closing it closes that too.
    has_tls: bool,
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
    /// The file offset of a placed call's first byte, on a file stream.
    file_offset: Option<u64>,
    /// Chunks held until the record (recvmmsg/sendmmsg, whose total is known only then).
    chunks: Vec<(DataChunk, Bytes)>,
    addrs: Vec<(u32, String)>,
}

pub struct Tracker {
    /// Wall clock minus CLOCK_MONOTONIC, in ns.
    clock_offset: i128,
    /// Whether what getrandom returned is kept (the capture allowlist may leave it out).
    pub record_random: bool,
    streams: HashMap<u64, Stream>,
    next_stream: u64,
    /// Programs and shared objects for the TLS probes to look at.
    pub tls_watch: Option<crate::capture::tls::Watch>,
    /// The TLS stream of each (process, library session).
    tls_sessions: HashMap<(u32, u64), u64>,
    /// Socket streams whose first bytes were a TLS handshake, not yet tied to a TLS stream:
    /// (process, stream), oldest first.
    handshakes: Vec<(u32, u64)>,
    tables: FdTables,
    cwd: HashMap<u32, String>,
    pending: HashMap<u32, PendingCall>,
    exit_codes: HashMap<u32, i32>,
    /// Where the stream an fd last named ended, once the fd is closed: the kernel may report
    /// loss for it later (a dropped record's bytes, read from its map at the end).
    closed_fds: HashMap<(u32, i32), ClosedFd>,
    /// What kind of file each recently opened path was, and when it was looked at (kernel ns):
    /// a server opening the same file per request would otherwise cost a stat per open.
    path_kinds: HashMap<String, (Kind, u64)>,
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
            record_random: true,
            clock_offset: clock_offset(),
            streams: HashMap::default(),
            next_stream: 0,
            tls_sessions: HashMap::default(),
            handshakes: Vec::new(),
            tls_watch: None,
            tables: FdTables::default(),
            cwd: HashMap::default(),
            pending: HashMap::default(),
            exit_codes: HashMap::default(),
            closed_fds: HashMap::default(),
            path_kinds: HashMap::default(),
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
            Event::DataCall { rec, payload } => self.data_call(&rec, payload, out),
            Event::TaskNew(rec) => self.task_new(&rec, out),
            Event::TaskExec { rec, path, at_random } => self.task_exec(&rec, path, at_random, out),
            Event::TaskExit(rec) => self.task_exit(&rec, out),
        }
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
    /// The truncation is the capture's rate cap (`SYSCALL_RATE_LIMITED`), not --max-payload.
    rate_limited: bool,
}

impl Budget {
    fn of(rec: &retrace_common::SyscallRecord) -> Budget {
        Budget {
            ring: rec.lost_ring,
            fault: rec.lost_fault,
            truncated: rec.truncated,
            rate_limited: rec.flags & retrace_common::SYSCALL_RATE_LIMITED != 0,
        }
    }
}

fn addr_of(addrs: &[(u32, String)], index: u32) -> String {
    addrs.iter().find(|(i, _)| *i == index).map(|(_, a)| a.clone()).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn data_record(
    sid: u64,
    dir: Direction,
    ts: u64,
    chunk: &DataChunk,
    offset: u64,
    file_offset: Option<u64>,
    payload: Bytes,
    addr: String,
) -> proto::Record {
    record(R::Data(proto::Data {
        stream_id: sid,
        direction: dir_proto(dir) as i32,
        ts_ns: ts,
        pid: chunk.hdr.tgid,
        tid: chunk.hdr.tid,
        syscall: proto_text::name(Sys::from_u32(chunk.sys).map(Sys::name).unwrap_or("?")),
        offset,
        payload,
        msg_index: chunk.msg_index,
        addr,
        redactions: Vec::new(),
        file_offset,
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
        proto::StreamKind::Tls => Kind::Tls,
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
