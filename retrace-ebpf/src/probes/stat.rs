//! fstat, and newfstatat/statx of an fd (AT_EMPTY_PATH with an empty path): the size and
//! modification time the program saw its file to have, read from its own buffer. A program that knows a file's size
//! reads no further than its end (sqlite), so this is how the agent learns where the file
//! ended. Stats of paths are not recorded (they name no stream).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use crate::{
    call::Call,
    emit::{self, Aux},
};

const AT_EMPTY_PATH: u64 = 0x1000;
/// `struct stat`'s st_size and st_mtim (x86_64).
const STAT_SIZE_AT: u64 = 48;
const STAT_MTIME_AT: u64 = 88;
/// `struct statx`'s stx_mask, stx_size and stx_mtime.
const STATX_MASK_AT: u64 = 0;
const STATX_SIZE_AT: u64 = 40;
const STATX_MTIME_AT: u64 = 112;
const STATX_SIZE: u32 = 0x200;
const STATX_MTIME: u32 = 0x40;
/// Where a record says "no modification time" (a statx that did not return it).
const NO_MTIME: i64 = i64::MIN;

#[inline(always)]
fn user<T: Copy>(ptr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(ptr as *const T) }.ok()
}

/// Whether `path` is the empty string (the call is about its fd argument).
#[inline(always)]
fn empty(path: u64) -> bool {
    user::<u8>(path) == Some(0)
}

/// A `struct timespec` at `ptr` (seconds, then nanoseconds) in ns since the epoch.
#[inline(always)]
fn timespec_ns(ptr: u64) -> i64 {
    match (user::<i64>(ptr), user::<i64>(ptr + 8)) {
        (Some(sec), Some(nsec)) => sec * 1_000_000_000 + (nsec & 0xffff_ffff),
        _ => NO_MTIME,
    }
}

#[inline(always)]
fn emit_size(call: &Call, sys: Sys, size: Option<i64>, mtime_ns: i64) -> u32 {
    if let (0, Some(size)) = (call.ret, size) {
        emit::syscall(call, sys, Aux::None, [size, mtime_ns], None, None);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_fstat(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    let size = user::<i64>(call.args[1] + STAT_SIZE_AT);
    emit_size(&call, Sys::Fstat, size, timespec_ns(call.args[1] + STAT_MTIME_AT))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_newfstatat(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    if call.args[3] & AT_EMPTY_PATH == 0 || !empty(call.args[1]) {
        return 0;
    }
    let size = user::<i64>(call.args[2] + STAT_SIZE_AT);
    emit_size(&call, Sys::Newfstatat, size, timespec_ns(call.args[2] + STAT_MTIME_AT))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_statx(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    if call.args[2] & AT_EMPTY_PATH == 0 || !empty(call.args[1]) {
        return 0;
    }
    let buf = call.args[4];
    let mask = user::<u32>(buf + STATX_MASK_AT).unwrap_or(0);
    let size = if mask & STATX_SIZE != 0 { user::<i64>(buf + STATX_SIZE_AT) } else { None };
    // statx_timestamp: i64 seconds, u32 nanoseconds.
    let mtime = if mask & STATX_MTIME != 0 { timespec_ns(buf + STATX_MTIME_AT) } else { NO_MTIME };
    emit_size(&call, Sys::Statx, size, mtime)
}
