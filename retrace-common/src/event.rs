//! Ring-buffer records.

/// Record kinds (the first field of every record). Never reuse a number.
pub mod kind {
    /// [`super::DataChunk`] followed by `len` payload bytes.
    pub const DATA_CHUNK: u32 = 1;
    /// [`super::SyscallRecord`] followed by `aux_len` bytes (a path or a socket address).
    pub const SYSCALL: u32 = 2;
    /// [`super::TaskRecord`]: a new thread or process.
    pub const TASK_NEW: u32 = 3;
    /// [`super::TaskRecord`] followed by the new program's path.
    pub const TASK_EXEC: u32 = 4;
    /// [`super::TaskRecord`]: a thread exited (`flags` has [`super::TASK_GROUP_DEAD`] for the last).
    pub const TASK_EXIT: u32 = 5;
    /// [`super::DatagramAddr`] followed by `len` bytes of socket address.
    pub const DATAGRAM_ADDR: u32 = 6;
    /// [`super::SyscallRecord`] of a data call followed by its payload, `len` bytes from offset
    /// 0 (`captured` of them): a call on one buffer whose payload fits one chunk travels as one
    /// record instead of a [`DATA_CHUNK`] and a [`SYSCALL`].
    pub const DATA_CALL: u32 = 7;
    /// A [`DATA_CALL`] on two iovecs (readv/writev of a header and a body): `extra[0]` payload
    /// bytes from offset 0, then the rest of `captured` from offset `extra[1]`; `len` covers
    /// both. Each piece sits in a reservation class of its own, since the verifier must see a
    /// constant offset for the second copy.
    pub const DATA_CALL_SPLIT: u32 = 8;
}

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub kind: u32,
    /// Bytes that follow the fixed-size struct (payload, path or address).
    pub len: u32,
    /// CLOCK_MONOTONIC nanoseconds when the syscall returned; shared by a call's records.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
}

/// A slice of a data syscall's payload. The chunks of one call come before its [`SyscallRecord`],
/// from the same thread, in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataChunk {
    pub hdr: Header,
    /// Byte offset of this slice within everything the call moved (all messages, all iovecs).
    pub offset: u64,
    /// Message index for recvmmsg/sendmmsg, else 0.
    pub msg_index: u32,
    pub fd: i32,
    /// Payload bytes the whole call moved, when known before the walk (0 for recvmmsg and
    /// sendmmsg): lets the agent place chunks without holding the call's payload.
    pub call_bytes: u64,
    /// [`crate::syscall::Sys`] number.
    pub sys: u32,
    /// [`FD_REOPENED`], as on the call's record.
    pub flags: u32,
    /// Bytes of earlier calls on this fd whose records were dropped: they come before this
    /// call in the stream (the same values as the call's record).
    pub lost_before_in: u64,
    pub lost_before_out: u64,
    /// The call's fourth argument: the file offset of pread64, pwrite64, preadv, pwritev,
    /// preadv2 and pwritev2 (the agent reads it for those only).
    pub position_arg: u64,
}

/// A datagram's address (msg_name / sendto dest / recvfrom src), before the call's chunks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DatagramAddr {
    pub hdr: Header,
    pub msg_index: u32,
    pub _pad: u32,
}

/// Flags of [`SyscallRecord::flags`].
pub const SYSCALL_DATA: u32 = 1 << 0;
/// Bytes of this call were lost before it (ring full, record dropped): see `lost_before_*`.
pub const SYSCALL_HAS_PENDING_LOSS: u32 = 1 << 1;
/// A record that changed what this call's fd refers to (open, close, dup, ...) was dropped
/// since the fd's last record: the agent no longer knows what it is. On records and chunks.
pub const FD_REOPENED: u32 = 1 << 2;
/// The call's truncation (`truncated`) is its capture's rate cap, not `--max-payload`.
pub const SYSCALL_RATE_LIMITED: u32 = 1 << 3;

