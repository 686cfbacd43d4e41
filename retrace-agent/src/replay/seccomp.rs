//! The seccomp filter of the sandbox: foreign architectures killed, raw and packet sockets,
//! io_uring, mounts, namespaces, ptrace, bpf, modules and the like refused, and the calls that
//! reach peers (connect, listen, sendto with an address) handed to the replayer, with the clock,
//! random bytes and folder listings. File contents need no notification: the overlay serves
//! them and keeps every write off the host.

// Seccomp and BPF constants (x86_64).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const BPF_ALU_AND_K: u16 = 0x54;

/// Syscalls the replayer answers: connections; the wall clock (once the vDSO's entry points are
/// patched into syscalls); exec, and the first calls of a new image (where the vDSO gets
/// patched); random bytes; folder listings; stats (of folders the overlay merged); new
/// processes and threads (given their recorded ids).
const NOTIFIED: &[i64] = &[
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_gettimeofday,
    libc::SYS_time,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_brk,
    libc::SYS_arch_prctl,
    libc::SYS_set_tid_address,
    libc::SYS_getrandom,
    libc::SYS_sysinfo,
    libc::SYS_getdents64,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// Syscalls refused outright, with the errno the program sees.
const DENIED: &[(i64, i32)] = &[
    (libc::SYS_io_uring_setup, libc::ENOSYS),
    (libc::SYS_io_uring_enter, libc::ENOSYS),
    (libc::SYS_io_uring_register, libc::ENOSYS),
    (libc::SYS_bpf, libc::EPERM),
    (libc::SYS_ptrace, libc::EPERM),
    (libc::SYS_process_vm_writev, libc::EPERM),
    (libc::SYS_mount, libc::EPERM),
    (libc::SYS_umount2, libc::EPERM),
    (libc::SYS_pivot_root, libc::EPERM),
    (libc::SYS_mount_setattr, libc::EPERM),
    (libc::SYS_move_mount, libc::EPERM),
    (libc::SYS_open_tree, libc::EPERM),
    (libc::SYS_fsopen, libc::EPERM),
    (libc::SYS_fsmount, libc::EPERM),
    (libc::SYS_setns, libc::EPERM),
    (libc::SYS_open_by_handle_at, libc::EPERM),
    (libc::SYS_kexec_load, libc::EPERM),
    (libc::SYS_kexec_file_load, libc::EPERM),
    (libc::SYS_init_module, libc::EPERM),
    (libc::SYS_finit_module, libc::EPERM),
    (libc::SYS_delete_module, libc::EPERM),
    (libc::SYS_reboot, libc::EPERM),
    (libc::SYS_swapon, libc::EPERM),
    (libc::SYS_swapoff, libc::EPERM),
    (libc::SYS_perf_event_open, libc::EPERM),
];

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
pub struct SockFprog {
    pub len: u16,
    pub filter: *const SockFilter,
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The filter: foreign architectures killed; raw and packet sockets refused; the denied list
/// refused; the notified list handed to the replayer; the rest allowed.
pub fn filter() -> Vec<SockFilter> {
    let nr = 0; // offsetof(seccomp_data, nr)
    let arch = 4;
    let arg = |i: u32| 16 + 8 * i; // low 32 bits of args[i]
    let mut f = vec![
        stmt(BPF_LD_W_ABS, arch),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, nr),
        // socket(AF_PACKET, ...) and socket(..., SOCK_RAW, ...): EACCES.
        jump(BPF_JEQ_K, libc::SYS_socket as u32, 0, 6),
        stmt(BPF_LD_W_ABS, arg(0)),
        jump(BPF_JEQ_K, libc::AF_PACKET as u32, 3, 0),
        stmt(BPF_LD_W_ABS, arg(1)),
        stmt(BPF_ALU_AND_K, 0xf),
        jump(BPF_JEQ_K, libc::SOCK_RAW as u32, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::EACCES as u32),
        stmt(BPF_LD_W_ABS, nr),
        // sendto with a destination address (a datagram to somewhere): the replayer decides.
        jump(BPF_JEQ_K, libc::SYS_sendto as u32, 0, 6),
        stmt(BPF_LD_W_ABS, arg(4)),
        jump(BPF_JEQ_K, 0, 0, 3),
        stmt(BPF_LD_W_ABS, arg(4) + 4),
        jump(BPF_JEQ_K, 0, 0, 1),
        stmt(BPF_RET_K, RET_ALLOW),
        stmt(BPF_RET_K, RET_USER_NOTIF),
        stmt(BPF_LD_W_ABS, nr),
        // clock_gettime of the wall clock: the replayer answers with the recorded time; the
        // other clocks (monotonic, CPU time) stay the kernel's.
        jump(BPF_JEQ_K, libc::SYS_clock_gettime as u32, 0, 5),
        stmt(BPF_LD_W_ABS, arg(0)),
        jump(BPF_JEQ_K, libc::CLOCK_REALTIME as u32, 2, 0),
        jump(BPF_JEQ_K, libc::CLOCK_REALTIME_COARSE as u32, 1, 0),
        stmt(BPF_RET_K, RET_ALLOW),
        stmt(BPF_RET_K, RET_USER_NOTIF),
        stmt(BPF_LD_W_ABS, nr),
    ];
    for &(sys, errno) in DENIED {
        f.push(jump(BPF_JEQ_K, sys as u32, 0, 1));
        f.push(stmt(BPF_RET_K, RET_ERRNO | errno as u32));
    }
    for &sys in NOTIFIED {
        f.push(jump(BPF_JEQ_K, sys as u32, 0, 1));
        f.push(stmt(BPF_RET_K, RET_USER_NOTIF));
    }
    f.push(stmt(BPF_RET_K, RET_ALLOW));
    f
}
