//! open, openat, openat2, creat (with the path as given), chdir and fchdir (so the agent can
//! make relative paths absolute).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_extra, on_meta};
use crate::emit::Aux;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_open(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Open, |c| Aux::UserPath(c.args[0]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_openat(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Openat, |c| Aux::UserPath(c.args[1]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_openat2(ctx: RawTracePointContext) -> u32 {
    // struct open_how starts with the u64 flags: keep them where openat has its flags.
    on_meta(&ctx, Sys::Openat2, |c| Aux::UserPath(c.args[1]), |c| [crate::emit::user_i32(c.args[2]), 0], false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_creat(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Creat, |c| Aux::UserPath(c.args[0]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_chdir(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Chdir, |c| Aux::UserPath(c.args[0]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_fchdir(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Fchdir, super::data::no_aux, no_extra, false)
}
