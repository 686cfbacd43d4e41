//! Wall-clock reads: what `clock_gettime(CLOCK_REALTIME…)`, `gettimeofday` and `time` returned,
//! so replay can return the same times. Programs read the clock through the vDSO, without a
//! system call; `record` patches a traced program's vDSO at exec (as the replayer does) so
//! these calls reach the kernel. Other clocks (monotonic, CPU time) are not recorded.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use super::data::{no_aux, no_extra, on_meta};
use crate::{
    call::Call,
    emit::{self, Aux},
};

const CLOCK_REALTIME: u64 = 0;
const CLOCK_REALTIME_COARSE: u64 = 5;
/// `struct timespec` and `struct timeval` on x86_64.
const TIME_PAIR_SIZE: u64 = 16;

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_clock_gettime(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    let clock = call.args[0] & 0xffff_ffff;
    if clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE {
        return 0;
    }
    let aux = Aux::UserBytes(call.args[1], if call.ret == 0 { TIME_PAIR_SIZE } else { 0 });
    emit::syscall(&call, Sys::ClockGettime, aux, [0, 0], None, None);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_gettimeofday(ctx: RawTracePointContext) -> u32 {
    on_meta(
        &ctx,
        Sys::Gettimeofday,
        |c| Aux::UserBytes(c.args[0], if c.ret == 0 && c.args[0] != 0 { TIME_PAIR_SIZE } else { 0 }),
        no_extra,
        false,
    )
}

/// `time` returns the seconds: the record's result holds them.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_time(ctx: RawTracePointContext) -> u32 {
    on_meta(&ctx, Sys::Time, no_aux, no_extra, false)
}
