//! socket, socketpair, connect, accept, accept4, bind, listen, shutdown: socket identity and
//! addresses.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_aux, no_extra, on_meta};
use crate::emit::{user_i32, Aux};

#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Socket, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_socketpair")]
pub fn sys_exit_socketpair(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Socketpair, no_aux, |c| two_fds(c.args[3], c.ret), false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Connect, |c| Aux::UserAddr(c.args[1], c.args[2]), no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Bind, |c| Aux::UserAddr(c.args[1], c.args[2]), no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Accept, accepted_addr, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Accept4, accepted_addr, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Listen, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_shutdown")]
pub fn sys_exit_shutdown(ctx: TracePointContext) -> u32 {
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
