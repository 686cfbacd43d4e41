//! How many bytes the program has not read yet from its end of a TCP connection: asked of the
//! kernel by socket diagnostics (netlink INET_DIAG, the interface `ss` uses), for the socket
//! with the given addresses in the calling thread's network namespace.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;

/// Unread bytes in the receive queue of the socket bound to `local` and connected to `peer`;
/// None if there is no such socket (closed) or the kernel could not be asked.
pub fn unread(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let family = if local.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let words = |a: &SocketAddr| -> [u8; 16] {
        let mut w = [0u8; 16];
        match a {
            SocketAddr::V4(v4) => w[..4].copy_from_slice(&v4.ip().octets()),
            SocketAddr::V6(v6) => w.copy_from_slice(&v6.ip().octets()),
        }
        w
    };
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut msg = Vec::with_capacity(72);
    msg.extend_from_slice(&72u32.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&[0; 8]); // seq, pid
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&(!0u32).to_ne_bytes()); // every state
    msg.extend_from_slice(&local.port().to_be_bytes());
    msg.extend_from_slice(&peer.port().to_be_bytes());
    msg.extend_from_slice(&words(&local));
    msg.extend_from_slice(&words(&peer));
    msg.extend_from_slice(&0u32.to_ne_bytes()); // interface
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    // SAFETY: a netlink socket we own; send and recv on buffers of their lengths.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return None;
        }
        let mut reply = [0u8; 512];
        let n = libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0);
        let kind = u16::from_ne_bytes([reply[4], reply[5]]);
        // nlmsghdr (16), then inet_diag_msg: family, state, timer, retrans (4), id (48),
        // expires (4), rqueue.
        if n < 16 + 60 || kind != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        Some(u32::from_ne_bytes([reply[72], reply[73], reply[74], reply[75]]))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn bytes_sent_and_not_yet_read_are_counted_until_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (server_local, server_peer) = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        assert_eq!(unread(server_local, server_peer), Some(0));
        client.write_all(b"hello").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(unread(server_local, server_peer), Some(5));
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut server, &mut buf).unwrap();
        assert_eq!(unread(server_local, server_peer), Some(0));
    }
}
