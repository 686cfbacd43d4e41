//! One file per family of hooks. Syscalls are `sys_exit_*` tracepoints (arguments from the
//! shared `sys_enter` program in `call.rs`); the process tree comes from sched tracepoints.

mod data;
mod fd;
mod open;
mod read;
mod recv;
mod send;
mod socket;
mod task;
mod transfer;
mod write;
