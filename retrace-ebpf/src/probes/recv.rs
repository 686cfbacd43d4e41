//! recvfrom, recvmsg, recvmmsg: bytes the process received, with datagram source addresses.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvfrom(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvfrom, Source::Buffer, 1, 2, Addr::ByPointer(4, 5))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvmsg(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvmsg, Source::Msghdr, 1, 1, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvmmsg(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvmmsg, Source::Mmsghdr, 1, 2, Addr::None)
}
