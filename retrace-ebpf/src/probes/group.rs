//! setpgid: a traced process moved into a process group of its own, apart from its parent's,
//! is a job-control shell's job (an interactive shell puts each job in its group, from the
//! child and from the parent, before the exec). Such a process is not held at exec
//! (`OWN_GROUP`): the shell waits for it with WUNTRACED and would report the hold's stop as the
//! user's ^Z, and go on without it. Nothing is recorded.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{
    call::Call,
    maps::{hold_execs, OWN_GROUP},
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_setpgid(ctx: RawTracePointContext) -> u32 {
    if !hold_execs() {
        return 0;
    }
    let call = Call::exit(&ctx);
    if call.ret != 0 {
        return 0;
    }
    // setpgid(pid, pgid): pid 0 is the caller; a shell also names its child.
    let pid = call.args[0] as u32;
    let moved = if pid == 0 { call.tgid } else { pid };
    let _ = OWN_GROUP.insert(&moved, &1, 0);
    0
}
