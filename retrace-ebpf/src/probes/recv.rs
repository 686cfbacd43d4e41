//! recvfrom, recvmsg, recvmmsg: bytes the process received, with datagram source addresses.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[tracepoint(category = "syscalls", name = "sys_exit_recvfrom")]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvfrom, Source::Buffer, 1, 2, Addr::ByPointer(4, 5))
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvmsg")]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvmsg, Source::Msghdr, 1, 1, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvmmsg")]
pub fn sys_exit_recvmmsg(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Recvmmsg, Source::Mmsghdr, 1, 2, Addr::None)
}
