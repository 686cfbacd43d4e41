//! sendto, sendmsg, sendmmsg: bytes the process sent, with datagram destination addresses.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_sendto(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendto, Source::Buffer, 1, 2, Addr::ByValue(4, 5))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_sendmsg(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendmsg, Source::Msghdr, 1, 1, Addr::None)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_sendmmsg(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Sendmmsg, Source::Mmsghdr, 1, 2, Addr::None)
}
