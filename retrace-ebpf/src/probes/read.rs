//! read, pread64, readv, preadv, preadv2: bytes the process read from an fd.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Read, Source::Buffer, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_pread64")]
pub fn sys_exit_pread64(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Pread64, Source::Buffer, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_readv")]
pub fn sys_exit_readv(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Readv, Source::Iovec, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_preadv")]
pub fn sys_exit_preadv(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Preadv, Source::Iovec, 1, 2, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_preadv2")]
pub fn sys_exit_preadv2(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Preadv2, Source::Iovec, 1, 2, Addr::None)
}
