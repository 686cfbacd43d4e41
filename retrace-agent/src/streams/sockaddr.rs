//! Socket addresses as the kernel writes them (`struct sockaddr_*`) to display strings.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `ip:port`, `[ipv6]:port`, a unix path (`@name` for the abstract namespace), or `None` for
/// an unnamed or unknown address.
pub fn format(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    match family {
        AF_INET if bytes.len() >= 8 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            Some(format!("{ip}:{port}"))
        }
        AF_INET6 if bytes.len() >= 24 => {
            let port = u16::from_be_bytes([bytes[2], bytes[3]]);
            let octets: [u8; 16] = bytes[8..24].try_into().ok()?;
            let ip = Ipv6Addr::from(octets);
            Some(format!("[{ip}]:{port}"))
        }
        AF_UNIX => {
            let path = &bytes[2..];
            if path.is_empty() {
                return None;
            }
            if path[0] == 0 {
                let name = &path[1..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                return Some(format!("@{}", String::from_utf8_lossy(&name[..end])));
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            if end == 0 {
                return None;
            }
            Some(String::from_utf8_lossy(&path[..end]).into_owned())
        }
        _ => None,
    }
}

/// Local and peer addresses of a kernel `SockTuple`; `None` when the kernel reported none.
pub fn tuple(t: &retrace_common::SockTuple) -> Option<(String, String)> {
    let fmt = |addr: &[u8; 16], port: u16| match t.family {
        // An unconnected socket's peer, or an unbound local side.
        _ if port == 0 && addr.iter().all(|&b| b == 0) => Some(String::new()),
        AF_INET => Some(format!("{}:{port}", Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => Some(format!("[{}]:{port}", Ipv6Addr::from(*addr))),
        _ => None,
    };
    Some((fmt(&t.saddr, t.sport)?, fmt(&t.daddr, t.dport)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_inet_inet6_unix() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(format(&v4).as_deref(), Some("127.0.0.1:8080"));

        let mut v6 = vec![0u8; 28];
        v6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(format(&v6).as_deref(), Some("[::1]:443"));

        let mut un = AF_UNIX.to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0\0\0");
        assert_eq!(format(&un).as_deref(), Some("/run/x.sock"));
        let mut abs = AF_UNIX.to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(format(&abs).as_deref(), Some("@name"));
        assert_eq!(format(&AF_UNIX.to_ne_bytes()), None);
        assert_eq!(format(&[1]), None);
    }
}
