//! sysinfo: the `struct sysinfo` the kernel returned (uptime, load averages, memory, process
//! count), so replay can return it again (glibc's getloadavg reads the load through it).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_extra, on_meta};
use crate::emit::Aux;

/// `sizeof(struct sysinfo)` on x86_64.
const SYSINFO_SIZE: u64 = 112;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_sysinfo(ctx: RawTracePointContext) -> u32 {
    on_meta(
        &ctx,
        Sys::Sysinfo,
        |c| Aux::UserBytes(c.args[0], if c.ret == 0 { SYSINFO_SIZE } else { 0 }),
        no_extra,
        false,
    )
}
