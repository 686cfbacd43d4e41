//! The sandbox a replayed program runs in. The program is root of its own user namespace
//! (an unused host id range: no privilege over the host) and has its own mount, network
//! (loopback only), PID, IPC and UTS namespaces. Its root is an overlay of the host's
//! filesystems with a private writable layer above (see `rootfs`), /dev is a minimal private
//! set, /dev/shm is private and empty, /proc is its own. A seccomp filter denies dangerous
//! syscalls outright and hands connect/listen to the replayer (user notification). The network
//! and the filesystem are closed by the kernel even if the replayer's notifier dies: pending and
//! later notified calls then fail with ENOSYS.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use super::{
    rootfs::{RootFs, STAGE},
    seccomp, ReplayError,
};

/// A program started in the sandbox, and the seccomp listener that answers it.
pub struct Sandboxed {
    pub pid: libc::pid_t,
    pub listener: OwnedFd,
    /// The program starts once this is given (or dropped: then it does not).
    pub go: Go,
}

/// Holds the sandbox's init back until what the program will talk to is set up.
pub struct Go(OwnedFd);

impl Go {
    pub fn start(self) {
        // SAFETY: one byte to the init over our end of the pair.
        unsafe { libc::write(self.0.as_raw_fd(), [b'G'].as_ptr().cast(), 1) };
    }

    /// The init's other service over the same pair, once the program runs.
    pub fn pid_setter(&self) -> Option<PidSetter> {
        self.0.try_clone().ok().map(PidSetter)
    }
}

/// Asks the sandbox's init, the one process inside its PID namespace that may, to set the
/// namespace's last pid: the next process or thread made there gets the one after it.
pub struct PidSetter(OwnedFd);

impl PidSetter {
    /// Sets the last pid to `last` and waits (up to a second: a busy machine may not run the
    /// init at once) for the init to say it did. The init answers with the value it set, so an
    /// answer that came after an earlier wait gave up is not taken for this one.
    pub fn set_last(&self, last: u32) -> bool {
        let fd = self.0.as_raw_fd();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        // SAFETY: a write of 4 bytes on our end of the pair.
        if unsafe { libc::write(fd, last.to_ne_bytes().as_ptr().cast(), 4) } != 4 {
            return false;
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let mut answer = [0u8; 4];
            // SAFETY: poll of one fd and a read of 4 bytes into a local buffer.
            unsafe {
                if left <= 0 || libc::poll(&mut pfd, 1, left) != 1 {
                    return false;
                }
                if libc::read(fd, answer.as_mut_ptr().cast(), 4) != 4 {
                    return false;
                }
            }
            if u32::from_ne_bytes(answer) == last {
                return true;
            }
        }
    }
}

/// Device nodes bound from the host into the private /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Links of the private /dev.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// Steps of the child, named in the error the replayer prints.
const STEPS: &[&str] = &[
    "",
    "cannot enter the sandbox's user namespace",
    "cannot create namespaces (replay needs root)",
    "cannot bring up loopback",
    "cannot stage the sandbox's filesystem",
    "cannot mount the overlay of the host's root filesystem",
    "cannot make the sandbox's /dev",
    "cannot mount the sandbox's /proc or switch to its root",
    "cannot install the seccomp filter",
    "cannot start the sandbox's init",
    "cannot run the command",
];

/// Every path and option string the child uses, made before the fork.
struct MountPlan {
    stage: CString,
    root: CString,
    /// (lower clone, where it is attached, where its overlay goes, overlay options)
    layers: Vec<(RawFd, CString, CString, CString)>,
    dev: CString,
    devices: Vec<(CString, CString)>,
    links: Vec<(CString, CString)>,
    pts: CString,
    shm_source: CString,
    shm: CString,
    sys: CString,
    proc: CString,
    /// (staged file, the /proc file it is bound over)
    proc_files: Vec<(CString, CString)>,
    cwd: CString,
}

