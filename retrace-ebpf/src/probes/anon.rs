//! eventfd, memfd_create, epoll_create, timerfd_create, signalfd, inotify_init, pidfd_open: fds
//! that name no file or peer. Followed so the agent knows what took an fd number (it could only
//! ask /proc later, when the number may hold something else) and names the stream for it.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_aux, no_extra, on_meta};
use crate::emit::Aux;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_eventfd(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Eventfd, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_eventfd2(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Eventfd2, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_memfd_create(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::MemfdCreate, |c| Aux::UserPath(c.args[0]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_epoll_create(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::EpollCreate, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_epoll_create1(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::EpollCreate1, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_timerfd_create(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::TimerfdCreate, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_signalfd(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Signalfd, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_signalfd4(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Signalfd4, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_inotify_init(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::InotifyInit, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_inotify_init1(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::InotifyInit1, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_pidfd_open(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::PidfdOpen, no_aux, no_extra, false)
}
