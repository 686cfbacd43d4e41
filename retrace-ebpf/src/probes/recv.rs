//! recvfrom, recvmsg, recvmmsg: bytes the process received, with datagram source addresses
//! (a peek, MSG_PEEK, records no bytes: the receive that takes them does).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_receive, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvfrom(ctx: RawTracePointContext) -> u32 {
    on_receive(&ctx, Sys::Recvfrom, Source::Buffer, 1, 2, Addr::ByPointer(4, 5), 3)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvmsg(ctx: RawTracePointContext) -> u32 {
    on_receive(&ctx, Sys::Recvmsg, Source::Msghdr, 1, 1, Addr::None, 2)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_recvmmsg(ctx: RawTracePointContext) -> u32 {
    on_receive(&ctx, Sys::Recvmmsg, Source::Mmsghdr, 1, 2, Addr::None, 3)
}
