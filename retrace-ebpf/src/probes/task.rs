//! The process tree: new threads and processes (task_newtask, which runs in the parent before
//! the child can run, so no child syscall escapes the filter), exec, exit, exit_group status.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext as _,
};
use retrace_common::{kind, syscall::Sys, TASK_GROUP_DEAD, TASK_JOINED};

use crate::{
    call::{set_traced, traced, Call},
    emit::{self, Aux},
    maps::{CAPTURE_OF, CGROUPS, CGROUPS_ANY, OWN_GROUP},
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = traced() else { return 0 };
    let pid: i32 = unsafe { ctx.read_at(8) }.unwrap_or(0);
    let clone_flags: u64 = unsafe { ctx.read_at(32) }.unwrap_or(0);
    if clone_flags & CLONE_THREAD == 0 {
        set_traced(pid as u32, true);
        // A child is charged to its parent's capture.
        if let Some(capture) = unsafe { CAPTURE_OF.get(&tgid) } {
            let capture = *capture;
            let _ = CAPTURE_OF.insert(&(pid as u32), &capture, 0);
        }
    }
    emit::task(kind::TASK_NEW, tgid, tid, unsafe { bpf_ktime_get_ns() }, pid, 0, clone_flags, None);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // Which recording it joins (the cgroup's value in `CGROUPS`), in the record's clone_flags.
    let mut joined = 0u32;
    let (tgid, tid, flags) = match traced() {
        Some((tgid, tid)) => (tgid, tid, 0),
        None => {
            // Not followed: it joins if it runs in a recorded cgroup, from its new image on.
            let Some(capture) = recorded_cgroup() else { return 0 };
            let id = bpf_get_current_pid_tgid();
            let tgid = (id >> 32) as u32;
            set_traced(tgid, true);
            let _ = CAPTURE_OF.insert(&tgid, &capture, 0);
            joined = capture;
            (tgid, id as u32, TASK_JOINED)
        }
    };
    let loc: u32 = unsafe { ctx.read_at(8) }.unwrap_or(0);
    let old_pid: i32 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    let path = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    emit::task(kind::TASK_EXEC, tgid, tid, unsafe { bpf_ktime_get_ns() }, old_pid, flags, joined as u64, Some(path));
    0
}

/// Cgroup levels looked at, from the root down: deep enough for a pod's containers under
/// systemd slices.
const CGROUP_LEVELS: i32 = 16;

/// The recording of the current task's cgroup (v2), or of the nearest one above it that is
/// recorded.
#[inline(always)]
fn recorded_cgroup() -> Option<u32> {
    if CGROUPS_ANY.get(0).is_none_or(|any| *any == 0) {
        return None;
    }
    let mut found = None;
    for level in 0..CGROUP_LEVELS {
        // SAFETY: a helper without pointers.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if let Some(capture) = unsafe { CGROUPS.get(&id) } {
            found = Some(*capture);
        }
    }
    found
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = traced() else { return 0 };
    let group_dead: u8 = unsafe { ctx.read_at(32) }.unwrap_or(0);
    let flags = if group_dead != 0 { TASK_GROUP_DEAD } else { 0 };
    emit::task(kind::TASK_EXIT, tgid, tid, unsafe { bpf_ktime_get_ns() }, tid as i32, flags, 0, None);
    if group_dead != 0 {
        set_traced(tgid, false);
        let _ = CAPTURE_OF.remove(&tgid);
        let _ = OWN_GROUP.remove(&tgid);
    }
    0
}

/// exit_group never reaches sys_exit: its status is taken at entry. The syscall's own trace
/// event fires for exit_group only (a raw `sys_enter` program would run for every syscall).
#[tracepoint(category = "syscalls", name = "sys_enter_exit_group")]
pub fn sys_enter_exit_group(ctx: TracePointContext) -> u32 {
    let Some(call) = Call::entry_exit_group(&ctx) else { return 0 };
    emit::syscall(&call, Sys::ExitGroup, Aux::None, [0, 0], None, None);
    0
}
