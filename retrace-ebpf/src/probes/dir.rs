//! getdents64: a folder's entries as the program read them, so that replay lists the folder as
//! it was (names, types and order), whatever the disk holds by then.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{on_data, Addr};
use crate::copy::Source;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_getdents64(ctx: RawTracePointContext) -> u32 {
    on_data(&ctx, Sys::Getdents64, Source::Buffer, 1, 2, Addr::None)
}
