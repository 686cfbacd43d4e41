//! Writing syscall and task records. Variable-length records are assembled in a per-CPU
//! scratch buffer and copied into the ring with one `bpf_ringbuf_output`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{
            bpf_probe_read_user as raw_read_user, bpf_ringbuf_discard, bpf_ringbuf_output, bpf_ringbuf_reserve,
            bpf_ringbuf_submit, bpf_send_signal_thread,
        },
    },
};
use retrace_common::{
    config::{stat, AUX_MAX, AUX_SECOND_PATH, SOCKADDR_MAX},
    kind,
    syscall::Sys,
    FdKey, Header, PendingLoss, SockTuple, SyscallRecord, TaskRecord, FD_REOPENED, PAUSED_FOR_EXEC, SYSCALL_DATA,
    SYSCALL_HAS_PENDING_LOSS, SYSCALL_RATE_LIMITED, SYSCALL_RECORD_SIZE, TASK_HELD, TASK_RECORD_SIZE,
};

use crate::{
    call::Call,
    maps::{
        backpressure, count, hold_every_exec, hold_execs, ring_size, EVENTS, LOOKED_AT, OWN_GROUP, PAUSED, PENDING_ANY,
        PENDING_LOSS, SCRATCH, SK_OF_CALL, SK_REPORTED, SK_TUPLES,
    },
};

const SIGSTOP: u32 = 19;
const SIGCONT: u32 = 18;

/// Room for the largest record plus its path.
#[repr(C)]
pub struct Scratch {
    pub bytes: [u8; SYSCALL_RECORD_SIZE + AUX_MAX + 64],
}

/// Extra bytes to attach to a syscall record.
pub enum Aux {
    None,
    /// A NUL-terminated user string (a path).
    UserPath(u64),
    /// Two paths (rename, link): each in its own half of the aux area, NUL-terminated.
    UserPaths(u64, u64),
    /// User bytes of known length (what getrandom returned), up to the aux area's size.
    UserBytes(u64, u64),
    /// A user socket address of known length.
    UserAddr(u64, u64),
}

/// Data-call records keep 1/16 of the ring free for lifecycle records.
const LIFECYCLE_RESERVE_DIVISOR: u64 = 16;

/// Calls `$f::<C>(args..)` with the smallest reservation class `C` that holds `$n` payload
/// bytes (`$n <= CHUNK_MAX`): a ring reservation's size must be a constant.
/// `$f::<A, _>(args..)` fills in the second of two classes the same way.
macro_rules! by_size_class {
    ($n:expr, $f:ident::<$a:ident, _>($($arg:expr),*)) => {{
        let n = $n;
        if n <= 128 {
            $f::<$a, 128>($($arg),*)
        } else if n <= 1024 {
            $f::<$a, 1024>($($arg),*)
        } else if n <= 4096 {
            $f::<$a, 4096>($($arg),*)
        } else if n <= 16384 {
            $f::<$a, 16384>($($arg),*)
        } else {
            $f::<$a, { retrace_common::config::CHUNK_MAX }>($($arg),*)
        }
    }};
    ($n:expr, $f:ident($($arg:expr),*)) => {{
        let n = $n;
        if n <= 128 {
            $f::<128>($($arg),*)
        } else if n <= 1024 {
            $f::<1024>($($arg),*)
        } else if n <= 4096 {
            $f::<4096>($($arg),*)
        } else if n <= 16384 {
            $f::<16384>($($arg),*)
        } else {
            $f::<{ retrace_common::config::CHUNK_MAX }>($($arg),*)
        }
    }};
}
pub(crate) use by_size_class;

/// How full the ring is, read once per record: room checks and the wakeup decision use it.
#[derive(Clone, Copy)]
pub struct RingLevel {
    avail: u64,
    size: u64,
}

impl RingLevel {
    #[inline(always)]
    pub fn now() -> RingLevel {
        RingLevel { avail: EVENTS.query(BPF_RB_AVAIL_DATA as u64), size: ring_size() }
    }

