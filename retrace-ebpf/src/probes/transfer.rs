//! sendfile, splice, copy_file_range: in-kernel copies, recorded as byte counts (the payload
//! never passes through user memory, so it appears in the recording as an explicit gap).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_aux, no_extra, on_meta};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_sendfile64(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Sendfile, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_splice(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Splice, no_aux, no_extra, false)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_copy_file_range(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::CopyFileRange, no_aux, no_extra, false)
}
