//! mkdir, mkdirat (the folder's path), rename, renameat, renameat2, link, linkat (both paths):
//! what the program made appear in the filesystem besides the files it opened. Replay starts
//! without what the recording created (a `git clone` target, a cache entry renamed into place).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_extra, on_meta};
use crate::emit::Aux;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_mkdir(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Mkdir, |c| Aux::UserPath(c.args[0]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_mkdirat(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Mkdirat, |c| Aux::UserPath(c.args[1]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_rename(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Rename, |c| Aux::UserPaths(c.args[0], c.args[1]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_renameat(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Renameat, |c| Aux::UserPaths(c.args[1], c.args[3]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_renameat2(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Renameat2, |c| Aux::UserPaths(c.args[1], c.args[3]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_link(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Link, |c| Aux::UserPaths(c.args[0], c.args[1]), no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_linkat(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Linkat, |c| Aux::UserPaths(c.args[1], c.args[3]), no_extra, false)
}