    /// With `--backpressure`, pauses the current process once this record (`len` bytes) takes
    /// the ring past half full: SIGSTOP to the current thread, which takes it on its way out of
    /// this very call and stops its whole process from there. Every thread that records while
    /// the ring is past half full is signalled, not just the first: a stop that another thread
    /// started waits for that thread to be scheduled again, and this one would write on
    /// meanwhile. The other half of the ring absorbs what is in flight. The process is listed
    /// in `PAUSED` first; the helper defers the signal to an irq_work that runs before the
    /// thread can stop (and refuses while that is busy: the thread's next record tries again).
    /// The agent continues a listed process only once all its threads are stopped, so a
    /// SIGCONT never overtakes a SIGSTOP.
    #[inline(always)]
    pub fn pause_if_half_full(&self, tgid: u32, len: u64) {
        if !backpressure() || (self.avail + len) * 2 < self.size {
            return;
        }
        // Key 0 (no process has it) is the agent's "no more pauses": it is going away.
        if unsafe { PAUSED.get(&0).is_some() } {
            return;
        }
        // Listed before the signal: a process is never stopped unlisted (the agent would not
        // know to continue it). With the list full, no pause (a loss is still counted).
        let new = unsafe { PAUSED.get(&tgid).is_none() };
        if new && PAUSED.insert(&tgid, &1, 0).is_err() {
            return;
        }
        if unsafe { bpf_send_signal_thread(SIGSTOP) } == 0 && new {
            count(stat::PAUSES, 1);
        }
    }

    /// Whether `len` bytes fit while leaving `1/divisor` of the ring free.
    #[inline(always)]
    pub fn has_room(&self, len: u64, divisor: u64) -> bool {
        // 8 bytes of ring header per record.
        self.avail + len + 8 + self.size / divisor <= self.size
    }

    /// Wakes the agent once per batch: when this record, `len` bytes in the ring, takes the
    /// fill level across a multiple of 1/32 of the ring. An agent that is draining needs no
    /// wake-up, and each one costs the traced process an interrupt (a trapped MSR write under
    /// a hypervisor): waking on every record above the mark cost 10% of the machine's CPU at
    /// 900 MB/s. A crossing missed by a race with another CPU is caught at the next mark or by
    /// the agent's drain timer.
    #[inline(always)]
    pub fn wakeup_flags(&self, len: u64) -> u64 {
        let mark = self.size / 32;
        // 8 bytes of ring header per record.
        if mark != 0 && self.avail / mark != (self.avail + len + 8) / mark {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }
}

#[inline(always)]
pub fn output(buf: *mut u8, len: u64) -> bool {
    output_at(buf, len, RingLevel::now())
}

#[inline(always)]
fn output_at(buf: *mut u8, len: u64, level: RingLevel) -> bool {
    unsafe { bpf_ringbuf_output(&EVENTS as *const _ as *mut c_void, buf.cast(), len, level.wakeup_flags(len)) == 0 }
}

/// Byte accounting of a data call: `bytes == captured + lost_ring + lost_fault + truncated`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DataAccount {
    /// Total payload of the call if known up front (0 for mmsghdr sources).
    pub call_bytes: u64,
    /// Pending loss of the fd taken at the start of the call (see `PENDING_LOSS`).
    pub lost_before_in: u64,
    pub lost_before_out: u64,
    /// `FD_REOPENED` if the fd's pending entry said a record that changed it was dropped.
    pub reopened: u64,
    pub bytes: u64,
    pub captured: u64,
    pub lost_ring: u64,
    pub lost_fault: u64,
    pub truncated: u64,
}

/// Writes the record of a finished syscall. `data` carries the byte accounting of data calls;
/// `loss_fd` names the fd whose pending loss this record may carry (data calls and close). A
/// lifecycle record carries the pending entry of the (first) fd it changes: what was lost on
/// that fd belongs to what it pointed at before (the agent's `loss_fd` says which fd that is).
#[inline(always)]
pub fn syscall(call: &Call, sys: Sys, aux: Aux, extra: [i64; 2], data: Option<&DataAccount>, loss_fd: Option<i32>) {
    let changed = if data.is_none() { changed_fds(sys, call, extra) } else { [-1, -1] };
    let loss_fd = match loss_fd {
        None if changed[0] >= 0 => Some(changed[0] as i32),
        other => other,
    };
    let Some((buf, len)) = build(call, sys, aux, extra, data, loss_fd) else { return };
    send(call, buf, len, sys, data, loss_fd, changed);
}

/// Payload records keep 1/8 of the ring free for the records that count their loss.
pub const PAYLOAD_HEADROOM_DIVISOR: u64 = 8;

