//! read, pread64, readv, preadv, preadv2: bytes the process read from an fd.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_read(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Read, Source::Buffer, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pread64(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Pread64, Source::Buffer, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_readv(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Readv, Source::Iovec, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_preadv(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Preadv, Source::Iovec, 1, 2, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_preadv2(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Preadv2, Source::Iovec, 1, 2, Addr::None)
}
