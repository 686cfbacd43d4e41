//! Retrace's kernel side: tracepoints on the syscalls that move or name I/O, scheduler
//! tracepoints for the process tree, an in-kernel filter on traced processes, and one ring
//! buffer. Payload is copied once, from user memory straight into the ring buffer.
#![no_std]
#![no_main]
#![allow(static_mut_refs)]
// BPF has atomic or/and (kernel 5.12+), but Rust's bpf target has no atomic read-modify-write
// types: the intrinsics reach them (the build already runs with RUSTC_BOOTSTRAP for build-std).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod call;
mod copy;
mod emit;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