/// Where the `n` kept bytes of a data call are in user memory.
pub enum Pieces {
    /// One buffer.
    One(u64),
    /// Two (readv/writev and sendmsg/recvmsg of two iovecs): the first piece's address and
    /// length, then the second piece's address.
    Two(u64, u64, u64),
}

/// Records a data call whose `n` kept bytes (of `moved`, after `--max-payload`) fit one chunk:
/// its record and payload go into one ring reservation, the payload straight from user memory
/// (`kind::DATA_CALL`; `DATA_CALL_SPLIT` for two pieces, each in a size class of its own since
/// the verifier must see a constant offset for the second copy). When that fails, the call's
/// plain record counts the bytes as lost.
#[inline(always)]
pub fn data_call(call: &Call, sys: Sys, fd: i32, pieces: Pieces, moved: u64, n: u64, rate_limited: bool) {
    let pending = take_pending_loss(call.tgid, fd);
    if let Some(acct) = data_call_carrying(call, sys, pieces, moved, n, rate_limited, pending) {
        syscall(call, sys, Aux::None, [0, 0], Some(&acct), Some(fd));
    }
}

/// `data_call` with the earlier loss it carries already taken (`take_pending_loss`). When the
/// record with its payload did not get in, returns the call's accounting for a plain record.
#[inline(always)]
pub fn data_call_carrying(
    call: &Call,
    sys: Sys,
    pieces: Pieces,
    moved: u64,
    n: u64,
    rate_limited: bool,
    (lost_before_in, lost_before_out, reopened): (u64, u64, u64),
) -> Option<DataAccount> {
    let reopened = reopened | if rate_limited { SYSCALL_RATE_LIMITED as u64 } else { 0 };
    let mut acct = DataAccount {
        call_bytes: moved,
        lost_before_in,
        lost_before_out,
        reopened,
        bytes: moved,
        captured: n,
        lost_ring: 0,
        lost_fault: 0,
        truncated: moved - n,
    };
    let level = RingLevel::now();
    // The reservation, the record's kind, the bytes after the syscall record and its `extra`.
    let slot = if !level.has_room(SYSCALL_RECORD_SIZE as u64 + n, PAYLOAD_HEADROOM_DIVISOR) {
        Err(Missed::NoRoom)
    } else {
        match pieces {
            Pieces::One(buf) => {
                by_size_class!(n, reserve_with_payload(buf, n)).map(|slot| (slot, kind::DATA_CALL, n, [0, 0]))
            }
            Pieces::Two(first, first_len, second) => {
                let second_len = n - first_len;
                by_size_class!(first_len, reserve_split_first((first, first_len, second, second_len))).map(
                    |(slot, second_at)| {
                        (slot, kind::DATA_CALL_SPLIT, second_at + second_len, [first_len as i64, second_at as i64])
                    },
                )
            }
        }
    };
    match slot {
        Ok((slot, kind, len, extra)) => {
            // The payload is in: only now take the socket's addresses (a call that failed
            // gives them to its plain record instead).
            fill(slot as *mut SyscallRecord, call, sys, kind, len as u32, extra, Some(&acct), (0, 0, 0));
            unsafe { bpf_ringbuf_submit(slot, level.wakeup_flags(SYSCALL_RECORD_SIZE as u64 + len)) };
            count(stat::CAPTURED_BYTES, n);
            level.pause_if_half_full(call.tgid, SYSCALL_RECORD_SIZE as u64 + len);
            return None;
        }
        Err(Missed::NoRoom) => {
            acct.lost_ring = n;
            count(stat::CHUNKS_DROPPED, 1);
            count(stat::CHUNK_BYTES_DROPPED, n);
            level.pause_if_half_full(call.tgid, 0);
        }
        Err(Missed::Fault) => {
            acct.lost_fault = n;
            count(stat::FAULT_BYTES, n);
        }
    }
    acct.captured = 0;
    Some(acct)
}

