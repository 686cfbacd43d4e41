//! write, pwrite64, writev, pwritev, pwritev2: bytes the process wrote to an fd.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_write(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Write, Source::Buffer, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pwrite64(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwrite64, Source::Buffer, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_writev(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Writev, Source::Iovec, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pwritev(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwritev, Source::Iovec, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pwritev2(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Pwritev2, Source::Iovec, 1, 2, Addr::None)
}
