//! The payload copier: walks what a data syscall moved (one buffer, an iovec array, one msghdr
//! or an mmsghdr array) and writes it into the ring buffer in chunks of at most `CHUNK_MAX`
//! bytes, straight from user memory. One `bpf_loop` step either loads the next message, the
//! next iovec, or emits one chunk, so the verifier checks the step once whatever the sizes.
//!
//! Chunks leave `PAYLOAD_HEADROOM_DIVISOR`-th of the ring free for syscall records, so that
//! when payload is dropped the record that counts the loss still gets through.

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
    emit::{by_size_class, put, DataAccount, RingLevel, PAYLOAD_HEADROOM_DIVISOR},
    maps::{count, max_payload, COPY_STATE, EVENTS, SCRATCH},
};

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
    pub acct: DataAccount,
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
    pub position_arg: u64,
}

impl Copy {
    /// Sets every field for a new call: `call_bytes` as its chunks report it, at most
    /// `cap_left` bytes kept, the earlier loss it carries and its flags (`reopened`); no source
    /// walked yet. Field by field: a struct literal becomes a byte-loop `memset` plus stores in
    /// BPF.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn reset(
        &mut self,
        call: &Call,
        sys: u32,
        fd: i32,
        source: Source,
        call_bytes: u64,
        cap_left: u64,
        (lost_before_in, lost_before_out, reopened): (u64, u64, u64),
    ) {
        use core::ptr::addr_of_mut as at;
        let s = self;
        put(at!(s.tgid), call.tgid);
        put(at!(s.tid), call.tid);
        put(at!(s.ts_ns), call.ts_ns);
        put(at!(s.fd), fd);
        put(at!(s.source), source as u32);
        put(at!(s._pad), 0);
        put(at!(s.sys), sys);
        put(at!(s.acct.call_bytes), call_bytes);
        put(at!(s.acct.lost_before_in), lost_before_in);
        put(at!(s.acct.lost_before_out), lost_before_out);
        put(at!(s.acct.reopened), reopened);
        put(at!(s.acct.bytes), 0);
        put(at!(s.acct.captured), 0);
        put(at!(s.acct.lost_ring), 0);
        put(at!(s.acct.lost_fault), 0);
        put(at!(s.acct.truncated), 0);
        put(at!(s.msgs), 0);
        put(at!(s.msg_count), 1);
        put(at!(s.msg_index), 0);
        put(at!(s.iov), 0);
        put(at!(s.iov_count), 0);
        put(at!(s.iov_index), 0);
        put(at!(s.cur_base), 0);
        put(at!(s.cur_left), 0);
        put(at!(s.msg_left), 0);
        put(at!(s.offset), 0);
        put(at!(s.cap_left), cap_left);
        put(at!(s.position_arg), call.args[3]);
    }

    /// The source is one buffer of `moved` bytes at `buf`.
    #[inline(always)]
    pub fn buffer(&mut self, buf: u64, moved: u64) {
        self.cur_base = buf;
        self.cur_left = moved;
        self.msg_left = moved;
        self.acct.bytes = moved;
    }

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
        keep: u64,
        rate_limited: bool,
    ) -> Option<&'static DataAccount> {
        // mmsghdr calls return a message count: only `--max-payload` bounds their bytes.
        let cap_left = match (source, max_payload()) {
            (Source::Mmsghdr, 0) => u64::MAX,
            (Source::Mmsghdr, cap) => cap,
            _ => keep,
        };
        let slot = COPY_STATE.get_ptr_mut(0)?;
        // SAFETY: per-CPU slot; programs do not nest on a CPU while a syscall exit runs.
        let s = unsafe { &mut *slot };
        let (lost_before_in, lost_before_out, reopened) = crate::emit::take_pending_loss(call.tgid, fd);
        let reopened = reopened | if rate_limited { retrace_common::SYSCALL_RATE_LIMITED as u64 } else { 0 };
        let call_bytes = if source == Source::Mmsghdr { 0 } else { moved };
        s.reset(call, sys, fd, source, call_bytes, cap_left, (lost_before_in, lost_before_out, reopened));
        match source {
            Source::Buffer => s.buffer(buf_or_vec, moved),
            Source::Iovec => {
                s.iov = buf_or_vec;
                s.iov_count = len_or_count;
                s.msg_left = moved;
                s.acct.bytes = moved;
            }
            Source::Msghdr => {
                s.msgs = buf_or_vec;
                s.msg_left = moved;
                s.acct.bytes = moved;
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
        let step_fn = step as extern "C" fn(u64, *mut c_void) -> i64;
        let callback = unsafe { core::mem::transmute::<extern "C" fn(u64, *mut c_void) -> i64, *mut c_void>(step_fn) };
        unsafe { bpf_loop(MAX_STEPS, callback, core::ptr::null_mut(), 0) };
        let s = unsafe { &mut *COPY_STATE.get_ptr_mut(0)? };
        // Whatever the loop bound left unwalked was not captured.
        let accounted = s.acct.captured + s.acct.lost_ring + s.acct.lost_fault + s.acct.truncated;
        if s.acct.bytes > accounted {
            s.acct.truncated += s.acct.bytes - accounted;
        }
        Some(&s.acct)
    }
}