/// A data call's plain record (no payload), written straight into the ring rather than
/// through the per-CPU scratch buffer: uprobe programs can be preempted, and another program
/// on the CPU would then write the same scratch. False when the ring had no room.
#[inline(always)]
pub fn data_record_direct(call: &Call, sys: Sys, acct: &DataAccount) -> bool {
    let level = RingLevel::now();
    let len = SYSCALL_RECORD_SIZE as u64;
    if !level.has_room(len, LIFECYCLE_RESERVE_DIVISOR) {
        return false;
    }
    let slot = unsafe { bpf_ringbuf_reserve(&EVENTS as *const _ as *mut c_void, len, 0) };
    if slot.is_null() {
        return false;
    }
    fill(slot as *mut SyscallRecord, call, sys, kind::SYSCALL, 0, [0, 0], Some(acct), (0, 0, 0));
    unsafe { bpf_ringbuf_submit(slot, level.wakeup_flags(len)) };
    true
}

enum Missed {
    NoRoom,
    Fault,
}

/// Picks the second piece's size class for a first piece of class `A`.
#[inline(always)]
fn reserve_split_first<const A: usize>(pieces: (u64, u64, u64, u64)) -> Result<(*mut c_void, u64), Missed> {
    by_size_class!(pieces.3, reserve_split::<A, _>(pieces))
}

/// Reserves a record with `A` bytes for the first piece and `B` for the second and reads both
/// from user memory; returns the record and the second piece's offset (`A`).
#[inline(always)]
fn reserve_split<const A: usize, const B: usize>(
    (first, first_len, second, second_len): (u64, u64, u64, u64),
) -> Result<(*mut c_void, u64), Missed> {
    let slot =
        unsafe { bpf_ringbuf_reserve(&EVENTS as *const _ as *mut c_void, (SYSCALL_RECORD_SIZE + A + B) as u64, 0) };
    if slot.is_null() {
        return Err(Missed::NoRoom);
    }
    // Masked so that the verifier sees each size bounded by its class (a plain compare of
    // the 64-bit value is lost when LLVM reloads it for the call).
    let a = (first_len & (2 * A as u64 - 1)) as u32;
    let b = (second_len & (2 * B as u64 - 1)) as u32;
    unsafe {
        let dst = (slot as *mut u8).add(SYSCALL_RECORD_SIZE);
        if a as u64 == first_len
            && b as u64 == second_len
            && a as usize <= A
            && b as usize <= B
            && raw_read_user(dst.cast(), a, first as *const c_void) == 0
            && raw_read_user(dst.add(A).cast(), b, second as *const c_void) == 0
        {
            Ok((slot, A as u64))
        } else {
            bpf_ringbuf_discard(slot, 0);
            Err(Missed::Fault)
        }
    }
}

/// Reserves a record with room for `C` payload bytes and reads `n <= C` of them after the
/// syscall record's place; the caller fills that in and submits.
#[inline(always)]
fn reserve_with_payload<const C: usize>(buf: u64, n: u64) -> Result<*mut c_void, Missed> {
    let slot = unsafe { bpf_ringbuf_reserve(&EVENTS as *const _ as *mut c_void, (SYSCALL_RECORD_SIZE + C) as u64, 0) };
    if slot.is_null() {
        return Err(Missed::NoRoom);
    }
    let n = n as u32;
    unsafe {
        let dst = (slot as *mut u8).add(SYSCALL_RECORD_SIZE);
        if n as usize <= C && raw_read_user(dst.cast(), n, buf as *const c_void) == 0 {
            Ok(slot)
        } else {
            bpf_ringbuf_discard(slot, 0);
            Err(Missed::Fault)
        }
    }
}

/// Stores one field. Volatile, so that LLVM does not merge neighbouring stores into a
/// `memset`/`memcpy` call: BPF has no such instruction, and the library's byte loop costs a
/// few instructions per byte.
#[inline(always)]
pub fn put<T>(dst: *mut T, value: T) {
    unsafe { core::ptr::write_volatile(dst, value) }
}

