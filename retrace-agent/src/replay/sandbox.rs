//! The sandbox a replayed program runs in: fresh network namespace (loopback only) and mount
//! namespace (the host's filesystem read-only, `/dev` excepted), no new privileges, and a
//! seccomp filter that denies dangerous syscalls outright and hands connect/open to the
//! replayer (user notification). The network and the filesystem are closed by the kernel even
//! if the replayer's notifier dies: pending and later notified calls then fail with ENOSYS.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

use super::ReplayError;

// Seccomp and BPF constants (x86_64).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const BPF_ALU_AND_K: u16 = 0x54;

/// Syscalls the replayer answers.
pub const NOTIFIED: &[i64] = &[libc::SYS_connect, libc::SYS_openat, libc::SYS_open, libc::SYS_creat, libc::SYS_listen];

/// Syscalls refused outright, with the errno the program sees.
const DENIED: &[(i64, i32)] = &[
    (libc::SYS_io_uring_setup, libc::ENOSYS),
    (libc::SYS_io_uring_enter, libc::ENOSYS),
    (libc::SYS_io_uring_register, libc::ENOSYS),
    (libc::SYS_openat2, libc::ENOSYS), // libc falls back to openat, which is answered
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
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The filter: foreign architectures killed; raw and packet sockets refused; the denied list
/// refused; the notified list handed to the replayer; the rest allowed.
fn filter() -> Vec<SockFilter> {
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

/// A program started in the sandbox, and the seccomp listener that answers it.
pub struct Sandboxed {
    pub pid: libc::pid_t,
    pub listener: OwnedFd,
}

/// Forks `argv` into the sandbox, with each `(source, target)` of `binds` mounted over its
/// target (recorded file contents at their original paths). Everything the child needs is
/// prepared before the fork: the child only makes raw syscalls.
pub fn spawn(argv: &[String], binds: &[(std::path::PathBuf, String)]) -> Result<Sandboxed, ReplayError> {
    let program = argv.first().ok_or(ReplayError::NoCommand)?;
    let path = crate::target::find_program(program).ok_or_else(|| ReplayError::NotFound(program.clone()))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| ReplayError::NotFound(s.to_owned()));
    let path_c = cstr(&path.to_string_lossy())?;
    let args_c: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let binds_c: Vec<(CString, CString)> = binds
        .iter()
        .filter_map(|(src, dst)| {
            Some((CString::new(src.to_string_lossy().as_bytes()).ok()?, CString::new(dst.as_str()).ok()?))
        })
        .collect();
    let filter = filter();
    let prog = SockFprog { len: filter.len() as u16, filter: filter.as_ptr() };
    let root = c"/";
    let dev = c"/dev";
    let lo = *b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

    let mut pair = [0 as RawFd; 2];
    // SAFETY: plain socketpair into a local array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0 {
        return Err(ReplayError::Sandbox(format!("socketpair: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: the child runs only async-signal-safe raw syscalls on data prepared above, then
    // execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(ReplayError::Sandbox(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid == 0 {
        unsafe {
            libc::close(pair[0]);
            let fail = |step: u8| -> ! {
                let msg = [b'E', step];
                libc::write(pair[1], msg.as_ptr().cast(), 2);
                libc::_exit(126);
            };
            if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWPID) != 0 {
                fail(1);
            }
            // Loopback up: the only interface there is.
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(lo.as_ptr().cast(), ifr.ifr_name.as_mut_ptr(), 16);
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if sock < 0 || libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr) != 0 {
                fail(2);
            }
            libc::close(sock);
            // The host's filesystem, read-only (but /dev, for /dev/null and friends).
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(3);
            }
            // Recorded contents at their original paths (so paths, mmap and /proc/self/fd
            // look as they did), before everything turns read-only.
            for (src, dst) in &binds_c {
                libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
            }
            let mut attr: [u64; 4] = [0x1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0];
            if libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                root.as_ptr(),
                0x8000, /* AT_RECURSIVE */
                attr.as_mut_ptr(),
                32,
            ) != 0
            {
                fail(4);
            }
            attr = [0, 0x1, 0, 0]; // attr_clr = RDONLY
            libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, dev.as_ptr(), 0x8000, attr.as_mut_ptr(), 32);
            // A PID namespace of its own: the program cannot see or signal host processes. This
            // process stays outside as the replayer's handle: it forwards TERM/INT to the
            // namespace's init and exits with the program's status; if it is killed, the init
            // dies with it (PDEATHSIG), and every process of the namespace with the init.
            let init = libc::fork();
            if init < 0 {
                fail(9);
            }
            if init > 0 {
                libc::close(pair[1]);
                forward_signals_to(init);
                libc::_exit(wait_status(init));
            }
            // (Its parent is outside the namespace: getppid() says 0, so no check for a parent
            // already gone; the handle only dies by the replayer's SIGKILL, after this.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The namespace's own /proc (pids as the program sees them).
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                fail(5);
            }
            let listener =
                libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
            if listener < 0 {
                fail(6);
            }
            // Hand the listener to the replayer.
            let byte = [b'L'];
            let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut _, iov_len: 1 };
            let mut cbuf = [0u64; 4];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
            *(libc::CMSG_DATA(cmsg) as *mut i32) = listener as i32;
            if libc::sendmsg(pair[1], &msg, 0) != 1 {
                fail(7);
            }
            libc::close(listener as i32);
            // The init (pid 1) forks the program (pid 2), reaps orphans, and ends with it.
            let program = libc::fork();
            if program == 0 {
                libc::execve(path_c.as_ptr(), argv_p.as_ptr(), environ());
                fail(8);
            }
            libc::close(pair[1]);
            forward_signals_to(program);
            libc::_exit(wait_status(program));
        }
    }
    // SAFETY: our end of the pair, owned from here.
    let ours = unsafe { OwnedFd::from_raw_fd(pair[0]) };
    unsafe { libc::close(pair[1]) };
    let listener = receive_fd(&ours).map_err(|step| {
        let what = match step {
            1 => "cannot create namespaces (replay needs root or CAP_SYS_ADMIN)",
            2 => "cannot bring up loopback",
            3 | 4 => "cannot make the filesystem read-only in the sandbox",
            5 | 6 => "cannot install the seccomp filter",
            _ => "the sandboxed child failed before exec",
        };
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        ReplayError::Sandbox(what.to_owned())
    })?;
    Ok(Sandboxed { pid, listener })
}

