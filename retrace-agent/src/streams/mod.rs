//! Rebuilding streams from syscalls: which fd is which file or peer, per process, through
//! fork, exec, dup and close; payload placed at its byte position; loss turned into gaps.

pub mod fdtable;
pub mod paths;
pub mod procfs;
pub mod sockaddr;
pub mod tls_hello;
pub mod tracker;

pub use tracker::Tracker;

use crate::model::proto::StreamKind;

/// What a stream is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    File,
    Tcp,
    Udp,
    Unix,
    Pipe,
    Tls,
    #[default]
    Other,
}

impl Kind {
    pub fn of_socket(domain: u16, ty: u32) -> Kind {
        const SOCK_STREAM: u32 = 1;
        const SOCK_DGRAM: u32 = 2;
        match (domain, ty & 0xf) {
            (sockaddr::AF_INET | sockaddr::AF_INET6, SOCK_STREAM) => Kind::Tcp,
            (sockaddr::AF_INET | sockaddr::AF_INET6, SOCK_DGRAM) => Kind::Udp,
            (sockaddr::AF_UNIX, _) => Kind::Unix,
            _ => Kind::Other,
        }
    }

    pub fn to_proto(self) -> StreamKind {
        match self {
            Kind::File => StreamKind::File,
            Kind::Tcp => StreamKind::Tcp,
            Kind::Udp => StreamKind::Udp,
            Kind::Unix => StreamKind::Unix,
            Kind::Pipe => StreamKind::Pipe,
            Kind::Tls => StreamKind::Tls,
            Kind::Other => StreamKind::Other,
        }
    }
}

/// The name used in `streams` output.
pub fn kind_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::File => "file",
        StreamKind::Tcp => "tcp",
        StreamKind::Udp => "udp",
        StreamKind::Unix => "unix",
        StreamKind::Pipe => "pipe",
        StreamKind::Tls => "tls",
        StreamKind::Other | StreamKind::Unspecified => "other",
    }
}
