//! Every map and run-time knob of the eBPF programs.

use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use retrace_common::{
    config::{stat, TRACED_WORDS},
    FdKey, PendingLoss, SockTuple,
};

use crate::{copy::Copy, emit::Scratch};

/// Every record for user space. Sized by the agent at load time (`--ring-buffer`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Thread-group ids being traced, one bit each (`TRACED_WORDS`). The agent seeds it through a
/// shared mapping; fork of a traced process sets the child's bit, its end clears it. Every
/// syscall of every process on the machine asks it: an array lookup, which the verifier inlines,
/// where a hash lookup cost ~20 ns per syscall.
#[map]
pub static TRACED: Array<u64> = Array::with_max_entries(TRACED_WORDS, BPF_F_MMAPABLE);

/// Kernel-side counters (see `retrace_common::config::stat`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Payload lost together with its syscall record, per (tgid, fd): handed to the next record
/// for the same fd that gets through, or read by the agent at the end.
#[map]
pub static PENDING_LOSS: HashMap<FdKey, PendingLoss> = HashMap::with_max_entries(4096, 0);

/// Set to 1 once anything was added to `PENDING_LOSS`, so the common path skips the lookup.
#[map]
pub static PENDING_ANY: Array<u64> = Array::with_max_entries(1, 0);

/// The `sys_exit_*` program of each syscall number, filled by the agent.
#[map]
pub static SYSCALL_EXITS: ProgramArray = ProgramArray::with_max_entries(512, 0);

/// TCP addresses by `struct sock *`, from every state change on the machine (the passive side
/// of a connection becomes ESTABLISHED in softirq context, outside any traced task).
#[map]
pub static SK_TUPLES: LruHashMap<u64, SockTuple> = LruHashMap::with_max_entries(65536, 0);

/// The socket the current syscall on this CPU used (`sock_send_length`, `sock_recv_length`, or
/// a connect/listen state change), tagged with the thread: the syscall's record takes it. A
/// per-CPU slot instead of a map keyed by thread, because these hooks run for every socket call
/// on the machine; a thread that migrates in between just finds another tag.
#[map]
pub static SK_OF_CALL: PerCpuArray<SkSlot> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SkSlot {
    pub tid: u32,
    pub _pad: u32,
    pub sk: u64,
}

/// Sockets whose addresses were already reported to the agent.
#[map]
pub static SK_REPORTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// The payload copier's loop state (see `copy.rs`).
#[map]
pub static COPY_STATE: PerCpuArray<Copy> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU buffer where variable-length records (paths, addresses) are assembled.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-syscall payload cap in bytes; 0 means no cap. Set by the agent before load.
#[unsafe(no_mangle)]
pub static MAX_PAYLOAD: u64 = 0;

/// `EVENTS`' size in bytes, set by the agent before load (0: ask the ring), so each record
/// asks the ring one question (its fill level) instead of two.
#[unsafe(no_mangle)]
pub static RING_SIZE: u64 = 0;

/// Non-zero: pause a traced process (SIGSTOP) when the ring buffer is half full instead of
/// letting it fill; the agent resumes it once it has drained the ring. Set before load.
#[unsafe(no_mangle)]
pub static BACKPRESSURE: u64 = 0;

/// Non-zero: hold a traced process at exec (SIGSTOP) until the agent has looked at its
/// program for uprobes, unless `LOOKED_AT` has the program already. Set before load.
#[unsafe(no_mangle)]
pub static HOLD_EXECS: u64 = 0;

/// Non-zero (with `HOLD_EXECS`): hold every exec, looked-at program or not, so that the agent
/// patches each new image's vDSO (wall-clock reads become recorded system calls). Set before
/// load.
#[unsafe(no_mangle)]
pub static HOLD_EVERY_EXEC: u64 = 0;

/// Processes a setpgid moved into a process group apart from their parent's (a job-control
/// shell's jobs): not held at exec, since their parent waits with WUNTRACED and would take the
/// stop for the user's ^Z. Cleared when the process exits.
#[map]
pub static OWN_GROUP: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Programs the agent has looked at for uprobes, by the hash of their path (`TaskRecord::program`).
#[map]
pub static LOOKED_AT: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

/// Processes paused and not resumed yet: by backpressure (tgid -> 1), the agent sends each a
/// SIGCONT after draining, and before it exits; held at exec (tgid -> `PAUSED_FOR_EXEC`),
/// once it has looked at the program.
#[map]
pub static PAUSED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn hold_execs() -> bool {
    unsafe { core::ptr::read_volatile(&HOLD_EXECS) != 0 }
}

#[inline(always)]
pub fn hold_every_exec() -> bool {
    unsafe { core::ptr::read_volatile(&HOLD_EVERY_EXEC) != 0 }
}

#[inline(always)]
pub fn backpressure() -> bool {
    unsafe { core::ptr::read_volatile(&BACKPRESSURE) != 0 }
}

#[inline(always)]
pub fn count(index: u32, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        unsafe { *slot += n };
    }
}

#[inline(always)]
pub fn ring_size() -> u64 {
    match unsafe { core::ptr::read_volatile(&RING_SIZE) } {
        0 => EVENTS.query(aya_ebpf::bindings::BPF_RB_RING_SIZE as u64),
        size => size,
    }
}

#[inline(always)]
pub fn max_payload() -> u64 {
    unsafe { core::ptr::read_volatile(&MAX_PAYLOAD) }
}

