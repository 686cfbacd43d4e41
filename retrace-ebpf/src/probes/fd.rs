//! close, close_range, dup, dup2, dup3, fcntl, pipe, pipe2: the fd table; lseek: file positions.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::{
    data::{no_aux, no_extra, on_meta},
    socket::two_fds,
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_close(ctx: RawTracePointContext) -> u32 {
    // A close carries the fd's pending loss, so lost bytes land on the right stream.
    on_meta(&ctx, Sys::Close, no_aux, no_extra, true)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_close_range(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::CloseRange, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_dup(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_dup2(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup2, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_dup3(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Dup3, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_fcntl(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Fcntl, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pipe(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Pipe, no_aux, |c| two_fds(c.args[0], c.ret), false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pipe2(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Pipe2, no_aux, |c| two_fds(c.args[0], c.ret), false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_lseek(ctx: RawTracePointContext) -> u32 {
    // The new position: replay rebuilds a file's content from reads placed where they were.
    on_meta(&ctx, Sys::Lseek, no_aux, no_extra, false)
}
