//! getrandom: the bytes the kernel returned (up to 4 KiB a call), so replay can return them
//! again. They can be key material: `[capture] random = false` in the rules file keeps them out.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_extra, on_meta};
use crate::emit::Aux;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_getrandom(ctx: RawTracePointContext) -> u32 {
    on_meta(
        &ctx,
        Sys::Getrandom,
        |c| Aux::UserBytes(c.args[0], if c.ret > 0 { c.ret as u64 } else { 0 }),
        no_extra,
        false,
    )
}