/// An OpenSSL RAND call in progress per thread (pid_tgid): where its bytes go, how many, and
/// how deep (RAND_bytes calls RAND_bytes_ex: only the outermost is recorded).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RandCall {
    pub buf: u64,
    pub num: u64,
    pub depth: u32,
    pub _pad: u32,
}

#[map]
pub static RAND_CALLS: LruHashMap<u64, RandCall> = LruHashMap::with_max_entries(4096, 0);

/// Recorded cgroups (cgroup v2 ids): a process that execs in one of them, or in a cgroup below
/// one, joins the recording. Value: nonzero.
#[map]
pub static CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(retrace_common::MAX_CGROUPS, 0);

/// Word 0 is nonzero once `CGROUPS` holds any: other processes' execs then skip the lookups.
#[map]
pub static CGROUPS_ANY: Array<u32> = Array::with_max_entries(1, 0);

/// Which capture a process belongs to (node agent, only where a capture has a rate cap to
/// charge): set by user space for the processes a capture starts with, by the kernel for
/// processes that join at exec and for the children of members; cleared at exit.
#[map]
pub static CAPTURE_OF: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// Captures' payload rate caps (see `RateBucket`).
#[map]
pub static RATES: HashMap<u32, retrace_common::RateBucket> =
    HashMap::with_max_entries(retrace_common::MAX_RATED_CAPTURES, 0);

/// Word 0 is nonzero once `RATES` holds any: without it a data call looks nothing up.
#[map]
pub static RATES_ANY: Array<u32> = Array::with_max_entries(1, 0);

/// How many of a call's `moved` payload bytes it keeps: `--max-payload`, then its capture's
/// rate cap (charged here). Whether the rate cap cut it.
#[inline(always)]
pub fn payload_kept(tgid: u32, ts_ns: u64, moved: u64) -> (u64, bool) {
    let cap = max_payload();
    let kept = if cap != 0 && cap < moved { cap } else { moved };
    if RATES_ANY.get(0).is_none_or(|any| *any == 0) {
        return (kept, false);
    }
    // SAFETY: map lookups; the bucket is this capture's, updated in place (a race between
    // CPUs can grant a little more than the cap, never lose track of what was kept).
    let Some(capture) = (unsafe { CAPTURE_OF.get(&tgid) }) else { return (kept, false) };
    let Some(bucket) = RATES.get_ptr_mut(capture) else { return (kept, false) };
    let b = unsafe { &mut *bucket };
    let elapsed = if ts_ns > b.last_ns { ts_ns - b.last_ns } else { 0 };
    // At most a second's refill: elapsed × rate stays within 64 bits for rates below 16 GB/s.
    let elapsed = if elapsed > 1_000_000_000 { 1_000_000_000 } else { elapsed };
    let add = elapsed * b.rate / 1_000_000_000;
    if add > 0 {
        let tokens = b.tokens + add;
        b.tokens = if tokens > b.burst { b.burst } else { tokens };
        b.last_ns = ts_ns;
    }
    let grant = if kept < b.tokens { kept } else { b.tokens };
    b.tokens -= grant;
    (grant, grant < kept)
}

/// A TLS library call in progress per thread (pid_tgid): see `probes/tls.rs`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The session (`SSL *`, `gnutls_session_t`).
    pub session: u64,
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library writes the byte count (the call
    /// returns 1 for success); 0 when the return value is the count.
    pub count_ptr: u64,
    pub sys: u32,
    /// The socket the library's nested syscall used, -1 until one did.
    pub fd: i32,
    /// Nested library calls on the thread (`SSL_read` → `SSL_read_ex`): only the outermost is
    /// recorded.
    pub depth: u32,
    /// The return value is a C `int` (OpenSSL) rather than an `ssize_t` (GnuTLS).
    pub ret_is_int: u32,
    /// When the call began: a write's bytes are recorded at this time, since they may be on
    /// the wire long before the call returns (a Go goroutine can be descheduled between its
    /// `write` system call and its return while another reads the answer).
    pub entered_ns: u64,
}

#[map]
pub static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Go's crypto/tls calls in progress, per goroutine (`TlsKey` with the `g` pointer as its
/// session): a goroutine may move to another thread between entry and return.
#[map]
pub static GO_TLS_CALLS: LruHashMap<retrace_common::TlsKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The socket each TLS session last used: a read served from the library's buffer makes no
/// syscall to learn it from.
#[map]
pub static TLS_FD: LruHashMap<retrace_common::TlsKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// Plaintext lost with its TLS record (the ring was full), per session: carried by the
/// session's next record, or read by the agent at the end (like `PENDING_LOSS` for fds).
#[map]
pub static TLS_PENDING: LruHashMap<retrace_common::TlsKey, PendingLoss> = LruHashMap::with_max_entries(4096, 0);

/// Nonzero once any TLS call started: the data syscalls then ask `TLS_CALLS` whether they
/// run inside one.
#[map]
pub static TLS_ANY: Array<u32> = Array::with_max_entries(1, 0);

/// The payload copier's state for a large TLS call, per thread (uprobe programs may be
/// preempted: a per-CPU slot could be taken over meanwhile).
#[map]
pub static TLS_COPY: LruHashMap<u64, Copy> = LruHashMap::with_max_entries(1024, 0);