/// One finished syscall of a traced task: its arguments, result and, for data calls, the byte
/// accounting `bytes == captured + lost_ring + lost_fault + truncated`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallRecord {
    pub hdr: Header,
    /// [`crate::syscall::Sys`] number.
    pub sys: u32,
    pub flags: u32,
    pub ret: i64,
    pub args: [u64; 6],
    /// Payload bytes the call moved (for recvmmsg/sendmmsg, the sum of all messages).
    pub bytes: u64,
    pub captured: u64,
    /// Not captured because the ring buffer was full.
    pub lost_ring: u64,
    /// Not captured because user memory could not be read.
    pub lost_fault: u64,
    /// Not captured because of `--max-payload`.
    pub truncated: u64,
    /// Extra results read after return: pipe/socketpair fds, accepted address length, etc.
    pub extra: [i64; 2],
    /// Bytes of earlier calls on this (tgid, fd) whose records were dropped (see `PENDING_LOSS`).
    pub lost_before_in: u64,
    pub lost_before_out: u64,
    /// connect/listen on TCP: the addresses the kernel chose (`inet_sock_set_state`), else zero.
    pub sock: SockTuple,
}

/// A TCP socket's addresses as the kernel reported them on a state change, ports in host
/// order; `family` 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockTuple {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// A task event from the scheduler tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskRecord {
    pub hdr: Header,
    /// TASK_NEW: the new task's id; TASK_EXEC: the old pid; TASK_EXIT: exit status if known.
    pub pid: i32,
    pub flags: u32,
    /// TASK_NEW: clone flags.
    pub clone_flags: u64,
    /// TASK_EXEC: the program's key in `LOOKED_AT` (FNV-1a of up to 256 bytes of its path).
    pub program: u64,
}

pub const TASK_GROUP_DEAD: u32 = 1;
/// TASK_EXEC: the process was not followed; it joins the recording at this exec because it
/// runs in a recorded cgroup.
pub const TASK_JOINED: u32 = 2;
/// TASK_EXEC: the process is held (stopped, listed in `PAUSED` as `PAUSED_FOR_EXEC`) until the
/// agent has looked at its program for uprobes (statically linked TLS and random functions):
/// their first calls come before the agent could otherwise see the exec.
pub const TASK_HELD: u32 = 4;
/// `PAUSED`'s value for a process held at exec (backpressure's is 1).
pub const PAUSED_FOR_EXEC: u32 = 2;
/// How many cgroups one probe set can record (`CGROUPS`).
pub const MAX_CGROUPS: u32 = 1024;
/// How many captures may have a rate cap (`RATES`).
pub const MAX_RATED_CAPTURES: u32 = 256;

/// A capture's payload rate cap in the kernel (`RATES`, by capture id): a token bucket of
/// bytes, refilled at `rate` bytes a second up to `burst`. Payload beyond it is not copied:
/// it is counted as truncated (`SYSCALL_RATE_LIMITED`) and becomes a gap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RateBucket {
    pub tokens: u64,
    pub last_ns: u64,
    pub rate: u64,
    pub burst: u64,
}

/// Key of the kernel's `PENDING_LOSS` map: payload lost together with its syscall record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: i32,
}

/// A TLS session of a process: key of `TLS_FD` and `TLS_PENDING` (the library's session
/// pointer, `SSL *` or `gnutls_session_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    pub session: u64,
}

/// Value of `PENDING_LOSS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingLoss {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub calls: u64,
    /// Dropped records that changed what the fd refers to (see [`FD_REOPENED`]).
    pub reopened: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FdKey {}
    unsafe impl aya::Pod for PendingLoss {}
    unsafe impl aya::Pod for TlsKey {}
    unsafe impl aya::Pod for RateBucket {}
}

pub const HEADER_SIZE: usize = core::mem::size_of::<Header>();
pub const DATA_CHUNK_SIZE: usize = core::mem::size_of::<DataChunk>();
pub const SYSCALL_RECORD_SIZE: usize = core::mem::size_of::<SyscallRecord>();
pub const TASK_RECORD_SIZE: usize = core::mem::size_of::<TaskRecord>();
pub const DATAGRAM_ADDR_SIZE: usize = core::mem::size_of::<DatagramAddr>();

const _: () = assert!(HEADER_SIZE == 24);
const _: () = assert!(DATA_CHUNK_SIZE == 80);
const _: () = assert!(SYSCALL_RECORD_SIZE == 24 + 8 + 8 + 48 + 40 + 16 + 16 + 40);
