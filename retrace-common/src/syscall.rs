//! Retrace's own syscall numbering (stable across architectures; never reuse a number).

macro_rules! syscalls {
    ($($name:ident = $n:literal => $text:literal, $dir:ident;)*) => {
        /// A syscall Retrace traces.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Sys { $($name = $n,)* }

        impl Sys {
    /// A TLS library's call: plaintext, tied to a socket by its fd and to a session by `args[3]`.
    pub fn is_tls(self) -> bool {
        self.tls_library().is_some()
    }

    /// The TLS library a call belongs to.
    pub fn tls_library(self) -> Option<&'static str> {
        match self {
            Sys::SslRead | Sys::SslWrite => Some("openssl"),
            Sys::GnutlsRecv | Sys::GnutlsSend => Some("gnutls"),
            Sys::GoTlsRead | Sys::GoTlsWrite => Some("go"),
            _ => None,
        }
    }

            pub fn from_u32(n: u32) -> Option<Sys> {
                match n { $($n => Some(Sys::$name),)* _ => None }
            }
            pub fn name(self) -> &'static str {
                match self { $(Sys::$name => $text,)* }
            }
            /// Which way payload moves, for data syscalls.
            pub fn direction(self) -> Option<Direction> {
                match self { $(Sys::$name => syscalls!(@dir $dir),)* }
            }
        }
    };
    (@dir In) => { Some(Direction::In) };
    (@dir Out) => { Some(Direction::Out) };
    (@dir None) => { None };
}

/// Payload direction: `In` is what the process read or received, `Out` what it wrote or sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

syscalls! {
    Read = 1 => "read", In;
    Write = 2 => "write", Out;
    Pread64 = 3 => "pread64", In;
    Pwrite64 = 4 => "pwrite64", Out;
    Readv = 5 => "readv", In;
    Writev = 6 => "writev", Out;
    Preadv = 7 => "preadv", In;
    Pwritev = 8 => "pwritev", Out;
    Preadv2 = 9 => "preadv2", In;
    Pwritev2 = 10 => "pwritev2", Out;
    Recvfrom = 11 => "recvfrom", In;
    Sendto = 12 => "sendto", Out;
    Recvmsg = 13 => "recvmsg", In;
    Sendmsg = 14 => "sendmsg", Out;
    Recvmmsg = 15 => "recvmmsg", In;
    Sendmmsg = 16 => "sendmmsg", Out;
    // A folder's entries as the kernel returned them (`struct linux_dirent64`s): In data on the
    // folder's stream, never part of a file's content.
    Getdents64 = 17 => "getdents64", In;
    Sendfile = 20 => "sendfile", None;
    Splice = 21 => "splice", None;
    CopyFileRange = 22 => "copy_file_range", None;
    Open = 30 => "open", None;
    Openat = 31 => "openat", None;
    Openat2 = 32 => "openat2", None;
    Creat = 33 => "creat", None;
    Socket = 40 => "socket", None;
    Socketpair = 41 => "socketpair", None;
    Pipe = 42 => "pipe", None;
    Pipe2 = 43 => "pipe2", None;
    Connect = 44 => "connect", None;
    Accept = 45 => "accept", None;
    Accept4 = 46 => "accept4", None;
    Bind = 47 => "bind", None;
    Listen = 48 => "listen", None;
    Shutdown = 49 => "shutdown", None;
    Close = 50 => "close", None;
    CloseRange = 51 => "close_range", None;
    Dup = 52 => "dup", None;
    Dup2 = 53 => "dup2", None;
    Dup3 = 54 => "dup3", None;
    Fcntl = 55 => "fcntl", None;
    Chdir = 56 => "chdir", None;
    Fchdir = 57 => "fchdir", None;
    ExitGroup = 58 => "exit_group", None;
    Lseek = 59 => "lseek", None;
    Eventfd = 60 => "eventfd", None;
    Eventfd2 = 61 => "eventfd2", None;
    MemfdCreate = 62 => "memfd_create", None;
    EpollCreate = 63 => "epoll_create", None;
    EpollCreate1 = 64 => "epoll_create1", None;
    TimerfdCreate = 65 => "timerfd_create", None;
    Signalfd = 66 => "signalfd", None;
    Signalfd4 = 67 => "signalfd4", None;
    InotifyInit = 68 => "inotify_init", None;
    InotifyInit1 = 69 => "inotify_init1", None;
    PidfdOpen = 70 => "pidfd_open", None;
    Fstat = 71 => "fstat", None;
    Newfstatat = 72 => "newfstatat", None;
    Statx = 73 => "statx", None;
    Mkdir = 74 => "mkdir", None;
    Mkdirat = 75 => "mkdirat", None;
    Rename = 76 => "rename", None;
    Renameat = 77 => "renameat", None;
    Renameat2 = 78 => "renameat2", None;
    Link = 79 => "link", None;
    Linkat = 80 => "linkat", None;
    Getrandom = 81 => "getrandom", None;
    // The system's uptime, load and memory (`struct sysinfo`, 112 bytes), as the call returned it.
    Sysinfo = 83 => "sysinfo", None;
    // Wall-clock reads (`CLOCK_REALTIME` and its coarse form): what the call wrote (a
    // `timespec`, a `timeval`) or, for `time`, returned. Programs make them as system calls
    // once `record` has patched their vDSO.
    ClockGettime = 84 => "clock_gettime", None;
    Gettimeofday = 85 => "gettimeofday", None;
    Time = 86 => "time", None;
    // Not a syscall: OpenSSL's RAND_bytes, RAND_priv_bytes and their _ex forms (uprobes).
    OpensslRand = 82 => "RAND_bytes", None;
    // Not syscalls: the plaintext of TLS libraries' calls (uprobes). Their records name the
    // socket fd the library used (or -1 while unknown) and the session (`args[3]`).
    SslRead = 90 => "SSL_read", In;
    SslWrite = 91 => "SSL_write", Out;
    GnutlsRecv = 92 => "gnutls_record_recv", In;
    GnutlsSend = 93 => "gnutls_record_send", Out;
    // Go's crypto/tls: `(*Conn).Read` and `(*Conn).Write` (uprobes at entry and at each RET).
    GoTlsRead = 94 => "crypto/tls.(*Conn).Read", In;
    GoTlsWrite = 95 => "crypto/tls.(*Conn).Write", Out;
}

impl Sys {
    /// Whether the call returns a new fd that names no file or peer (eventfd, memfd, epoll...).
    /// signalfd makes one only when its first argument is -1; otherwise it changes the mask of
    /// the signalfd it is given.
    pub fn makes_anonymous_fd(self, first_arg: u64) -> bool {
        match self {
            Sys::Signalfd | Sys::Signalfd4 => first_arg as i32 == -1,
            Sys::Eventfd
            | Sys::Eventfd2
            | Sys::MemfdCreate
            | Sys::EpollCreate
            | Sys::EpollCreate1
            | Sys::TimerfdCreate
            | Sys::InotifyInit
            | Sys::InotifyInit1
            | Sys::PidfdOpen => true,
            _ => false,
        }
    }
}
