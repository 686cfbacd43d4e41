//! write, pwrite64, writev, pwritev, pwritev2: bytes the process wrote to an fd.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Write, Source::Buffer, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pwrite64")]
pub fn sys_exit_pwrite64(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwrite64, Source::Buffer, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_writev")]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Writev, Source::Iovec, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pwritev")]
pub fn sys_exit_pwritev(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwritev, Source::Iovec, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pwritev2")]
pub fn sys_exit_pwritev2(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwritev2, Source::Iovec, 1, 2, Addr::None)
}
