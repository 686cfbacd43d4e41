//! fstat, and newfstatat/statx of an fd (AT_EMPTY_PATH with an empty path): the size the
//! program saw its file to have, read from its own buffer. A program that knows a file's size
//! reads no further than its end (sqlite), so this is how the agent learns where the file
//! ended. Stats of paths are not recorded (they name no stream).

use aya_ebpf::{helpers::bpf_probe_read_user, macros::raw_tracepoint, programs::RawTracePointContext};
use retrace_common::syscall::Sys;

use crate::{
    call::Call,
    emit::{self, Aux},
};

const AT_EMPTY_PATH: u64 = 0x1000;
/// `struct stat`'s st_size (x86_64).
const STAT_SIZE_AT: u64 = 48;
/// `struct statx`'s stx_mask and stx_size.
const STATX_MASK_AT: u64 = 0;
const STATX_SIZE_AT: u64 = 40;
const STATX_SIZE: u32 = 0x200;

#[inline(always)]
fn user<T: Copy>(ptr: u64) -> Option<T> {
    unsafe { bpf_probe_read_user(ptr as *const T) }.ok()
}

/// Whether `path` is the empty string (the call is about its fd argument).
#[inline(always)]
fn empty(path: u64) -> bool {
    user::<u8>(path) == Some(0)
}

#[inline(always)]
fn emit_size(call: &Call, sys: Sys, size: Option<i64>) -> u32 {
    if let (0, Some(size)) = (call.ret, size) {
        emit::syscall(call, sys, Aux::None, [size, 0], None, None);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_fstat(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    let size = user::<i64>(call.args[1] + STAT_SIZE_AT);
    emit_size(&call, Sys::Fstat, size)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_newfstatat(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    if call.args[3] & AT_EMPTY_PATH == 0 || !empty(call.args[1]) {
        return 0;
    }
    let size = user::<i64>(call.args[2] + STAT_SIZE_AT);
    emit_size(&call, Sys::Newfstatat, size)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_statx(ctx: RawTracePointContext) -> u32 {
    let call = Call::exit(&ctx);
    if call.args[2] & AT_EMPTY_PATH == 0 || !empty(call.args[1]) {
        return 0;
    }
    let buf = call.args[4];
    let size = match user::<u32>(buf + STATX_MASK_AT) {
        Some(mask) if mask & STATX_SIZE != 0 => user::<i64>(buf + STATX_SIZE_AT),
        _ => None,
    };
    emit_size(&call, Sys::Statx, size)
}
