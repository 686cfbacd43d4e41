//! close, close_range, dup, dup2, dup3, fcntl, pipe, pipe2: the fd table.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::{
    data::{no_aux, no_extra, on_meta},
    socket::two_fds,
};

#[tracepoint(category = "syscalls", name = "sys_exit_close")]
pub fn sys_exit_close(ctx: TracePointContext) -> u32 {
    // A close carries the fd's pending loss, so lost bytes land on the right stream.
    on_meta(&ctx, Sys::Close, no_aux, no_extra, true)
}

#[tracepoint(category = "syscalls", name = "sys_exit_close_range")]
pub fn sys_exit_close_range(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::CloseRange, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup")]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup2")]
pub fn sys_exit_dup2(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup2, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_dup3")]
pub fn sys_exit_dup3(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup3, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_fcntl")]
pub fn sys_exit_fcntl(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Fcntl, no_aux, no_extra, false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pipe")]
pub fn sys_exit_pipe(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Pipe, no_aux, |c| two_fds(c.args[0], c.ret), false)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pipe2")]
pub fn sys_exit_pipe2(ctx: TracePointContext) -> u32 {
    on_meta(&ctx, Sys::Pipe2, no_aux, |c| two_fds(c.args[0], c.ret), false)
}
