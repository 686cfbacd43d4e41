//! The payload copier: walks what a data syscall moved (one buffer, an iovec array, one msghdr
//! or an mmsghdr array) and writes it into the ring buffer in chunks of at most `CHUNK_MAX`
//! bytes, straight from user memory. One `bpf_loop` step either loads the next message, the
//! next iovec, or emits one chunk, so the verifier checks the step once whatever the sizes.
//!
//! Chunks leave `HEADROOM_DIVISOR`-th of the ring free for syscall records, so that when payload
//! is dropped the record that counts the loss still gets through.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_user,
    generated::{
        bpf_loop, bpf_probe_read_user as raw_read_user, bpf_ringbuf_discard, bpf_ringbuf_reserve, bpf_ringbuf_submit,
    },
};
use retrace_common::{
    config::{stat, CHUNK_MAX, SOCKADDR_MAX},
    kind, DataChunk, DatagramAddr, Header, DATAGRAM_ADDR_SIZE, DATA_CHUNK_SIZE,
};

use crate::{
    call::Call,
    emit::RingLevel,
    maps::{count, max_payload, COPY_STATE, EVENTS, SCRATCH},
};

const HEADROOM_DIVISOR: u64 = 8;
/// Upper bound of loop steps for one call: 1 GiB in chunks, plus iovecs and messages.
const MAX_STEPS: u32 = (1 << 15) + 2048;
const IOVEC_SIZE: u64 = 16;
const MSGHDR_SIZE: u64 = 56;
const MMSGHDR_SIZE: u64 = 64;

/// The shapes of user buffers a data syscall can name.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Source {
    /// `(buf, len)`: read, write, pread64, pwrite64, recvfrom, sendto.
    Buffer = 0,
    /// `(iov, iovcnt)`: readv, writev and the p*v variants.
    Iovec = 1,
    /// One `struct msghdr`: recvmsg, sendmsg.
    Msghdr = 2,
    /// An array of `struct mmsghdr`: recvmmsg, sendmmsg (the call returns the message count).
    Mmsghdr = 3,
}

/// Loop state, on the probe's stack and handed to every step.
#[repr(C)]
pub struct Copy {
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub fd: i32,
    pub source: u32,
    pub sys: u32,
    pub _pad: u32,
    /// Total payload of the call if known up front (0 for mmsghdr sources).
    pub call_bytes: u64,
    /// Pending loss of the fd taken at the start of the call (see `PENDING_LOSS`).
    pub lost_before_in: u64,
    pub lost_before_out: u64,
    pub msgs: u64,
    pub msg_count: u64,
    pub msg_index: u64,
    pub iov: u64,
    pub iov_count: u64,
    pub iov_index: u64,
    pub cur_base: u64,
    pub cur_left: u64,
    pub msg_left: u64,
    pub offset: u64,
    pub cap_left: u64,
    /// Accounting: bytes == captured + lost_ring + lost_fault + truncated.
    pub bytes: u64,
    pub captured: u64,
    pub lost_ring: u64,
    pub lost_fault: u64,
    pub truncated: u64,
}