/// Writes every field of a syscall record at `rec` (scratch or ring memory). `lost` is the
/// pending loss a record without `data` carries.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill(
    rec: *mut SyscallRecord,
    call: &Call,
    sys: Sys,
    kind: u32,
    len: u32,
    extra: [i64; 2],
    data: Option<&DataAccount>,
    lost: (u64, u64, u64),
) {
    use core::ptr::addr_of_mut as at;
    unsafe {
        put(at!((*rec).hdr.kind), kind);
        put(at!((*rec).hdr.len), len);
        put(at!((*rec).hdr.ts_ns), call.ts_ns);
        put(at!((*rec).hdr.tgid), call.tgid);
        put(at!((*rec).hdr.tid), call.tid);
        put(at!((*rec).sys), sys as u32);
        put(at!((*rec).ret), call.ret);
        let args = at!((*rec).args) as *mut u64;
        for (i, arg) in call.args.iter().enumerate() {
            put(args.add(i), *arg);
        }
        put(at!((*rec).extra) as *mut i64, extra[0]);
        put((at!((*rec).extra) as *mut i64).add(1), extra[1]);
        let d = data.copied().unwrap_or_default();
        put(at!((*rec).bytes), d.bytes);
        put(at!((*rec).captured), d.captured);
        put(at!((*rec).lost_ring), d.lost_ring);
        put(at!((*rec).lost_fault), d.lost_fault);
        put(at!((*rec).truncated), d.truncated);
        if d.truncated > 0 {
            count(stat::TRUNCATED_BYTES, d.truncated);
        }
        // A data call took its fd's pending loss when it started (its chunks carry it too).
        let (lost_in, lost_out, reopened) =
            if data.is_some() { (d.lost_before_in, d.lost_before_out, d.reopened) } else { lost };
        let mut flags = if data.is_some() { SYSCALL_DATA } else { 0 };
        if lost_in + lost_out > 0 {
            flags |= SYSCALL_HAS_PENDING_LOSS;
        }
        // `reopened` carries the flag bits FD_REOPENED and SYSCALL_RATE_LIMITED.
        flags |= (reopened as u32) & (FD_REOPENED | SYSCALL_RATE_LIMITED);
        put(at!((*rec).flags), flags);
        put(at!((*rec).lost_before_in), lost_in);
        put(at!((*rec).lost_before_out), lost_out);
        let sock = at!((*rec).sock);
        // A TLS call's socket is its carrier's: the nested syscall reported it.
        if (sys.direction().is_some() && !sys.is_tls()) || matches!(sys, Sys::Connect | Sys::Listen) {
            socket_addresses(call.tid, sys, sock);
        } else {
            clear_tuple(sock);
        }
    }
}

/// Up to `MAX` (a power of two) bytes of user memory at `ptr` into `dst`; how many were read.
/// The mask keeps the length provably bounded for the verifier.
#[inline(always)]
unsafe fn read_user_capped<const MAX: usize>(dst: &mut [u8], ptr: u64, len: u64) -> u32 {
    let n = (if len > MAX as u64 { MAX as u64 } else { len }) as u32;
    let n = n & (MAX as u32 * 2 - 1);
    if ptr != 0 && n as usize <= MAX && raw_read_user(dst.as_mut_ptr().cast(), n, ptr as *const c_void) == 0 {
        n
    } else {
        0
    }
}

/// Assembles a syscall record in the per-CPU scratch buffer: returns it and its length.
#[inline(always)]
fn build(
    call: &Call,
    sys: Sys,
    aux: Aux,
    extra: [i64; 2],
    data: Option<&DataAccount>,
    loss_fd: Option<i32>,
) -> Option<(*mut u8, u64)> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let buf = unsafe { (*scratch).bytes.as_mut_ptr() };
    let rec = buf as *mut SyscallRecord;
    let aux_len: u32 = unsafe {
        let dst = core::slice::from_raw_parts_mut(buf.add(SYSCALL_RECORD_SIZE), AUX_MAX);
        match aux {
            Aux::None => 0,
            Aux::UserPath(ptr) => match bpf_probe_read_user_str_bytes(ptr as *const u8, dst) {
                Ok(s) => s.len() as u32,
                Err(_) => 0,
            },
            Aux::UserPaths(first, second) => {
                let (head, tail) = dst.split_at_mut(AUX_SECOND_PATH);
                head[0] = 0;
                let _ = bpf_probe_read_user_str_bytes(first as *const u8, head);
                match bpf_probe_read_user_str_bytes(second as *const u8, tail) {
                    Ok(s) => (AUX_SECOND_PATH + s.len()) as u32,
                    Err(_) => 0,
                }
            }
            Aux::UserBytes(ptr, len) => read_user_capped::<AUX_MAX>(dst, ptr, len),
            Aux::UserAddr(ptr, len) => read_user_capped::<SOCKADDR_MAX>(dst, ptr, len),
        }
    };
    let aux_len = aux_len & (AUX_MAX as u32 * 2 - 1);
    let lost = match (data, loss_fd) {
        (None, Some(fd)) => take_pending_loss(call.tgid, fd),
        _ => (0, 0, 0),
    };
    fill(rec, call, sys, kind::SYSCALL, aux_len, extra, data, lost);
    if aux_len as usize > AUX_MAX {
        return None;
    }
    Some((buf, SYSCALL_RECORD_SIZE as u64 + aux_len as u64))
}

