//! One file per family of hooks. Syscalls are programs tail-called from the raw `sys_exit`
//! dispatcher in `call.rs`; the process tree comes from sched tracepoints.

mod anon;
mod clock;
mod data;
mod dir;
mod fd;
mod group;
mod names;
mod open;
mod openssl_rand;
mod random;
mod read;
mod recv;
mod send;
mod socket;
mod stat;
mod sysinfo;
mod task;
pub mod tls;
mod transfer;
mod write;
