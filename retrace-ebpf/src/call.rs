//! What every syscall probe starts with: the filter on traced processes, and the call's
//! arguments, stashed per thread at syscall entry and picked up at exit.
//!
//! Syscall tracepoints are used rather than fentry/fexit: tracing programs are refused on
//! kernels that forbid BPF trampolines, while syscall tracepoints are a stable ABI everywhere.
//! Every `sys_enter_*` record has the same layout (six 8-byte argument slots from offset 16),
//! so one entry program serves every syscall.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{ARGS, TRACED};

/// Offsets in the syscall tracepoint records.
const NR_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;
const RET_OFFSET: usize = 16;

/// A finished (or, for calls that never return, starting) syscall of a traced task.
pub struct Call {
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub args: [u64; 6],
    pub ret: i64,
}

/// Arguments saved at entry, keyed by thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SavedArgs {
    pub nr: u64,
    pub args: [u64; 6],
}

#[inline(always)]
fn traced() -> Option<(u64, u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    unsafe { TRACED.get(&tgid) }?;
    Some((id, tgid, id as u32))
}

#[inline(always)]
fn read_args(ctx: &TracePointContext) -> [u64; 6] {
    let arg = |i: usize| unsafe { ctx.read_at::<u64>(ARGS_OFFSET + 8 * i) }.unwrap_or(0);
    [arg(0), arg(1), arg(2), arg(3), arg(4), arg(5)]
}

/// Attached to the `sys_enter_*` tracepoint of every syscall Retrace follows.
#[tracepoint(category = "syscalls", name = "sys_enter")]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let Some((id, _, _)) = traced() else { return 0 };
    let nr: i32 = unsafe { ctx.read_at(NR_OFFSET) }.unwrap_or(-1);
    let saved = SavedArgs { nr: nr as u64, args: read_args(&ctx) };
    let _ = ARGS.insert(&id, &saved, 0);
    0
}

impl Call {
    /// For `sys_exit_*`: `None` when the task is not traced or its entry was not seen.
    #[inline(always)]
    pub fn exit(ctx: &TracePointContext) -> Option<Call> {
        let (id, tgid, tid) = traced()?;
        let saved = *unsafe { ARGS.get(&id) }?;
        let _ = ARGS.remove(&id);
        let nr: i32 = unsafe { ctx.read_at(NR_OFFSET) }.unwrap_or(-1);
        if saved.nr != nr as u64 {
            return None;
        }
        let ret: i64 = unsafe { ctx.read_at(RET_OFFSET) }.unwrap_or(0);
        Some(Call { tgid, tid, ts_ns: unsafe { bpf_ktime_get_ns() }, args: saved.args, ret })
    }

    /// For `sys_enter_*` of calls that never return (exit_group).
    #[inline(always)]
    pub fn entry(ctx: &TracePointContext) -> Option<Call> {
        let (_, tgid, tid) = traced()?;
        Some(Call { tgid, tid, ts_ns: unsafe { bpf_ktime_get_ns() }, args: read_args(ctx), ret: 0 })
    }
}
