//! The plaintext of TLS connections: uprobes on the libraries' read and write calls, entry and
//! return. OpenSSL 1.1/3.x and BoringSSL (`SSL_read`, `SSL_write` and their `_ex` forms) and
//! GnuTLS (`gnutls_record_recv`, `gnutls_record_send`), in shared libraries or linked into a
//! program (the agent finds the symbols in each ELF file and attaches there); Go's crypto/tls
//! (`(*Conn).Read`, `(*Conn).Write`), whose returns are probed at their RET instructions (a
//! uretprobe rewrites the return address on a stack Go may move) and whose calls are keyed by
//! goroutine.
//!
//! Entry notes the call per thread (`TLS_CALLS`); the data syscalls the library makes inside it
//! name its socket (`note_socket`), remembered per session (`TLS_FD`) for reads the library
//! serves from its buffer; return records the bytes moved, from the caller's buffer, as a data
//! call of the socket's fd with the session in `args[3]`. Every record goes straight into the
//! ring (no per-CPU scratch: a uprobe program can be preempted), and a TLS record the ring had
//! no room for leaves its bytes in `TLS_PENDING` for the session's next record.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_loop},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use retrace_common::{
    config::{stat, CHUNK_MAX},
    syscall::{Direction, Sys},
    PendingLoss, TlsKey,
};

use crate::{
    call::{traced, Call},
    copy::{emit_chunk, Source},
    emit::{self, DataAccount, Pieces},
    maps::{
        count, payload_kept, TlsCall, COPY_STATE, GO_TLS_CALLS, SK_OF_CALL, TLS_ANY, TLS_CALLS, TLS_COPY, TLS_FD,
        TLS_PENDING,
    },
};

#[inline(always)]
fn enter(sys: Sys, session: u64, buf: u64, count_ptr: u64, ret_is_int: bool) -> u32 {
    if traced().is_none() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    if let Some(c) = TLS_CALLS.get_ptr_mut(&id) {
        // SAFETY: this thread's entry.
        unsafe { (*c).depth += 1 };
        return 0;
    }
    let call = TlsCall {
        session,
        buf,
        count_ptr,
        sys: sys as u32,
        fd: -1,
        depth: 1,
        ret_is_int: ret_is_int as u32,
        entered_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = TLS_CALLS.insert(&id, &call, 0);
    if let Some(any) = TLS_ANY.get_ptr_mut(0) {
        unsafe {
            if *any == 0 {
                *any = 1;
            }
        }
    }
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::SslRead, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, true)
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::SslWrite, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, true)
}

/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::SslRead, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0), true)
}

/// `int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::SslWrite, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), ctx.arg(3).unwrap_or(0), true)
}

/// `ssize_t gnutls_record_recv(gnutls_session_t session, void *data, size_t size)`.
#[uprobe]
pub fn gnutls_recv_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::GnutlsRecv, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, false)
}

/// `ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t size)`.
#[uprobe]
pub fn gnutls_send_enter(ctx: ProbeContext) -> u32 {
    enter(Sys::GnutlsSend, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), 0, false)
}

/// Called by every data syscall of a traced process: inside a TLS call, a socket call's fd is
/// the session's socket (other calls, such as a time zone file read, are not).
#[inline(always)]
pub fn note_socket(fd: i32) {
    if TLS_ANY.get(0).is_none_or(|any| *any == 0) {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    // The socket hooks tag the CPU's slot with the thread whose socket call it is.
    let Some(slot) = SK_OF_CALL.get(0) else { return };
    if slot.tid != id as u32 || slot.sk == 0 {
        return;
    }
    if let Some(c) = TLS_CALLS.get_ptr_mut(&id) {
        // SAFETY: this thread's entry.
        unsafe { (*c).fd = fd };
    }
}

/// Any of the C libraries' calls returning.
#[uretprobe]
pub fn tls_exit(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(c) = TLS_CALLS.get_ptr_mut(&id) else { return 0 };
    // SAFETY: this thread's entry.
    let call = unsafe { *c };
    if call.depth > 1 {
        unsafe { (*c).depth = call.depth - 1 };
        return 0;
    }
    let _ = TLS_CALLS.remove(&id);
    let ret: i64 = ctx.ret();
    finish(id, &call, ret);
    0
}

/// `func (c *Conn) Read(b []byte) (int, error)` in Go's crypto/tls, register ABI (Go 1.17+,
/// amd64: the receiver in RAX, the slice's pointer and length in RBX and RCX, the goroutine
/// in R14). The agent checks the function's prologue reads `g` from R14 before probing it.
#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Sys::GoTlsRead)
}

