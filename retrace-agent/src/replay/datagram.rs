//! Datagram replay (UDP): every recorded datagram peer gets a real UDP socket at its address
//! inside the sandbox's network namespace (the address is added to loopback when it is not a
//! loopback one, as are the program's recorded local addresses: a resolver that checks for a
//! non-loopback address before asking, glibc's AI_ADDRCONFIG, asks as it did). A DNS server
//! answers by question (name, type, class) with its recorded answers, the live query's id and
//! question copied in; a name the recording never asked gets NXDOMAIN, never silence. Any other
//! peer answers a datagram equal to a recorded one (redacted spans match anything) with the
//! datagrams that followed it when recorded; a datagram that matches none is reported.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use super::{
    peer::context,
    report::{DnsQuery, Unmatched},
    script, Shared,
};

/// What the program sent one recorded peer, and what came back.
#[derive(Debug, Clone)]
pub struct DatagramPeer {
    pub address: SocketAddr,
    pub exchanges: Vec<DatagramExchange>,
}

#[derive(Debug, Clone, Default)]
pub struct DatagramExchange {
    pub sent: Vec<u8>,
    /// Redacted spans (offset, length) of `sent`: they match anything.
    pub wildcards: Vec<(usize, usize)>,
    /// The datagrams the peer sent back, and when they arrived.
    pub replies: Vec<(Vec<u8>, u64)>,
}

/// An answer for `query`, if the peer speaks DNS: recorded (`Some(Ok)`), NXDOMAIN for a
/// question never asked (`Some(Err)`).
struct Dns {
    /// Recorded answers by question, and how many of each were served.
    answers: HashMap<Question, Answers>,
}

/// The recorded answers to one question (datagram, when it arrived), and how many were served.
type Answers = (Vec<(Vec<u8>, u64)>, usize);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
}

/// The question of a DNS message and where it ends; None if `msg` is not one DNS question.
fn question(msg: &[u8]) -> Option<(Question, usize)> {
    if msg.len() < 12 || msg[4..6] != [0, 1] {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None; // questions are not compressed
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(msg.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let word = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    Some((Question { name, qtype: word(at)?, qclass: word(at + 2)? }, at + 4))
}

fn is_response(msg: &[u8]) -> bool {
    msg.len() > 2 && msg[2] & 0x80 != 0
}

fn type_name(qtype: u16) -> String {
    match qtype {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        n => format!("TYPE{n}"),
    }
}

impl Dns {
    /// The peer speaks DNS: port 53, or every datagram each way is a DNS query or response.
    fn of(peer: &DatagramPeer) -> Option<Dns> {
        let queries = peer.exchanges.iter().all(|e| question(&e.sent).is_some_and(|_| !is_response(&e.sent)));
        let replies = peer.exchanges.iter().flat_map(|e| &e.replies).all(|(r, _)| is_response(r));
        if !(peer.address.port() == 53 || (queries && replies && !peer.exchanges.is_empty())) {
            return None;
        }
        let mut answers: HashMap<Question, Answers> = HashMap::new();
        for e in &peer.exchanges {
            // Asked when recorded, answered or not.
            if let Some((q, _)) = question(&e.sent) {
                answers.entry(q).or_default();
            }
            for (reply, ts) in &e.replies {
                if let Some((q, _)) = question(reply) {
                    answers.entry(q).or_default().0.push((reply.clone(), *ts));
                }
            }
        }
        Some(Dns { answers })
    }

    /// The answer to `query`: the next recorded one for its question (the last again once
    /// they are used up), with the query's id and question (its letter case) copied in; or
    /// NXDOMAIN for a question never asked. None: asked, never answered (silence, as then).
    fn answer(&mut self, query: &[u8]) -> Option<(Vec<u8>, Option<u64>, DnsQuery)> {
        let (q, end) = question(query)?;
        let mut report = DnsQuery { name: q.name.clone(), qtype: type_name(q.qtype), answer: String::new() };
        let Some((recorded, served)) = self.answers.get_mut(&q) else {
            let mut reply = query[..end].to_vec();
            reply[2] = 0x80 | (query[2] & 0x79); // a response; opcode and RD kept
            reply[3] = 0x80 | 3; // RA, NXDOMAIN
            reply[6..12].fill(0);
            report.answer = DnsQuery::NXDOMAIN.into();
            return Some((reply, None, report));
        };
        let (reply, ts) = recorded.get(*served).or_else(|| recorded.last())?.clone();
        *served += 1;
        let mut reply = reply;
        reply[..2].copy_from_slice(&query[..2]);
        if question(&reply).is_some_and(|(_, e)| e == end) {
            reply[12..end].copy_from_slice(&query[12..end]);
        }
        report.answer = "recorded".into();
        Some((reply, Some(ts), report))
    }
}

/// One recorded peer's socket and how it answers.
struct Served {
    socket: UdpSocket,
    peer: DatagramPeer,
    dns: Option<Dns>,
    used: Vec<bool>,
}

impl Served {
    fn handle(&mut self, got: &[u8], from: SocketAddr, shared: &Shared) {
        if let Some(dns) = &mut self.dns {
            match dns.answer(got) {
                Some((reply, ts, report)) => {
                    if let Some(ts) = ts {
                        shared.clock.anchor(ts);
                    }
                    let _ = self.socket.send_to(&reply, from);
                    shared.report.lock().expect("report").dns.push(report);
                }
                None if question(got).is_none() => self.unmatched(got, shared),
                None => {}
            }
            return;
        }
        let found = self.peer.exchanges.iter().enumerate().position(|(i, e)| {
            !self.used[i]
                && e.sent.len() == got.len()
                && script::first_difference(&e.sent, got, &e.wildcards, 0).is_none()
        });
        let Some(i) = found else { return self.unmatched(got, shared) };
        self.used[i] = true;
        for (reply, ts) in &self.peer.exchanges[i].replies {
            shared.clock.anchor(*ts);
            let _ = self.socket.send_to(reply, from);
        }
        shared.report.lock().expect("report").datagrams_matched += 1;
    }

    fn unmatched(&self, got: &[u8], shared: &Shared) {
        shared.unmatched(Unmatched {
            address: format!("udp {}", self.peer.address),
            sent: context(got),
            ..Default::default()
        });
    }
}

/// Serves the recorded datagram peers from inside the network namespace of `netns_pid` until
/// `stop`; returns once every socket is bound (peers that cannot be served are named in the
/// report's `datagrams_not_replayed`).
pub fn serve(
    netns_pid: libc::pid_t,
    peers: Vec<DatagramPeer>,
    local_ips: Vec<IpAddr>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let served = setup(netns_pid, peers, local_ips, &shared);
        let _ = ready_tx.send(());
        if let Some(served) = served {
            run(served, &shared, &stop);
        }
    });
    let _ = ready_rx.recv();
    handle
}