/// Copies a built record into the ring. Data calls leave the last part of the ring to
/// lifecycle records (open, close, dup...): their loss can be carried by a later record, a lost
/// close cannot. A record that does not fit leaves its payload bytes for the fd's next record.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send(
    call: &Call,
    buf: *mut u8,
    len: u64,
    sys: Sys,
    data: Option<&DataAccount>,
    loss_fd: Option<i32>,
    changed: [i64; 2],
) {
    let level = RingLevel::now();
    let rec = buf as *mut SyscallRecord;
    if (data.is_none() || level.has_room(len, LIFECYCLE_RESERVE_DIVISOR)) && output_at(buf, len, level) {
        // The agent sees the second fd change too (pipe, socketpair): an older "changed
        // unseen" mark on it is void. (The first fd's entry went out with the record.)
        if changed[1] >= 0 {
            clear_reopened(call.tgid, changed[1] as i32);
        }
        return;
    }
    count(stat::RECORDS_DROPPED, 1);
    // The agent will not see these fds change: their next record or chunk says so.
    for fd in changed {
        if fd >= 0 {
            add_pending(call.tgid, fd as i32, 0, 0, 0, 1);
        }
    }
    let Some(fd) = loss_fd else { return };
    // When some chunks of a call of known size got through, they tell the agent the call's
    // size and the earlier loss it carried: nothing more to keep. Otherwise the record was
    // carrying earlier loss (put it back) and only this count can tell what the call moved.
    let (mut lost_in, mut lost_out) = unsafe { ((*rec).lost_before_in, (*rec).lost_before_out) };
    let reopened = if unsafe { (*rec).flags } & FD_REOPENED != 0 { 1 } else { 0 };
    if let (Some(d), Some(dir)) = (data, sys.direction()) {
        if d.captured > 0 && d.call_bytes > 0 {
            return;
        }
        match dir {
            retrace_common::syscall::Direction::In => lost_in += d.bytes,
            retrace_common::syscall::Direction::Out => lost_out += d.bytes,
        }
    }
    if lost_in + lost_out == 0 && reopened == 0 {
        return;
    }
    add_pending(call.tgid, fd, lost_in, lost_out, 1, reopened);
}

/// Voids an fd's "changed unseen" mark.
#[inline(always)]
fn clear_reopened(tgid: u32, fd: i32) {
    if PENDING_ANY.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    if let Some(v) = PENDING_LOSS.get_ptr_mut(&FdKey { tgid, fd }) {
        unsafe { (*v).reopened = 0 };
    }
}

/// The addresses of the socket this call used, the first time a record meets that socket (and
/// always for connect/listen, which change them).
#[inline(always)]
fn socket_addresses(tid: u32, sys: Sys, dst: *mut SockTuple) {
    let Some(slot) = SK_OF_CALL.get_ptr_mut(0) else { return clear_tuple(dst) };
    let (owner, sk) = unsafe { ((*slot).tid, (*slot).sk) };
    if owner != tid || sk == 0 {
        return clear_tuple(dst);
    }
    unsafe { (*slot).sk = 0 };
    let always = matches!(sys, Sys::Connect | Sys::Listen);
    if !always && unsafe { SK_REPORTED.get(&sk) }.is_some() {
        return clear_tuple(dst);
    }
    let _ = SK_REPORTED.insert(&sk, &1, 0);
    let mut t = unsafe { SK_TUPLES.get(&sk) }.copied().unwrap_or_else(|| sock_common_head(sk));
    if t.sport == 0 {
        // connect enters SYN_SENT before the ephemeral port is chosen; it is set by now.
        t.sport = unsafe { bpf_probe_read_kernel((sk + SKC_NUM) as *const u16) }.unwrap_or(0);
    }
    // Once per socket: a plain copy will do.
    unsafe { *dst = t };
}

