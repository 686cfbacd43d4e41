//! What every syscall probe starts with: the filter on traced processes, and the call's
//! arguments and result.
//!
//! Syscalls are hooked on the raw `sys_exit` tracepoint: one dispatcher tail-calls the
//! program of the syscall that is returning (`SYSCALL_EXITS`, indexed by syscall number).
//! The arguments are read from the user registers the kernel saved at entry, which syscalls
//! leave untouched, so no entry hook or per-thread map is needed. Raw tracepoints are not
//! perf events: attaching and detaching them is cheap (per-syscall trace events cost an RCU
//! grace period each to detach), and fentry/fexit are refused on kernels without BPF
//! trampolines.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::{RawTracePointContext, TracePointContext},
};

use crate::maps::{SYSCALL_EXITS, TRACED};

/// A finished (or, for calls that never return, starting) syscall of a traced task.
pub struct Call {
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub args: [u64; 6],
    pub ret: i64,
}

#[inline(always)]
pub fn traced() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let word = TRACED.get(tgid >> 6)?;
    if word & (1 << (tgid & 63)) == 0 {
        return None;
    }
    Some((tgid, id as u32))
}

/// Sets or clears a process's bit in `TRACED`, atomically: the agent and other CPUs change
/// other bits of the same word at the same time.
#[inline(always)]
pub fn set_traced(tgid: u32, on: bool) {
    let Some(word) = TRACED.get_ptr_mut(tgid >> 6) else { return };
    let bit = 1u64 << (tgid & 63);
    use core::intrinsics::{atomic_and, atomic_or, AtomicOrdering::Relaxed};
    // SAFETY: a map value, 8-byte aligned, changed by other CPUs and user space only through
    // atomic operations.
    unsafe {
        if on {
            atomic_or::<u64, u64, { Relaxed }>(word, bit);
        } else {
            atomic_and::<u64, u64, { Relaxed }>(word, !bit);
        }
    }
}

/// The argument registers as `struct pt_regs` lays them out on x86_64, from `r10` to `rdi`:
/// read with one helper call instead of six.
#[repr(C)]
#[derive(Default)]
struct ArgRegs {
    r10: u64,
    r9: u64,
    r8: u64,
    _rax: u64,
    _rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
}

#[inline(always)]
fn read_args(regs: *const pt_regs) -> [u64; 6] {
    // SAFETY: reads kernel memory through the helper (a fault gives zeros).
    let r: ArgRegs = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).r10).cast()) }.unwrap_or_default();
    [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9]
}

/// `raw_syscalls:sys_exit(struct pt_regs *regs, long ret)`: hands traced tasks' syscalls to
/// their program.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    if traced().is_none() {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    let nr = unsafe { bpf_probe_read_kernel(&(*regs).orig_rax) }.unwrap_or(u64::MAX);
    if nr < 512 {
        unsafe { SYSCALL_EXITS.tail_call(&ctx, nr as u32) };
    }
    0
}

impl Call {
    /// In a `sys_exit_*` program. Those run only as tail calls from `sys_exit`, which already
    /// checked that the task is traced: no second lookup.
    #[inline(always)]
    pub fn exit(ctx: &RawTracePointContext) -> Call {
        let id = bpf_get_current_pid_tgid();
        let regs: *const pt_regs = ctx.arg(0);
        let ret: i64 = ctx.arg(1);
        Call {
            tgid: (id >> 32) as u32,
            tid: id as u32,
            ts_ns: unsafe { bpf_ktime_get_ns() },
            args: read_args(regs),
            ret,
        }
    }

    /// In `syscalls:sys_enter_exit_group`, whose record holds the status at offset 16.
    #[inline(always)]
    pub fn entry_exit_group(ctx: &TracePointContext) -> Option<Call> {
        let (tgid, tid) = traced()?;
        let status: u64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
        Some(Call { tgid, tid, ts_ns: unsafe { bpf_ktime_get_ns() }, args: [status, 0, 0, 0, 0, 0], ret: 0 })
    }
}
