//! sendto, sendmsg, sendmmsg: bytes the process sent, with datagram destination addresses.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendto, Source::Buffer, 1, 2, Addr::ByValue(4, 5))
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendmsg, Source::Msghdr, 1, 1, Addr::None)
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendmmsg")]
pub fn sys_exit_sendmmsg(ctx: TracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendmmsg, Source::Mmsghdr, 1, 2, Addr::None)
}
