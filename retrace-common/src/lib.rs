//! Types shared by the eBPF programs and the agent: the records the kernel writes into the ring
//! buffer, their kind numbers, and the syscall numbering. `#![no_std]`, no serde, no prost: this
//! crate is the wire contract between kernel and user space and nothing else.
//!
//! Every record starts with a [`Header`]. All structs are `repr(C)` with padding written out, so
//! both sides agree byte for byte. Kind and syscall numbers are never reused.
#![no_std]

pub mod config;
pub mod event;
pub mod syscall;

pub use event::*;