impl MountPlan {
    fn new(rootfs: &RootFs) -> MountPlan {
        let c = |s: String| CString::new(s).unwrap_or_default();
        let root = format!("{STAGE}/root");
        MountPlan {
            stage: c(STAGE.into()),
            layers: rootfs
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let options = format!(
                        "lowerdir={STAGE}/lower/{i},upperdir={STAGE}/upper/{i},workdir={STAGE}/work/{i},userxattr"
                    );
                    let target = if l.path == "/" { root.clone() } else { format!("{root}{}", l.path) };
                    (l.lower.as_raw_fd(), c(format!("{STAGE}/lower/{i}")), c(target), c(options))
                })
                .collect(),
            dev: c(format!("{root}/dev")),
            // A device the replayer plays (a random device) is its FIFO in the scratch.
            devices: DEVICES
                .iter()
                .map(|d| {
                    let source = match rootfs.fifo_devices.iter().any(|f| f == d) {
                        true => format!("{STAGE}/dev-{d}"),
                        false => format!("/dev/{d}"),
                    };
                    (c(source), c(format!("{root}/dev/{d}")))
                })
                .collect(),
            links: DEV_LINKS.iter().map(|(to, name)| (c((*to).into()), c(format!("{root}/dev/{name}")))).collect(),
            pts: c(format!("{root}/dev/pts")),
            shm_source: c(format!("{STAGE}/shm")),
            shm: c(format!("{root}/dev/shm")),
            sys: c(format!("{root}/sys")),
            proc: c(format!("{root}/proc")),
            proc_files: rootfs
                .proc_files
                .iter()
                .map(|(name, path)| (c(format!("{STAGE}/{name}")), c(format!("{root}{path}"))))
                .collect(),
            cwd: c(std::env::current_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_else(|_| "/".into())),
            root: c(root),
        }
    }
}

