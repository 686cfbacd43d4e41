//! The process to record: launched by us (held before exec until the probes follow it) or an
//! existing one given by PID.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use nix::{
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{fork, ForkResult, Pid},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("`{path}` is not a cgroup v2 folder: give one under the cgroup2 mount (`grep cgroup2 /proc/self/mounts`)")]
    NotCgroup { path: String },
    #[error("command not found: `{program}` (not a path to an executable, nor in PATH)")]
    NotFound { program: String },
    #[error("no command given: put the program to record after `--`")]
    EmptyCommand,
    #[error("argument contains a NUL byte: {arg:?}")]
    NulByte { arg: String },
    #[error("failed to start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: nix::Error,
    },
}

/// What to record.
#[derive(Clone, Debug)]
pub enum Target {
    Launch(Vec<String>),
    Attach(u32),
    /// Every process in a cgroup (v2) or below it: those there now, and any that execs there
    /// later.
    Cgroup(std::path::PathBuf),
}

/// A cgroup v2 folder: its id (the folder's inode, which is what the kernel reports), and the
/// processes in it and in the cgroups below it now.
pub fn cgroup(path: &std::path::Path) -> Result<(u64, Vec<u32>), TargetError> {
    use std::os::unix::fs::MetadataExt as _;
    let not_v2 = || TargetError::NotCgroup { path: path.display().to_string() };
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| not_v2())?;
    // SAFETY: statfs of a NUL-terminated path into a struct of its type.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 || fs.f_type != libc::CGROUP2_SUPER_MAGIC {
        return Err(not_v2());
    }
    let id = std::fs::metadata(path).map_err(|_| not_v2())?.ino();
    let mut pids = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok((id, pids))
}

/// A launched child, stopped before exec until `release`.
pub struct Launched {
    pub pid: u32,
    stopped: bool,
}

impl Launched {
    /// Forks the command. The child stops itself (SIGSTOP) before exec: it is not running the
    /// program when this returns, and nothing it does to wait shows in the recording.
    pub fn spawn(argv: &[String]) -> Result<Launched, TargetError> {
        let program = argv.first().ok_or(TargetError::EmptyCommand)?;
        let path = find_program(program).ok_or_else(|| TargetError::NotFound { program: program.clone() })?;
        let cstr = |s: &str| CString::new(s).map_err(|_| TargetError::NulByte { arg: s.to_owned() });
        let path_c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| TargetError::NulByte { arg: program.clone() })?;
        let args: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                CString::new(kv).ok()
            })
            .collect();
        // Pointer arrays built before the fork: the child of a threaded process must not allocate.
        let argv_p: Vec<*const libc::c_char> =
            args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let env_p: Vec<*const libc::c_char> =
            env.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        // SAFETY: the child only calls async-signal-safe functions (raise, execve, _exit) on
        // data prepared before the fork.
        match unsafe { fork() }.map_err(|source| TargetError::Spawn { program: program.clone(), source })? {
            ForkResult::Child => unsafe {
                libc::raise(libc::SIGSTOP);
                libc::execve(path_c.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
                libc::_exit(127);
            },
            ForkResult::Parent { child } => {
                // Wait until it has stopped itself.
                loop {
                    match waitpid(child, Some(WaitPidFlag::WUNTRACED)) {
                        Ok(WaitStatus::Stopped(..)) => break,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Ok(_) | Err(_) => {
                            return Err(TargetError::Spawn {
                                program: program.clone(),
                                source: nix::errno::Errno::ECHILD,
                            })
                        }
                    }
                }
                Ok(Launched { pid: child.as_raw() as u32, stopped: true })
            }
        }
    }

    /// Lets the child exec the program.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.stopped) {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGCONT);
        }
    }

    /// Kills a child that never got to run (set-up failed after the fork).
    pub fn abort(self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.pid as i32), None);
    }
}

/// Waits for a child and turns its status into a shell-style exit code.
pub fn wait_exit_code(pid: u32) -> i32 {
    loop {
        match waitpid(Pid::from_raw(pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return -1,
        }
    }
}

/// The thread-group id of a PID (a thread id resolves to its process).
pub fn thread_group_of(pid: u32) -> Result<u32, TargetError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| TargetError::NoSuchProcess { pid: pid as i32 })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(TargetError::NoSuchProcess { pid: pid as i32 })
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_exec(p))
}
