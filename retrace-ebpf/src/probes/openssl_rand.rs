//! OpenSSL's random generator (uprobes on libcrypto): the bytes RAND_bytes and RAND_bytes_ex
//! returned (not RAND_priv_bytes: private keys come from it), so replay can return them again. OpenSSL mixes the CPU's
//! time-stamp counter and thread addresses into its generator, so the same getrandom bytes do
//! not give the same output: a client nonce (PostgreSQL SCRAM) is only the same if these are.
//! Recorded as `RAND_bytes` calls with the bytes as their random payload (up to 4 KiB a
//! call), under the same switch as getrandom's.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use retrace_common::syscall::Sys;

use crate::{
    call::{traced, Call},
    emit::{self, Aux},
    maps::{RandCall, RAND_CALLS},
};

#[inline(always)]
fn enter(buf: u64, num: u64) -> u32 {
    if traced().is_none() {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let call = match RAND_CALLS.get_ptr_mut(&id) {
        // A nested call (RAND_bytes → RAND_bytes_ex): the outer one is recorded.
        Some(c) => unsafe {
            (*c).depth += 1;
            return 0;
        },
        None => RandCall { buf, num, depth: 1, _pad: 0 },
    };
    let _ = RAND_CALLS.insert(&id, &call, 0);
    0
}

/// RAND_bytes(buf, int num).
#[uprobe]
pub fn rand_bytes_enter(ctx: ProbeContext) -> u32 {
    let buf: u64 = ctx.arg(0).unwrap_or(0);
    let num: i32 = ctx.arg(1).unwrap_or(0);
    enter(buf, num.max(0) as u64)
}

/// RAND_bytes_ex(libctx, buf, size_t num, strength).
#[uprobe]
pub fn rand_bytes_ex_enter(ctx: ProbeContext) -> u32 {
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let num: u64 = ctx.arg(2).unwrap_or(0);
    enter(buf, num)
}

/// Either returning: 1 is success, with `num` bytes at `buf`.
#[uretprobe]
pub fn rand_bytes_exit(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(c) = RAND_CALLS.get_ptr_mut(&id) else { return 0 };
    // SAFETY: a value of our map, for this thread only.
    let (buf, num, depth) = unsafe { ((*c).buf, (*c).num, (*c).depth) };
    if depth > 1 {
        unsafe { (*c).depth = depth - 1 };
        return 0;
    }
    let _ = RAND_CALLS.remove(&id);
    let ok: i32 = ctx.ret();
    if ok != 1 || traced().is_none() {
        return 0;
    }
    let call = Call {
        tgid: (id >> 32) as u32,
        tid: id as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        args: [buf, num, 0, 0, 0, 0],
        ret: num as i64,
    };
    emit::syscall(&call, Sys::OpensslRand, Aux::UserBytes(buf, num), [0, 0], None, None);
    0
}