static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// TERM and INT sent to this process go to `pid` (a pid namespace's init gets signals from
/// outside only for signals it handles).
unsafe fn forward_signals_to(pid: libc::pid_t) {
    FORWARD_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    let handler = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
    libc::signal(libc::SIGTERM, handler);
    libc::signal(libc::SIGINT, handler);
}

/// Waits for `pid`, reaping any other child meanwhile (orphans of a pid namespace's init);
/// its exit status, or 128+N if killed by signal N.
unsafe fn wait_status(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        let r = libc::waitpid(-1, &mut status, 0);
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        } else if r < 0 && *libc::__errno_location() != libc::EINTR {
            return 127;
        }
    }
}

fn environ() -> *const *const libc::c_char {
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: the process environment, read once in the child before exec.
    unsafe { environ }
}

/// Receives the listener fd, or the child's failure step.
fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd, u8> {
    use std::os::fd::AsRawFd as _;
    let mut byte = [0u8; 2];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 2 };
    let mut cbuf = [0u64; 4];
    // SAFETY: recvmsg into local buffers sized for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n >= 2 && byte[0] == b'E' {
            return Err(byte[1]);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n < 1 || cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            return Err(0);
        }
        Ok(OwnedFd::from_raw_fd(*(libc::CMSG_DATA(cmsg) as *const i32)))
    }
}