/// "No addresses": the tuple's 40 bytes, zeroed 8 at a time.
#[inline(always)]
fn clear_tuple(dst: *mut SockTuple) {
    let words = dst as *mut u64;
    for i in 0..core::mem::size_of::<SockTuple>() / 8 {
        put(unsafe { words.add(i) }, 0);
    }
}

/// `struct sock_common` starts with daddr, rcv_saddr (u32 each), a hash, dport (be16), num
/// (u16) and family: a layout unchanged for many kernel releases. Used for sockets that never
/// change TCP state (UDP). IPv6 addresses sit at build-dependent offsets: for AF_INET6 only the
/// ports are reported, with the addresses left zero (unknown).
const SKC_DADDR: u64 = 0;
const SKC_RCV_SADDR: u64 = 4;
const SKC_DPORT: u64 = 12;
const SKC_NUM: u64 = 14;
const SKC_FAMILY: u64 = 16;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn sock_common_head(sk: u64) -> SockTuple {
    let read16 = |off: u64| unsafe { bpf_probe_read_kernel((sk + off) as *const u16) }.unwrap_or(0);
    let read4 = |off: u64| unsafe { bpf_probe_read_kernel((sk + off) as *const [u8; 4]) }.unwrap_or([0; 4]);
    let mut t = SockTuple::default();
    let family = read16(SKC_FAMILY);
    if family != AF_INET && family != AF_INET6 {
        return t;
    }
    t.family = family;
    t.sport = read16(SKC_NUM);
    t.dport = u16::from_be(read16(SKC_DPORT));
    if family == AF_INET {
        t.saddr[..4].copy_from_slice(&read4(SKC_RCV_SADDR));
        t.daddr[..4].copy_from_slice(&read4(SKC_DADDR));
    }
    t
}

/// Takes the fd's pending entry: bytes lost in and out before this call, and `FD_REOPENED`
/// (as a u64) if a record that changed the fd was dropped.
#[inline(always)]
pub fn take_pending_loss(tgid: u32, fd: i32) -> (u64, u64, u64) {
    if PENDING_ANY.get(0).copied().unwrap_or(0) == 0 {
        return (0, 0, 0);
    }
    let key = FdKey { tgid, fd };
    match unsafe { PENDING_LOSS.get(&key) } {
        Some(v) => {
            let v = *v;
            let _ = PENDING_LOSS.remove(&key);
            (v.bytes_in, v.bytes_out, if v.reopened != 0 { FD_REOPENED as u64 } else { 0 })
        }
        None => (0, 0, 0),
    }
}

/// Adds to an fd's pending entry (created if needed) and tells every program to look.
#[inline(always)]
fn add_pending(tgid: u32, fd: i32, lost_in: u64, lost_out: u64, calls: u64, reopened: u64) {
    let key = FdKey { tgid, fd };
    let value = match unsafe { PENDING_LOSS.get(&key) } {
        Some(v) => PendingLoss {
            bytes_in: v.bytes_in + lost_in,
            bytes_out: v.bytes_out + lost_out,
            calls: v.calls + calls,
            reopened: v.reopened + reopened,
        },
        None => PendingLoss { bytes_in: lost_in, bytes_out: lost_out, calls, reopened },
    };
    let _ = PENDING_LOSS.insert(&key, &value, 0);
    if let Some(any) = PENDING_ANY.get_ptr_mut(0) {
        unsafe { *any = 1 };
    }
}

/// The fds a lifecycle call made point somewhere new (opened, closed, duplicated onto); -1 for
/// none. close_range is left out: its range cannot be marked fd by fd.
#[inline(always)]
fn changed_fds(sys: Sys, call: &Call, extra: [i64; 2]) -> [i64; 2] {
    let ret = if call.ret >= 0 { call.ret } else { -1 };
    match sys {
        Sys::Open | Sys::Openat | Sys::Openat2 | Sys::Creat | Sys::Socket | Sys::Accept | Sys::Accept4 | Sys::Dup => {
            [ret, -1]
        }
        // F_DUPFD and F_DUPFD_CLOEXEC return a new fd; other commands return no fd.
        Sys::Fcntl if call.args[1] == 0 || call.args[1] == 1030 => [ret, -1],
        s if s.makes_anonymous_fd(call.args[0]) => [ret, -1],
        Sys::Close => [call.args[0] as i32 as i64, -1],
        Sys::Dup2 | Sys::Dup3 if call.ret >= 0 => [call.args[1] as i32 as i64, -1],
        Sys::Pipe | Sys::Pipe2 | Sys::Socketpair if call.ret == 0 => extra,
        _ => [-1, -1],
    }
}