/// Reads message `msg_index` of a msghdr/mmsghdr source: its iovecs, length and address.
#[inline(always)]
fn load_message(s: &mut Copy) {
    let (hdr, len) = if s.source == Source::Mmsghdr as u32 {
        let at = s.msgs + s.msg_index * MMSGHDR_SIZE;
        let len: u32 = unsafe { bpf_probe_read_user((at + MSGHDR_SIZE) as *const u32) }.unwrap_or(0);
        s.acct.bytes += len as u64;
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
        s.acct.lost_fault += s.msg_left;
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
                    s.acct.lost_fault += s.msg_left;
                    s.offset += s.msg_left;
                    s.msg_left = 0;
                }
            }
            return 0;
        }
        if s.msg_left > 0 {
            // The iovecs ended before the bytes did: user memory changed under us.
            s.acct.lost_fault += s.msg_left;
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
        s.acct.truncated += s.cur_left;
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
pub fn emit_chunk(s: &mut Copy, n: u64) {
    let level = RingLevel::now();
    if !level.has_room(DATA_CHUNK_SIZE as u64 + n, PAYLOAD_HEADROOM_DIVISOR) {
        drop_chunk(s, n);
        level.pause_if_half_full(s.tgid, 0);
        return;
    }
    let ok = by_size_class!(n, emit_class(s, n, level));
    if !ok {
        drop_chunk(s, n);
        level.pause_if_half_full(s.tgid, 0);
    }
}

#[inline(always)]
fn drop_chunk(s: &mut Copy, n: u64) {
    s.acct.lost_ring += n;
    count(stat::CHUNKS_DROPPED, 1);
    count(stat::CHUNK_BYTES_DROPPED, n);
}

/// Reserves a record with room for `C` payload bytes and fills `n <= C` of them.
#[inline(always)]
fn emit_class<const C: usize>(s: &mut Copy, n: u64, level: RingLevel) -> bool {
    let len = (DATA_CHUNK_SIZE + C) as u64;
    let rec = unsafe { bpf_ringbuf_reserve(&EVENTS as *const _ as *mut c_void, len, 0) };
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
        (*chunk).call_bytes = s.acct.call_bytes;
        (*chunk).lost_before_in = s.acct.lost_before_in;
        (*chunk).lost_before_out = s.acct.lost_before_out;
        (*chunk).sys = s.sys;
        (*chunk).flags = (s.acct.reopened as u32) & retrace_common::FD_REOPENED;
        (*chunk).position_arg = s.position_arg;
        let dst = (rec as *mut u8).add(DATA_CHUNK_SIZE);
        if n as usize <= C && raw_read_user(dst.cast(), n, s.cur_base as *const c_void) == 0 {
            bpf_ringbuf_submit(rec, level.wakeup_flags(len));
            s.acct.captured += n as u64;
            count(stat::CAPTURED_BYTES, n as u64);
            level.pause_if_half_full(s.tgid, len);
        } else {
            bpf_ringbuf_discard(rec, 0);
            s.acct.lost_fault += n as u64;
            count(stat::FAULT_BYTES, n as u64);
        }
    }
    true
}
