//! The capture allowlist: which streams keep their payload. Everything else is recorded as
//! metadata only (its bytes become `not_captured` gaps).

use std::net::{IpAddr, SocketAddr};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::rules::CaptureSection;
use crate::model::proto::{StreamInfo, StreamKind};

#[derive(Debug, Clone)]
pub struct CapturePolicy {
    paths: GlobSet,
    addresses: Vec<AddrPattern>,
    pipes: bool,
}

/// `ip[/prefix]:port`, with either side optional (`:443`, `10.0.0.0/8`, `10.0.0.0/8:*`).
#[derive(Debug, Clone, PartialEq)]
struct AddrPattern {
    net: Option<(IpAddr, u8)>,
    port: Option<u16>,
}

impl CapturePolicy {
    pub fn new(section: &CaptureSection) -> Result<CapturePolicy, String> {
        let mut globs = GlobSetBuilder::new();
        for p in &section.paths {
            globs.add(Glob::new(p).map_err(|e| format!("bad path glob `{p}`: {e}"))?);
        }
        let paths = globs.build().map_err(|e| e.to_string())?;
        let addresses = section.addresses.iter().map(|a| AddrPattern::parse(a)).collect::<Result<_, _>>()?;
        Ok(CapturePolicy { paths, addresses, pipes: section.pipes })
    }

    /// Whether the payload of this stream is recorded.
    pub fn allows(&self, info: &StreamInfo) -> bool {
        match info.kind() {
            StreamKind::File => self.paths.is_match(&info.path),
            // A TLS stream's addresses are its socket's.
            StreamKind::Tcp | StreamKind::Udp | StreamKind::Tls => {
                [&info.peer, &info.local].iter().any(|a| a.parse::<SocketAddr>().is_ok_and(|a| self.address(a)))
            }
            StreamKind::Unix => {
                [&info.path, &info.peer, &info.local].iter().any(|p| !p.is_empty() && self.paths.is_match(p.as_str()))
            }
            StreamKind::Pipe | StreamKind::Other | StreamKind::Unspecified => self.pipes,
        }
    }

    /// Whether a datagram address (`Data.addr`) is allowed.
    pub fn allows_addr(&self, addr: &str) -> bool {
        addr.parse::<SocketAddr>().is_ok_and(|a| self.address(a))
    }

    fn address(&self, addr: SocketAddr) -> bool {
        self.addresses.iter().any(|p| p.matches(addr))
    }
}

impl AddrPattern {
    fn parse(text: &str) -> Result<AddrPattern, String> {
        let bad = || format!("bad address `{text}`: use ip:port, ip, ip/prefix, :port or [ipv6]:port");
        let t = text.trim();
        // Split off the port: `[v6]:port`, `v4:port`, `:port`; a bare v6 has several colons.
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(bad)?;
            (h, p.strip_prefix(':'))
        } else if t.matches(':').count() == 1 {
            let (h, p) = t.split_once(':').expect("one colon");
            (h, Some(p))
        } else {
            (t, None)
        };
        let port = match port {
            None | Some("*") | Some("") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        };
        let net = match host {
            "" | "*" => None,
            h => {
                let (ip, prefix) = match h.split_once('/') {
                    Some((ip, len)) => {
                        (ip.parse::<IpAddr>().map_err(|_| bad())?, Some(len.parse::<u8>().map_err(|_| bad())?))
                    }
                    None => (h.parse::<IpAddr>().map_err(|_| bad())?, None),
                };
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix = prefix.unwrap_or(max);
                if prefix > max {
                    return Err(bad());
                }
                Some((ip, prefix))
            }
        };
        if net.is_none() && port.is_none() && t != "*" {
            return Err(bad());
        }
        Ok(AddrPattern { net, port })
    }

    fn matches(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        match self.net {
            None => true,
            Some((net, prefix)) => in_net(addr.ip(), net, prefix),
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(addresses: &[&str]) -> CapturePolicy {
        CapturePolicy::new(&CaptureSection {
            paths: vec!["/srv/app/**".into()],
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            pipes: false,
            random: false,
        })
        .unwrap()
    }

    #[test]
    fn addresses_and_paths() {
        let p = policy(&["127.0.0.1:6379", "10.0.0.0/8", ":443", "[::1]:80"]);
        let tcp = |peer: &str| StreamInfo { kind: StreamKind::Tcp as i32, peer: peer.into(), ..Default::default() };
        assert!(p.allows(&tcp("127.0.0.1:6379")));
        assert!(!p.allows(&tcp("127.0.0.1:6380")));
        assert!(p.allows(&tcp("10.9.8.7:1")));
        assert!(p.allows(&tcp("93.184.216.34:443")));
        assert!(p.allows(&tcp("[::1]:80")));
        assert!(!p.allows(&tcp("[::1]:81")));
        let file = |path: &str| StreamInfo { kind: StreamKind::File as i32, path: path.into(), ..Default::default() };
        assert!(p.allows(&file("/srv/app/conf/x.toml")));
        assert!(!p.allows(&file("/etc/shadow")));
        assert!(!p.allows(&StreamInfo { kind: StreamKind::Pipe as i32, ..Default::default() }));
        for bad in ["10.0.0.0/40", "host:80", "1.2.3.4:99999", ""] {
            assert!(AddrPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
