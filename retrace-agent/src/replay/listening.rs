//! Whether a process in the sandbox listens at an address, from the kernel's socket tables of
//! the calling thread's network namespace (the notifier's is the sandbox's): a connect there
//! stays inside the sandbox, so it is made for real (a server the program runs and its own
//! client of it). Unix sockets bound by path are not in a namespace of their own, but the
//! table lists only those bound from inside it: a host socket visible through the sandbox's
//! filesystem is not there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP's LISTEN state in /proc/net/tcp.
const LISTEN: &str = "0A";
/// A unix socket that accepts connections (`__SO_ACCEPTCON`) in /proc/net/unix.
const ACCEPTS: u32 = 0x0001_0000;

/// Whether a TCP socket in this thread's network namespace listens where `to` would reach.
pub fn tcp(to: SocketAddr) -> bool {
    let table = if to.is_ipv4() { "tcp" } else { "tcp6" };
    let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{table}")) else { return false };
    tcp_listens(&text, to)
}

fn tcp_listens(table: &str, to: SocketAddr) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else { return false };
        let Some((ip, port)) =
            local.split_once(':').and_then(|(ip, port)| Some((ip, u16::from_str_radix(port, 16).ok()?)))
        else {
            return false;
        };
        state == LISTEN && port == to.port() && parse_ip(ip).is_some_and(|ip| ip == to.ip() || ip.is_unspecified())
    })
}

/// An address as /proc/net/tcp{,6} writes it: 32-bit words in the machine's byte order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> =
        (0..hex.len() / 8).map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()).collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
        _ => None,
    }
}

/// Whether a unix socket bound in this thread's network namespace listens at `path` (an
/// abstract one written `@name`), under any of the names given.
pub fn unix(names: &[&str]) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/unix") else { return false };
    unix_listens(&text, names)
}

fn unix_listens(table: &str, names: &[&str]) -> bool {
    table.lines().skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(path)) = (fields.get(3), fields.get(7)) else { return false };
        u32::from_str_radix(flags, 16).is_ok_and(|f| f & ACCEPTS != 0) && names.contains(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_its_address_or_a_wildcard() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:A349 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n   \
                     1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n   \
                     2: 0100007F:8183 0100007F:A349 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n";
        assert!(tcp_listens(table, "127.0.0.1:41801".parse().unwrap()));
        assert!(tcp_listens(table, "127.0.0.1:8080".parse().unwrap()), "0.0.0.0:8080");
        assert!(!tcp_listens(table, "127.0.0.1:33155".parse().unwrap()), "a connection, not a listener");
        assert!(!tcp_listens(table, "127.0.0.2:41801".parse().unwrap()));
    }

    #[test]
    fn this_process_listening_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp(listener.local_addr().unwrap()));
        drop(listener);
        let dir = std::env::temp_dir().join(format!("retrace-listening-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix_listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert!(unix(&[dir.to_str().unwrap()]));
        assert!(!unix(&["/no/such/socket"]));
        drop(unix_listener);
        let _ = std::fs::remove_file(&dir);
    }
}
