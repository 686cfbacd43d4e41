//! socket, socketpair, connect, accept, accept4, bind, listen, shutdown: socket identity and
//! addresses.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use retrace_common::syscall::Sys;
use retrace_common::SockTuple;

use super::data::{no_aux, no_extra, on_meta};
use crate::{
    emit::{user_i32, Aux},
    maps::{SkSlot, SK_OF_CALL, SK_TUPLES},
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_socket(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Socket, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_socketpair(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Socketpair, no_aux, |c| two_fds(c.args[3], c.ret), false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_connect(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Connect, |c| Aux::UserAddr(c.args[1], c.args[2]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_bind(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Bind, |c| Aux::UserAddr(c.args[1], c.args[2]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_accept(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Accept, accepted_addr, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_accept4(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Accept4, accepted_addr, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_listen(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Listen, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_shutdown(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Shutdown, no_aux, no_extra, false)
}

/// The peer address accept wrote back, when the caller asked for it.
fn accepted_addr(c: &crate::call::Call) -> Aux {
    if c.ret < 0 || c.args[1] == 0 {
        return Aux::None;
    }
    let len = user_i32(c.args[2]);
    if len <= 0 {
        return Aux::None;
    }
    Aux::UserAddr(c.args[1], len as u64)
}

/// The two fds pipe/socketpair wrote to user memory.
pub fn two_fds(ptr: u64, ret: i64) -> [i64; 2] {
    if ret != 0 {
        return [-1, -1];
    }
    [user_i32(ptr), user_i32(ptr + 4)]
}

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_LISTEN: i32 = 10;
const AF_INET: u16 = 2;

/// Every TCP state change on the machine: the addresses by socket, for the records of traced
/// tasks' socket calls. connect (-> SYN_SENT) and listen (-> LISTEN) run in the caller's
/// context: the socket is also remembered for that thread's syscall record.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let newstate: i32 = unsafe { ctx.read_at(20) }.unwrap_or(0);
    if newstate != TCP_ESTABLISHED && newstate != TCP_SYN_SENT && newstate != TCP_LISTEN {
        return 0;
    }
    let sk: u64 = unsafe { ctx.read_at(8) }.unwrap_or(0);
    let mut t = SockTuple {
        family: unsafe { ctx.read_at(28) }.unwrap_or(0),
        sport: unsafe { ctx.read_at(24) }.unwrap_or(0),
        dport: unsafe { ctx.read_at(26) }.unwrap_or(0),
        ..SockTuple::default()
    };
    if t.family == AF_INET {
        let s: [u8; 4] = unsafe { ctx.read_at(32) }.unwrap_or([0; 4]);
        let d: [u8; 4] = unsafe { ctx.read_at(36) }.unwrap_or([0; 4]);
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else {
        t.saddr = unsafe { ctx.read_at(40) }.unwrap_or([0; 16]);
        t.daddr = unsafe { ctx.read_at(56) }.unwrap_or([0; 16]);
    }
    let _ = SK_TUPLES.insert(&sk, &t, 0);
    if newstate != TCP_ESTABLISHED {
        remember_socket(sk);
    }
    0
}

/// `sock_sendmsg`/`sock_recvmsg` of any socket, in the caller's context:
/// `(struct sock *sk, int ret, int flags)`. Raw tracepoints: these fire for every socket call on
/// the machine, and a perf-event tracepoint costs several times more per call.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> u32 {
    remember_socket(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> u32 {
    remember_socket(ctx.arg(0));
    0
}

#[inline(always)]
fn remember_socket(sk: u64) {
    if let Some(slot) = SK_OF_CALL.get_ptr_mut(0) {
        unsafe { *slot = SkSlot { tid: bpf_get_current_pid_tgid() as u32, _pad: 0, sk } };
    }
}