impl Copy {
    /// Copies the payload of a successful data call. `buf_or_vec` and `len_or_count` are the
    /// call's buffer arguments; `moved` its positive return value.
    #[inline(always)]
    pub fn run(
        call: &Call,
        sys: u32,
        fd: i32,
        source: Source,
        buf_or_vec: u64,
        len_or_count: u64,
        moved: u64,
    ) -> Option<&'static Copy> {
        let cap = max_payload();
        let slot = COPY_STATE.get_ptr_mut(0)?;
        // SAFETY: per-CPU slot; programs do not nest on a CPU while a syscall exit runs.
        let s = unsafe { &mut *slot };
        let (lost_before_in, lost_before_out) = crate::emit::take_pending_loss(call.tgid, fd);
        *s = Copy {
            tgid: call.tgid,
            tid: call.tid,
            ts_ns: call.ts_ns,
            fd,
            source: source as u32,
            sys,
            _pad: 0,
            call_bytes: if source == Source::Mmsghdr { 0 } else { moved },
            lost_before_in,
            lost_before_out,
            msgs: 0,
            msg_count: 1,
            msg_index: 0,
            iov: 0,
            iov_count: 0,
            iov_index: 0,
            cur_base: 0,
            cur_left: 0,
            msg_left: 0,
            offset: 0,
            cap_left: if cap == 0 { u64::MAX } else { cap },
            bytes: 0,
            captured: 0,
            lost_ring: 0,
            lost_fault: 0,
            truncated: 0,
        };
        match source {
            Source::Buffer => {
                s.cur_base = buf_or_vec;
                s.cur_left = moved;
                s.msg_left = moved;
                s.bytes = moved;
            }
            Source::Iovec => {
                s.iov = buf_or_vec;
                s.iov_count = len_or_count;
                s.msg_left = moved;
                s.bytes = moved;
            }
            Source::Msghdr => {
                s.msgs = buf_or_vec;
                s.msg_left = moved;
                s.bytes = moved;
                load_message(s);
            }
            Source::Mmsghdr => {
                s.msgs = buf_or_vec;
                s.msg_count = moved;
                load_message(s);
            }
        }
        // The state is handed over through the map, not the stack: the verifier does not track
        // map values across iterations, so it checks the step once instead of unrolling it.
        if source == Source::Buffer && moved <= CHUNK_MAX as u64 {
            // The common case, one buffer that fits one chunk: one step, without the loop.
            step(0, core::ptr::null_mut());
        } else {
            let step_fn = step as extern "C" fn(u64, *mut c_void) -> i64;
            let callback =
                unsafe { core::mem::transmute::<extern "C" fn(u64, *mut c_void) -> i64, *mut c_void>(step_fn) };
            unsafe { bpf_loop(MAX_STEPS, callback, core::ptr::null_mut(), 0) };
        }
        let s = unsafe { &mut *COPY_STATE.get_ptr_mut(0)? };
        // Whatever the loop bound left unwalked was not captured.
        let accounted = s.captured + s.lost_ring + s.lost_fault + s.truncated;
        if s.bytes > accounted {
            s.truncated += s.bytes - accounted;
        }
        Some(s)
    }
}

/// Reads message `msg_index` of a msghdr/mmsghdr source: its iovecs, length and address.
#[inline(always)]
fn load_message(s: &mut Copy) {
    let (hdr, len) = if s.source == Source::Mmsghdr as u32 {
        let at = s.msgs + s.msg_index * MMSGHDR_SIZE;
        let len: u32 = unsafe { bpf_probe_read_user((at + MSGHDR_SIZE) as *const u32) }.unwrap_or(0);
        s.bytes += len as u64;
        (at, len as u64)
    } else {
        (s.msgs, s.msg_left)
    };
    s.msg_left = len;
    s.iov = unsafe { bpf_probe_read_user((hdr + 16) as *const u64) }.unwrap_or(0);
    s.iov_count = unsafe { bpf_probe_read_user((hdr + 24) as *const u64) }.unwrap_or(0);
    s.iov_index = 0;
    let name: u64 = unsafe { bpf_probe_read_user(hdr as *const u64) }.unwrap_or(0);
    let name_len: u32 = unsafe { bpf_probe_read_user((hdr + 8) as *const u32) }.unwrap_or(0);
    if name != 0 && name_len != 0 {
        emit_address(s.tgid, s.tid, s.ts_ns, s.msg_index as u32, name, name_len as u64);
    }
    if s.iov == 0 && s.msg_left > 0 {
        s.lost_fault += s.msg_left;
        s.msg_left = 0;
    }
}

/// A datagram address (msg_name, sendto's destination, recvfrom's source).
#[inline(always)]
pub fn emit_address_of(call: &Call, addr: u64, len: u64) {
    emit_address(call.tgid, call.tid, call.ts_ns, 0, addr, len);
}

#[inline(always)]
fn emit_address(tgid: u32, tid: u32, ts_ns: u64, msg_index: u32, addr: u64, len: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    let len = if len > SOCKADDR_MAX as u64 { SOCKADDR_MAX as u64 } else { len };
    let buf = unsafe { (*scratch).bytes.as_mut_ptr() };
    let rec = buf as *mut DatagramAddr;
    unsafe {
        (*rec).hdr = Header { kind: kind::DATAGRAM_ADDR, len: len as u32, ts_ns, tgid, tid };
        (*rec).msg_index = msg_index;
        (*rec)._pad = 0;
        let dst = buf.add(DATAGRAM_ADDR_SIZE);
        let n = (len as u32) & (SOCKADDR_MAX as u32 * 2 - 1);
        if n as usize <= SOCKADDR_MAX && raw_read_user(dst.cast(), n, addr as *const c_void) == 0 {
            crate::emit::output(buf, DATAGRAM_ADDR_SIZE as u64 + n as u64);
        }
    }
}

extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(slot) = COPY_STATE.get_ptr_mut(0) else { return 1 };
    let s = unsafe { &mut *slot };
    if s.cur_left == 0 {
        if s.msg_left > 0 && s.iov_index < s.iov_count {
            let at = s.iov + s.iov_index * IOVEC_SIZE;
            let base: Option<u64> = unsafe { bpf_probe_read_user(at as *const u64) }.ok();
            let len: Option<u64> = unsafe { bpf_probe_read_user((at + 8) as *const u64) }.ok();
            match (base, len) {
                (Some(base), Some(len)) => {
                    s.cur_base = base;
                    s.cur_left = if len < s.msg_left { len } else { s.msg_left };
                    s.iov_index += 1;
                }
                _ => {
                    s.lost_fault += s.msg_left;
                    s.offset += s.msg_left;
                    s.msg_left = 0;
                }
            }
            return 0;
        }
        if s.msg_left > 0 {
            // The iovecs ended before the bytes did: user memory changed under us.
            s.lost_fault += s.msg_left;
            s.offset += s.msg_left;
            s.msg_left = 0;
        }
        s.msg_index += 1;
        if s.msg_index >= s.msg_count {
            return 1;
        }
        load_message(s);
        return 0;
    }
    if s.cap_left == 0 {
        s.truncated += s.cur_left;
        s.offset += s.cur_left;
        s.msg_left -= s.cur_left;
        s.cur_left = 0;
        return 0;
    }
    let mut n = if s.cur_left < CHUNK_MAX as u64 { s.cur_left } else { CHUNK_MAX as u64 };
    if n > s.cap_left {
        n = s.cap_left;
    }
    emit_chunk(s, n);
    s.cur_base += n;
    s.cur_left -= n;
    s.msg_left -= n;
    s.offset += n;
    s.cap_left -= n;
    0
}

#[inline(always)]
fn emit_chunk(s: &mut Copy, n: u64) {
    let level = RingLevel::now();
    if !level.has_room(DATA_CHUNK_SIZE as u64 + n, HEADROOM_DIVISOR) {
        drop_chunk(s, n);
        return;
    }
    let wakeup = level.wakeup_flags();
    let ok = if n <= 128 {
        emit_class::<128>(s, n, wakeup)
    } else if n <= 1024 {
        emit_class::<1024>(s, n, wakeup)
    } else if n <= 4096 {
        emit_class::<4096>(s, n, wakeup)
    } else if n <= 16384 {
        emit_class::<16384>(s, n, wakeup)
    } else {
        emit_class::<CHUNK_MAX>(s, n, wakeup)
    };
    if !ok {
        drop_chunk(s, n);
    }
}

#[inline(always)]
fn drop_chunk(s: &mut Copy, n: u64) {
    s.lost_ring += n;
    count(stat::CHUNKS_DROPPED, 1);
    count(stat::CHUNK_BYTES_DROPPED, n);
}

/// Reserves a record with room for `C` payload bytes and fills `n <= C` of them.
#[inline(always)]
fn emit_class<const C: usize>(s: &mut Copy, n: u64, wakeup: u64) -> bool {
    let rec = unsafe { bpf_ringbuf_reserve(&EVENTS as *const _ as *mut c_void, (DATA_CHUNK_SIZE + C) as u64, 0) };
    if rec.is_null() {
        return false;
    }
    let chunk = rec as *mut DataChunk;
    let n = n as u32;
    unsafe {
        (*chunk).hdr = Header { kind: kind::DATA_CHUNK, len: n, ts_ns: s.ts_ns, tgid: s.tgid, tid: s.tid };
        (*chunk).offset = s.offset;
        (*chunk).msg_index = s.msg_index as u32;
        (*chunk).fd = s.fd;
        (*chunk).call_bytes = s.call_bytes;
        (*chunk).lost_before_in = s.lost_before_in;
        (*chunk).lost_before_out = s.lost_before_out;
        (*chunk).sys = s.sys;
        (*chunk)._pad = 0;
        let dst = (rec as *mut u8).add(DATA_CHUNK_SIZE);
        if n as usize <= C && raw_read_user(dst.cast(), n, s.cur_base as *const c_void) == 0 {
            bpf_ringbuf_submit(rec, wakeup);
            s.captured += n as u64;
            count(stat::CAPTURED_BYTES, n as u64);
        } else {
            bpf_ringbuf_discard(rec, 0);
            s.lost_fault += n as u64;
            count(stat::FAULT_BYTES, n as u64);
        }
    }
    true
}