/// Writes a task record; `path` is a kernel string for exec.
#[inline(always)]
pub fn task(
    kind: u32,
    tgid: u32,
    tid: u32,
    ts_ns: u64,
    pid: i32,
    flags: u32,
    clone_flags: u64,
    path: Option<*const u8>,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    let buf = unsafe { (*scratch).bytes.as_mut_ptr() };
    let rec = buf as *mut TaskRecord;
    let len: u32 = match path {
        Some(p) => unsafe {
            let dst = core::slice::from_raw_parts_mut(buf.add(TASK_RECORD_SIZE), AUX_MAX);
            bpf_probe_read_kernel_str_bytes(p, dst).map(|s| s.len() as u32).unwrap_or(0)
        },
        None => 0,
    };
    let len = len & (AUX_MAX as u32 * 2 - 1);
    let (mut flags, mut program) = (flags, 0);
    if kind == kind::TASK_EXEC {
        program = path_key(buf, len);
        if hold(tgid, program) {
            flags |= TASK_HELD;
        }
    }
    unsafe {
        (*rec).hdr = Header { kind, len, ts_ns, tgid, tid };
        (*rec).pid = pid;
        (*rec).flags = flags;
        (*rec).clone_flags = clone_flags;
        (*rec).program = program;
    }
    let len = TASK_RECORD_SIZE as u64 + len as u64;
    // A held process waits for the agent: wake it now.
    let wakeup = if flags & TASK_HELD != 0 { BPF_RB_FORCE_WAKEUP as u64 } else { RingLevel::now().wakeup_flags(len) };
    let sent = len as usize <= TASK_RECORD_SIZE + AUX_MAX
        && unsafe { bpf_ringbuf_output(&EVENTS as *const _ as *mut c_void, buf.cast(), len, wakeup) } == 0;
    if !sent {
        count(stat::TASK_RECORDS_DROPPED, 1);
        if flags & TASK_HELD != 0 {
            // The agent will not hear of it: let it go at once (the signal is only delivered
            // on the way back to user space, after this program).
            let _ = PAUSED.remove(&tgid);
            unsafe { bpf_send_signal_thread(SIGCONT) };
        }
    }
}

/// FNV-1a of the first (up to 256) bytes of the path after a task record in `buf`.
#[inline(always)]
fn path_key(buf: *mut u8, len: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..PATH_KEY_BYTES {
        if i >= len as usize {
            break;
        }
        // SAFETY: within the scratch buffer (record + 256 bytes <= its size).
        let byte = unsafe { *buf.add(TASK_RECORD_SIZE + i) };
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const PATH_KEY_BYTES: usize = 256;

/// Stops the current (exec'ing) process until the agent has looked at its program, if asked
/// to and the agent has not seen the program yet (or at every exec, for the agent to patch
/// the new image's vDSO); whether it will stop.
#[inline(always)]
fn hold(tgid: u32, program: u64) -> bool {
    if !hold_execs() || (!hold_every_exec() && unsafe { LOOKED_AT.get(&program).is_some() }) {
        return false;
    }
    if unsafe { OWN_GROUP.get(&tgid).is_some() } {
        return false;
    }
    // Key 0 is the agent's "no more pauses": it is going away.
    if unsafe { PAUSED.get(&0).is_some() } {
        return false;
    }
    // Listed before the signal, so that the agent (or its guard) can always continue it.
    if PAUSED.insert(&tgid, &PAUSED_FOR_EXEC, 0).is_err() {
        return false;
    }
    if unsafe { bpf_send_signal_thread(SIGSTOP) } != 0 {
        let _ = PAUSED.remove(&tgid);
        return false;
    }
    true
}

/// Reads an `int` the kernel wrote to user memory (accepted address length, pipe fds).
#[inline(always)]
pub fn user_i32(ptr: u64) -> i64 {
    if ptr == 0 {
        return -1;
    }
    unsafe { bpf_probe_read_user(ptr as *const i32) }.map(|v| v as i64).unwrap_or(-1)
}