/// Forks `argv` into the sandbox over `rootfs`, with each `(fd, replacement)` of `stdio` in
/// place of the replayer's own fd. Everything the child needs is prepared before the fork: the
/// child only makes raw syscalls.
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    rootfs: &RootFs,
    stdio: &[(i32, RawFd)],
    recorded_pid: u32,
) -> Result<Sandboxed, ReplayError> {
    let program = argv.first().ok_or(ReplayError::NoCommand)?;
    let path = crate::target::find_program(program).ok_or_else(|| ReplayError::NotFound(program.clone()))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| ReplayError::NotFound(s.to_owned()));
    let path_c = cstr(&path.to_string_lossy())?;
    let args_c: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = args_c.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    // The replayer's environment, with `env` set over it.
    let env_c: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(name, _)| k == name.as_str()))
        .map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            kv
        })
        .chain(env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()))
        .filter_map(|kv| CString::new(kv).ok())
        .collect();
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let plan = MountPlan::new(rootfs);
    // The program gets the pid it had when recorded (logs, pid files and lock files name it):
    // the namespace's next pid is set just before the init forks it.
    let last_pid = (recorded_pid > 2).then(|| recorded_pid - 1);
    let (userns, scratch) = (rootfs.userns.as_raw_fd(), rootfs.scratch.as_raw_fd());
    let filter = seccomp::filter();
    let prog = seccomp::SockFprog { len: filter.len() as u16, filter: filter.as_ptr() };
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
            for &(fd, replacement) in stdio {
                libc::dup2(replacement, fd);
                libc::close(replacement);
            }
            // Root of the user namespace, which then owns every other namespace made here.
            if libc::setns(userns, libc::CLONE_NEWUSER) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
            {
                fail(1);
            }
            let namespaces = libc::CLONE_NEWNS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWCGROUP;
            if libc::unshare(namespaces) != 0 {
                fail(2);
            }
            // Loopback up: the only interface there is.
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(lo.as_ptr().cast(), ifr.ifr_name.as_mut_ptr(), 16);
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if sock < 0 || libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr) != 0 {
                fail(3);
            }
            libc::close(sock);
            // Nothing mounted here propagates to the host.
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(4);
            }
            // The scratch tmpfs at the stage, the lower layers on its mount points, the overlays.
            let attach = |fd: RawFd, at: &CString| {
                libc::syscall(
                    libc::SYS_move_mount,
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    at.as_ptr(),
                    4, /* F_EMPTY_PATH */
                ) == 0
            };
            if !attach(scratch, &plan.stage) {
                fail(4);
            }
            for (i, (lower, at, target, options)) in plan.layers.iter().enumerate() {
                if !attach(*lower, at) {
                    fail(4);
                }
                let overlay =
                    libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), 0, options.as_ptr().cast())
                        == 0;
                // A filesystem overlay refuses as a lower layer is still seen, read-only.
                if !overlay
                    && (i == 0
                        || libc::mount(at.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
                            != 0)
                {
                    fail(5);
                }
                libc::close(*lower);
            }
            libc::close(scratch);
            libc::close(userns);
            // A private /dev: the harmless devices, a pts instance of its own, an empty shm.
            if libc::mount(
                c"tmpfs".as_ptr(),
                plan.dev.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID,
                c"mode=0755".as_ptr().cast(),
            ) != 0
            {
                fail(6);
            }
            for (source, target) in &plan.devices {
                let fd = libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o666);
                libc::close(fd);
                if fd < 0
                    || libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
                        != 0
                {
                    fail(6);
                }
            }
            for (to, link) in &plan.links {
                libc::symlink(to.as_ptr(), link.as_ptr());
            }
            libc::mkdir(plan.pts.as_ptr(), 0o755);
            libc::mkdir(plan.shm.as_ptr(), 0o1777);
            if libc::mount(
                c"devpts".as_ptr(),
                plan.pts.as_ptr(),
                c"devpts".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
            ) != 0
                || libc::mount(
                    plan.shm_source.as_ptr(),
                    plan.shm.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                fail(6);
            }
            // The host's /sys, read-only (its files are the host root's: not writable from here).
            if libc::mount(
                c"/sys".as_ptr(),
                plan.sys.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) == 0
            {
                let mut attr: [u64; 4] = [0x1 /* MOUNT_ATTR_RDONLY */, 0, 0, 0];
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    plan.sys.as_ptr(),
                    0x8000,
                    attr.as_mut_ptr(),
                    32,
                );
            }
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
            // The namespace's own /proc (pids as the program sees them), mounted by its init and
            // before the host's /proc leaves this mount namespace (the kernel lets a user
            // namespace mount a proc only where a full one is already visible).
            if libc::mount(
                c"proc".as_ptr(),
                plan.proc.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                fail(7);
            }
            // The kernel's files the program read whole when recorded show that content (a
            // file this kernel lacks is left out).
            for (staged, target) in &plan.proc_files {
                libc::mount(staged.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
            }
            // The overlay becomes the root; the host's tree is gone from this namespace.
            if libc::chdir(plan.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
            {
                fail(7);
            }
            if libc::chdir(plan.cwd.as_ptr()) != 0 {
                libc::chdir(c"/".as_ptr());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                fail(8);
            }
            let listener = libc::syscall(
                libc::SYS_seccomp,
                seccomp::SECCOMP_SET_MODE_FILTER,
                seccomp::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog,
            );
            if listener < 0 {
                fail(8);
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
                fail(9);
            }
            libc::close(listener as i32);
            // Set-up inside the namespaces (the recorded peers' addresses and sockets) is the
            // replayer's: wait for its go.
            let mut go = [0u8; 1];
            if libc::read(pair[1], go.as_mut_ptr().cast(), 1) != 1 {
                libc::_exit(126);
            }
            // The init (pid 1) forks the program (with its recorded pid where it can), sets
            // the last pid for the replayer (its children's recorded pids), reaps orphans, and
            // ends with it. SIGCHLD comes through a signalfd, blocked meanwhile.
            let last_pid_file = libc::open(c"/proc/sys/kernel/ns_last_pid".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if let Some(last) = last_pid {
                set_last_pid(last_pid_file, last);
            }
            let mut chld: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut chld);
            libc::sigaddset(&mut chld, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_BLOCK, &chld, &mut before);
            let program = libc::fork();
            if program == 0 {
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
                libc::execve(path_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
                fail(10);
            }
            forward_signals_to(program);
            let children = libc::signalfd(-1, &chld, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            libc::_exit(serve_until_exit(program, children, pair[1], last_pid_file));
        }
    }
    // SAFETY: our end of the pair, owned from here.
    let ours = unsafe { OwnedFd::from_raw_fd(pair[0]) };
    unsafe { libc::close(pair[1]) };
    let listener = receive_fd(&ours).map_err(|step| {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let what = STEPS.get(step as usize).copied().filter(|s| !s.is_empty());
        ReplayError::Sandbox(what.unwrap_or("the sandboxed child failed before exec").to_owned())
    })?;
    Ok(Sandboxed { pid, listener, go: Go(ours) })
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

/// Waits for `pid`, reaping any other child meanwhile; its exit status, or 128+N if killed by
/// signal N.
unsafe fn wait_status(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        let r = libc::waitpid(-1, &mut status, 0);
        if r == pid {
            if let Some(code) = exit_code(status) {
                return code;
            }
        } else if r < 0 && *libc::__errno_location() != libc::EINTR {
            return 127;
        }
    }
}

/// A wait status's exit code, or 128+N for a kill by signal N; `None` if the task still runs
/// (stopped or continued).
fn exit_code(status: i32) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// The init's loop: sets the namespace's last pid as the replayer asks (4 bytes, answered
/// with the same 4) and waits for `pid`, reaping any other child meanwhile (orphans of a pid
/// namespace's init); returns its exit status, or 128+N if killed by signal N.
unsafe fn serve_until_exit(pid: libc::pid_t, children: RawFd, replayer: RawFd, last_pid_file: RawFd) -> i32 {
    // The last pid most recently set for the replayer.
    let mut unconsumed: Option<u32> = None;
    let mut fds = [
        libc::pollfd { fd: children, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: replayer, events: libc::POLLIN, revents: 0 },
    ];
    loop {
        let mut status = 0;
        loop {
            match libc::waitpid(-1, &mut status, libc::WNOHANG) {
                0 => break,
                r if r == pid => {
                    if let Some(code) = exit_code(status) {
                        return code;
                    }
                }
                r if r < 0 && *libc::__errno_location() == libc::ECHILD => return 127,
                r if r < 0 => break,
                _ => {}
            }
        }
        // Without a signalfd, poll the children every 10 ms.
        let timeout = if children < 0 { 10 } else { -1 };
        if libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut info = [0u8; 128];
            while libc::read(children, info.as_mut_ptr().cast(), info.len()) > 0 {}
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            let mut last = [0u8; 4];
            if libc::read(replayer, last.as_mut_ptr().cast(), 4) != 4 {
                fds[1].fd = -1; // the replayer is gone: only wait
                continue;
            }
            // Two threads that clone at once: the first one's task must be made (the last pid
            // moves past what was set for it) before the last pid is set for the second.
            if let Some(set) = unconsumed {
                wait_until_taken(last_pid_file, set);
            }
            let value = u32::from_ne_bytes(last);
            set_last_pid(last_pid_file, value);
            unconsumed = Some(value);
            libc::write(replayer, last.as_ptr().cast(), 4);
        }
    }
}

/// Waits (up to 20 ms: a clone can fail and take no pid) until the namespace's last pid is no
/// longer `set`, that is until the task it was set for has been made. Raw syscalls only.
unsafe fn wait_until_taken(last_pid_file: RawFd, set: u32) {
    for _ in 0..20 {
        let mut text = [0u8; 16];
        let n = libc::pread(last_pid_file, text.as_mut_ptr().cast(), text.len(), 0);
        if n <= 0 {
            return;
        }
        let now = text[..n as usize]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u32, |v, b| v.wrapping_mul(10).wrapping_add(u32::from(b - b'0')));
        if now != set {
            return;
        }
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        libc::nanosleep(&pause, std::ptr::null_mut());
    }
}

/// Writes `value` into the namespace's `ns_last_pid`: the next task made there gets the pid
/// after it.
unsafe fn set_last_pid(last_pid_file: RawFd, value: u32) {
    let text = format_u32(value);
    libc::pwrite(last_pid_file, text.0.as_ptr().cast(), text.1, 0);
}

/// `n` in decimal, without allocating (the init runs after a fork of a threaded process):
/// the digits and their count.
fn format_u32(mut n: u32) -> ([u8; 10], usize) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[..len].reverse();
    (digits, len)
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