/// `func (c *Conn) Write(b []byte) (int, error)`.
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, Sys::GoTlsWrite)
}

#[inline(always)]
fn go_enter(ctx: &ProbeContext, sys: Sys) -> u32 {
    if traced().is_none() {
        return 0;
    }
    // SAFETY: a uprobe's context is the user registers.
    let (conn, buf, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    let key = TlsKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, _pad: 0, session: g };
    // Entered again after the stack grew (the prologue calls morestack, which restarts the
    // function): the same call, the same values.
    let call = TlsCall {
        session: conn,
        buf,
        count_ptr: 0,
        sys: sys as u32,
        fd: go_socket(conn),
        depth: 1,
        ret_is_int: 0,
        entered_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = GO_TLS_CALLS.insert(&key, &call, 0);
    0
}

/// The socket under a `*tls.Conn` whose `conn` (its first field, an interface) is one of the
/// net package's connections: `iface.data → *net.TCPConn{conn{fd *netFD}}`, and
/// `netFD{pfd poll.FD{fdmu fdMutex (16 bytes), Sysfd int}}`. -1 where that does not hold.
#[inline(always)]
fn go_socket(conn: u64) -> i32 {
    let read = |at: u64| unsafe { bpf_probe_read_user(at as *const u64) }.ok();
    let Some(data) = read(conn + 8) else { return -1 };
    let Some(net_fd) = read(data) else { return -1 };
    match read(net_fd + 16) {
        Some(fd) if fd < (1 << 24) => fd as i32,
        _ => -1,
    }
}

/// Any RET instruction of those functions: the results are in registers (RAX the count).
#[uprobe]
pub fn go_tls_return(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a uprobe's context is the user registers.
    let (n, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let key = TlsKey { tgid: (id >> 32) as u32, _pad: 0, session: g };
    let Some(call) = (unsafe { GO_TLS_CALLS.get(&key) }).copied() else { return 0 };
    let _ = GO_TLS_CALLS.remove(&key);
    finish(id, &call, n as i64);
    0
}

/// A call returned `ret`: its bytes, if it moved any, are recorded on its socket.
#[inline(always)]
fn finish(id: u64, call: &TlsCall, ret: i64) {
    let Some(sys) = Sys::from_u32(call.sys) else { return };
    let ret = if call.ret_is_int != 0 { ret as i32 as i64 } else { ret };
    let moved = if call.count_ptr != 0 {
        if ret != 1 {
            return;
        }
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    let tgid = (id >> 32) as u32;
    let key = TlsKey { tgid, _pad: 0, session: call.session };
    let fd = if call.fd >= 0 {
        let _ = TLS_FD.insert(&key, &call.fd, 0);
        call.fd
    } else {
        unsafe { TLS_FD.get(&key) }.copied().unwrap_or(-1)
    };
    if moved == 0 || traced().is_none() {
        return;
    }
    // What was written was sent during the call, what was read came by its end.
    let ts_ns = match sys.direction() {
        Some(Direction::Out) => call.entered_ns,
        _ => unsafe { bpf_ktime_get_ns() },
    };
    let call = Call {
        tgid,
        tid: id as u32,
        ts_ns,
        args: [fd as i64 as u64, call.buf, moved, call.session, 0, 0],
        ret: moved as i64,
    };
    record(&call, sys, &key, moved);
}

/// Writes a TLS call's record and payload.
#[inline(always)]
fn record(call: &Call, sys: Sys, key: &TlsKey, moved: u64) {
    let (kept, rate_limited) = payload_kept(call.tgid, call.ts_ns, moved);
    let pending = take_pending(key);
    let buf = call.args[1];
    let acct = if kept <= CHUNK_MAX as u64 {
        match emit::data_call_carrying(call, sys, Pieces::One(buf), moved, kept, rate_limited, pending) {
            None => return,
            Some(acct) => acct,
        }
    } else {
        match copy_large(call, sys, buf, moved, kept, rate_limited, pending) {
            Some(acct) => acct,
            None => return,
        }
    };
    if emit::data_record_direct(call, sys, &acct) {
        return;
    }
    count(stat::RECORDS_DROPPED, 1);
    // Chunks that got through tell the agent the call's size and the loss it carried.
    if acct.captured > 0 {
        return;
    }
    let (mut lost_in, mut lost_out) = (acct.lost_before_in, acct.lost_before_out);
    match sys.direction() {
        Some(Direction::In) => lost_in += moved,
        _ => lost_out += moved,
    }
    let value = match unsafe { TLS_PENDING.get(key) } {
        Some(v) => PendingLoss {
            bytes_in: v.bytes_in + lost_in,
            bytes_out: v.bytes_out + lost_out,
            calls: v.calls + 1,
            reopened: 0,
        },
        None => PendingLoss { bytes_in: lost_in, bytes_out: lost_out, calls: 1, reopened: 0 },
    };
    let _ = TLS_PENDING.insert(key, &value, 0);
}

#[inline(always)]
fn take_pending(key: &TlsKey) -> (u64, u64, u64) {
    match unsafe { TLS_PENDING.get(key) } {
        Some(v) => {
            let v = *v;
            let _ = TLS_PENDING.remove(key);
            (v.bytes_in, v.bytes_out, 0)
        }
        None => (0, 0, 0),
    }
}

/// A call larger than one chunk: its payload in chunks, walked by `bpf_loop` with the state
/// in this thread's `TLS_COPY` entry. Returns the call's accounting.
#[inline(always)]
fn copy_large(
    call: &Call,
    sys: Sys,
    buf: u64,
    moved: u64,
    kept: u64,
    rate_limited: bool,
    (lost_before_in, lost_before_out, _): (u64, u64, u64),
) -> Option<DataAccount> {
    let id = bpf_get_current_pid_tgid();
    // The entry is made from any value (the per-CPU copier's slot: the stack has no room for
    // one), then every field is set in place.
    let any = COPY_STATE.get_ptr(0)?;
    TLS_COPY.insert(&id, unsafe { &*any }, 0).ok()?;
    let s = unsafe { &mut *TLS_COPY.get_ptr_mut(&id)? };
    let flags = if rate_limited { retrace_common::SYSCALL_RATE_LIMITED as u64 } else { 0 };
    s.reset(
        call,
        sys as u32,
        call.args[0] as i32,
        Source::Buffer,
        moved,
        kept,
        (lost_before_in, lost_before_out, flags),
    );
    s.buffer(buf, moved);
    let steps = (moved / CHUNK_MAX as u64 + 2) as u32;
    let step_fn = step as extern "C" fn(u64, *mut c_void) -> i64;
    let callback = unsafe { core::mem::transmute::<extern "C" fn(u64, *mut c_void) -> i64, *mut c_void>(step_fn) };
    unsafe { bpf_loop(steps, callback, core::ptr::null_mut(), 0) };
    let s = unsafe { &mut *TLS_COPY.get_ptr_mut(&id)? };
    let mut acct = s.acct;
    let _ = TLS_COPY.remove(&id);
    let accounted = acct.captured + acct.lost_ring + acct.lost_fault + acct.truncated;
    if acct.bytes > accounted {
        acct.truncated += acct.bytes - accounted;
    }
    Some(acct)
}

extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = TLS_COPY.get_ptr_mut(&id) else { return 1 };
    let s = unsafe { &mut *slot };
    if s.cur_left == 0 {
        return 1;
    }
    if s.cap_left == 0 {
        s.acct.truncated += s.cur_left;
        s.cur_left = 0;
        return 1;
    }
    let mut n = if s.cur_left < CHUNK_MAX as u64 { s.cur_left } else { CHUNK_MAX as u64 };
    if n > s.cap_left {
        n = s.cap_left;
    }
    emit_chunk(s, n);
    s.cur_base += n;
    s.cur_left -= n;
    s.offset += n;
    s.cap_left -= n;
    0
}