fn setup(
    netns_pid: libc::pid_t,
    peers: Vec<DatagramPeer>,
    local_ips: Vec<IpAddr>,
    shared: &Shared,
) -> Option<Vec<Served>> {
    if peers.is_empty() && local_ips.is_empty() {
        return None;
    }
    if let Err(e) = super::notify::enter_netns(netns_pid) {
        shared.fail(format!("cannot enter the sandbox's network namespace: {e}"));
        return None;
    }
    let mut ips: Vec<IpAddr> = local_ips.into_iter().chain(peers.iter().map(|p| p.address.ip())).collect();
    ips.sort();
    ips.dedup();
    for ip in ips.into_iter().filter(|ip| !ip.is_loopback() && !ip.is_unspecified()) {
        if let Err(e) = add_to_loopback(ip) {
            shared.fail(format!("cannot give the sandbox the recorded address {ip}: {e}"));
        }
    }
    let mut served = Vec::new();
    for peer in peers {
        match UdpSocket::bind(peer.address) {
            Ok(socket) => {
                let _ = socket.set_nonblocking(true);
                let dns = Dns::of(&peer);
                let used = vec![false; peer.exchanges.len()];
                served.push(Served { socket, peer, dns, used });
            }
            Err(e) => {
                let mut report = shared.report.lock().expect("report");
                report.datagrams_not_replayed.push(format!("{} ({e})", peer.address));
            }
        }
    }
    Some(served)
}

fn run(mut served: Vec<Served>, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && !served.is_empty() {
        let mut fds: Vec<libc::pollfd> = served
            .iter()
            .map(|s| libc::pollfd { fd: s.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: poll on fds we own, for their count.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for (s, fd) in served.iter_mut().zip(&fds) {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            while let Ok((len, from)) = s.socket.recv_from(&mut buf) {
                s.handle(&buf[..len], from, shared);
            }
        }
    }
}

/// Adds `ip` to the loopback interface of this thread's network namespace (netlink
/// RTM_NEWADDR; an address already there is fine).
fn add_to_loopback(ip: IpAddr) -> std::io::Result<()> {
    let (family, bytes, prefix): (u8, Vec<u8>, u8) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec(), 32),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec(), 128),
    };
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let attr_len = 4 + bytes.len();
    let total = 16 + 8 + 2 * attr_len.next_multiple_of(4);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    msg.extend_from_slice(&(flags as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
                                                // ifaddrmsg: family, prefix length, flags (no duplicate detection), scope host, index.
    msg.extend_from_slice(&[family, prefix, libc::IFA_F_NODAD as u8, libc::RT_SCOPE_HOST]);
    msg.extend_from_slice(&index.to_ne_bytes());
    for kind in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&bytes);
        msg.resize(msg.len().next_multiple_of(4), 0);
    }
    // SAFETY: a netlink socket we own; send and recv on buffers of their lengths.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        if libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ack = [0u8; 256];
        let n = libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0);
        if n < 20 {
            return Err(std::io::Error::last_os_error());
        }
        let error = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
        if error != 0 && error != -libc::EEXIST {
            return Err(std::io::Error::from_raw_os_error(-error));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0]);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn dns_answers_by_question_with_the_live_id_and_nxdomain_for_the_rest() {
        let mut answer = query(7, "svc.example", 1);
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1; // one answer record
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 9]);
        let peer = DatagramPeer {
            address: "127.0.0.53:53".parse().unwrap(),
            exchanges: vec![DatagramExchange {
                sent: query(7, "svc.example", 1),
                replies: vec![(answer.clone(), 5)],
                ..Default::default()
            }],
        };
        let mut dns = Dns::of(&peer).unwrap();
        // Another id, another letter case: the recorded answer, with both copied in.
        let live = query(0x4242, "SVC.example", 1);
        let (reply, ts, report) = dns.answer(&live).unwrap();
        assert_eq!(&reply[..2], &[0x42, 0x42]);
        assert_eq!(&reply[12..live.len()], &live[12..]);
        assert_eq!(&reply[live.len()..], &answer[live.len()..]);
        assert_eq!((ts, report.answer.as_str()), (Some(5), "recorded"));
        // Never asked: NXDOMAIN, the question copied, no records.
        let (reply, _, report) = dns.answer(&query(9, "other.example", 28)).unwrap();
        assert_eq!((reply[3] & 0x0f, &reply[6..12]), (3, &[0u8; 6][..]));
        assert_eq!((report.qtype.as_str(), report.answer.as_str()), ("AAAA", DnsQuery::NXDOMAIN));
    }
}
