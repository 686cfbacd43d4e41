//! What a replay plays: the recording turned into the program's outbound connections (each a
//! sequence of steps, from the program's side) and the contents of the files it read.

use std::{collections::HashMap, net::SocketAddr};

use super::datagram::{DatagramExchange, DatagramPeer};
use super::listing::{Listings, Reads};
use crate::filestate::{FileHistories, Initial};
use crate::store::{
    proto::{self, record::Kind as R, Direction, StreamKind},
    proto_text, Recording, StoreError,
};
use retrace_common::syscall::Sys;

/// A file at the start of the replay.
#[derive(Debug, Clone, PartialEq)]
pub enum FileStart {
    /// Its content, and its modification time as the program saw it (if it looked).
    Content(Vec<u8>, Option<i64>),
    /// The recording created it (a file or a folder): it must not exist yet.
    Absent,
}

/// Random bytes calls returned when recorded, in order, each with the thread (recorded id)
/// that made the call.
#[derive(Debug, Default)]
pub struct RecordedBytes(pub std::collections::VecDeque<(u32, Vec<u8>)>);

impl RecordedBytes {
    /// How far a call looks for its bytes: a thread's next ones are near the front.
    const LOOK_AHEAD: usize = 4096;

    /// The bytes for thread `tid`'s call asking for `wanted`: its own next call's that gave
    /// as many or more; else (a pool's threads share out their work differently from run to
    /// run) the next call's of any thread that gave exactly as many. Never fewer than asked:
    /// a short answer where the recorded one was whole makes callers fail (OpenSSL's seeding
    /// gives up after three).
    pub fn take(&mut self, tid: Option<u32>, wanted: usize) -> Option<Vec<u8>> {
        let near = || self.0.iter().take(Self::LOOK_AHEAD).enumerate();
        let own = tid.and_then(|tid| near().find(|(_, (t, b))| *t == tid && b.len() >= wanted));
        let i = own.or_else(|| near().find(|(_, (_, b))| b.len() == wanted))?.0;
        self.0.remove(i).map(|(_, bytes)| bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One step of a connection, seen from the program.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The program sends these bytes; `wildcards` are spans (offset, length) that were redacted
    /// at record time and match anything.
    Send { bytes: Vec<u8>, wildcards: Vec<(usize, usize)> },
    /// The program receives these bytes, recorded at `ts_ns` (the replayed clock reads that
    /// time when they are delivered). Server replay sends them once the events before `gate`
    /// in `Script::inbound_order` have happened (0: at once).
    Receive { bytes: Vec<u8>, ts_ns: u64, gate: usize },
}

/// Whether `[from, to)` of recorded bytes touches a span (offset, length) redacted at record
/// time.
pub fn redacted(wildcards: &[(usize, usize)], from: usize, to: usize) -> bool {
    wildcards.iter().any(|&(o, l)| o < to && from < o + l)
}

/// The first offset, over the length both have, where `actual` differs from `recorded`;
/// redacted spans match anything (`base`: where `recorded` starts in the spans' coordinates).
pub fn first_difference(recorded: &[u8], actual: &[u8], wildcards: &[(usize, usize)], base: usize) -> Option<usize> {
    recorded
        .iter()
        .zip(actual)
        .enumerate()
        .position(|(i, (r, a))| r != a && !redacted(wildcards, base + i, base + i + 1))
}

/// A connection the program opened (connect), to be answered by the replayer.
#[derive(Debug, Clone)]
pub struct Connection {
    pub stream_id: u64,
    /// Where it went: for a unix socket, a stand-in address (`unix_peers`), and its path.
    pub peer: SocketAddr,
    pub unix_path: Option<String>,
    pub steps: Vec<Step>,
    /// Server replay opens it once the events before this one in `Script::inbound_order` have
    /// happened (0 for the program's own connections).
    pub opens_at: usize,
    /// A TLS connection whose plaintext was recorded: `steps` are the plaintext, played over a
    /// TLS session the replayer terminates.
    pub tls: Option<TlsSession>,
    /// One request of an HTTP/1.x connection and the response to it (`matching::Pool` splits
    /// such connections): played on whichever connection the program sends that request.
    pub piece: Option<Piece>,
}

/// Where a request played on its own sits in its recorded connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Piece {
    /// Its place among the connection's requests (0: the first).
    pub index: usize,
    /// No request followed it on the recorded connection.
    pub last: bool,
    /// Bytes the program sent on the recorded connection before it.
    pub offset: usize,
}

/// What the replayer's TLS server presents for a recorded TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsSession {
    /// Server name the program asked for (empty: none, an address).
    pub sni: String,
    /// The application protocol agreed on (empty: none).
    pub alpn: String,
    /// What went over the socket in the clear before the handshake (a STARTTLS-style
    /// upgrade: PostgreSQL's SSLRequest and its answer); empty when TLS came first.
    pub prefix: Vec<Step>,
}

/// One event of the recorded inbound connections, in the order the program saw them: across
/// connections, what the program read (a request the replayer sends) and what it wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderEvent {
    /// Index into `Script::inbound`.
    pub connection: usize,
    /// The program read it (the replayer sends it); else the program wrote it.
    pub to_program: bool,
    /// Bytes in that direction of the connection once it has happened.
    pub end: u64,
    /// When it happened.
    pub ts_ns: u64,
}

#[derive(Debug, Default)]
pub struct Script {
    pub connections: Vec<Connection>,
    /// Connections the program accepted (it was a server): the replayer opens them again to
    /// the address they reached (`peer` here is the program's local address).
    pub inbound: Vec<Connection>,
    /// Every read and write of the program on its inbound connections, in recorded order.
    pub inbound_order: Vec<OrderEvent>,
    /// Connections between two of the program's own sockets: made for real in the sandbox.
    pub internal_connections: usize,
    /// The unix socket paths the program connected to outside the recording, and the stand-in
    /// address their connections go by in `connections`.
    pub unix_peers: HashMap<String, SocketAddr>,
    /// Absolute path → the file as the program found it when recorded: its content (every
    /// byte seen), or absent (the program created it).
    pub files: HashMap<String, FileStart>,
    /// Files whose redacted spans hold the host's bytes (see `fill_from_host`).
    pub filled_from_host: Vec<String>,
    /// Files read only in part whose host copy no longer holds what was read (see `host_agrees`).
    pub changed_on_host: Vec<String>,
    pub command: Vec<String>,
    /// Connect attempts that failed when recorded: address and errno, in order.
    pub failed_connects: Vec<(String, i32)>,
    /// What the recorded command wrote to its stdout (fd 1) and stderr (fd 2), where those were
    /// no terminal and every byte was recorded.
    pub outputs: Vec<RecordedOutput>,
    /// What the program sent each recorded datagram peer (UDP), and what came back.
    pub datagrams: Vec<DatagramPeer>,
    /// Every address the program's UDP sockets were connected or sent to when recorded.
    pub udp_addresses: std::collections::HashSet<String>,
    /// The program's recorded local addresses (of its sockets).
    pub local_ips: Vec<std::net::IpAddr>,
    /// When the recorded command started (its first exec), for the replayed clock.
    pub started_ns: Option<u64>,
    /// What getrandom returned, in order.
    pub random: RecordedBytes,
    /// What sysinfo returned (uptime, load, memory), in order.
    pub sysinfo: std::collections::VecDeque<Vec<u8>>,
    /// The wall-clock times each thread read (ns since the epoch), by its recorded id and the
    /// kind of read, in order, each with when it was read (recordings whose programs' vDSO
    /// `record` patched).
    pub clock_reads: HashMap<(u32, ClockRead), std::collections::VecDeque<(u64, i128)>>,
    /// What OpenSSL's RAND_bytes (and its kin) returned, in order.
    pub library_random: RecordedBytes,
    /// The folder listings the program read (getdents64), by path.
    pub listings: Listings,
    /// What the program read from each random device (/dev/urandom, /dev/random), in the
    /// order it read it.
    pub random_devices: Vec<(String, Vec<u8>)>,
    /// Files of the kernel's (`/proc/meminfo`) the program read from their start, with what
    /// the first open of each read: shown in the sandbox's /proc (see `proc_files`).
    pub proc_files: Vec<(String, Vec<u8>)>,
    /// Each process's AT_RANDOM bytes, by its recorded pid, one per exec in order.
    pub at_random: HashMap<u32, std::collections::VecDeque<[u8; crate::auxv::AT_RANDOM_LEN]>>,
    /// The processes and threads each thread made, by its recorded id, in order.
    pub children: HashMap<u32, std::collections::VecDeque<u32>>,
}

/// A kind of wall-clock read. Each kind is replayed from its own recorded reads: a call the
/// replay does not make (OpenSSL's generator reads `time` when it reseeds; the replayer answers
/// its functions instead) does not shift the others' times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockRead {
    /// `clock_gettime` of this clock (`CLOCK_REALTIME`, `CLOCK_REALTIME_COARSE`).
    ClockGettime(u32),
    Gettimeofday,
    Time,
}

impl ClockRead {
    /// The kind of a wall-clock system call (`nr`, `args`).
    pub fn of_call(nr: i64, args: &[u64]) -> Option<ClockRead> {
        match nr {
            libc::SYS_clock_gettime => Some(ClockRead::ClockGettime(*args.first()? as u32)),
            libc::SYS_gettimeofday => Some(ClockRead::Gettimeofday),
            libc::SYS_time => Some(ClockRead::Time),
            _ => None,
        }
    }
}

/// The kind and the time (ns since the epoch) of a recorded wall-clock read.
fn time_read(call: &proto::Syscall) -> Option<(ClockRead, i128)> {
    let pair = |scale: i128| {
        let bytes: &[u8; 16] = call.random.as_slice().try_into().ok()?;
        let sec = i64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        let sub = i64::from_le_bytes(bytes[8..].try_into().unwrap_or_default());
        Some(sec as i128 * 1_000_000_000 + sub as i128 * scale)
    };
    let nr = match &*proto_text::text(&call.name) {
        "clock_gettime" if call.ret == 0 => libc::SYS_clock_gettime,
        "gettimeofday" if call.ret == 0 => libc::SYS_gettimeofday,
        "time" if call.ret >= 0 => libc::SYS_time,
        _ => return None,
    };
    let kind = ClockRead::of_call(nr, &call.args)?;
    let ns = match kind {
        ClockRead::ClockGettime(_) => pair(1)?,
        ClockRead::Gettimeofday => pair(1000)?,
        ClockRead::Time => call.ret as i128 * 1_000_000_000,
    };
    Some((kind, ns))
}

/// A standard output of the recorded command, whole.
#[derive(Debug, Clone, Default)]
pub struct RecordedOutput {
    pub fd: i32,
    pub bytes: Vec<u8>,
    /// Redacted spans (offset, length): they match anything.
    pub wildcards: Vec<(usize, usize)>,
}

impl Script {
    pub fn from_recording(recording: &Recording) -> Result<Script, StoreError> {
        let mut infos: HashMap<u64, proto::StreamInfo> = HashMap::new();
        let mut data: HashMap<u64, Vec<(u64, usize, proto::Data)>> = HashMap::new();
        let mut order = 0usize;
        // File position events, by stream: (ts, order, what).
        let mut positions: HashMap<u64, Vec<(u64, usize, FileEvent)>> = HashMap::new();
        let mut failed_connects = Vec::new();
        // Addresses connect succeeded with, by stream: a UDP socket's every one counts (glibc's
        // getaddrinfo connects a UDP socket to each answer in turn to sort them, sending nothing).
        let mut connected: Vec<(u64, String)> = Vec::new();
        let mut histories = FileHistories::default();
        let mut gapped = std::collections::HashSet::new();
        let mut first_exec = None;
        let mut random = RecordedBytes::default();
        let mut library_random = RecordedBytes::default();
        let mut sysinfo = std::collections::VecDeque::new();
        let mut clock_reads: HashMap<(u32, ClockRead), std::collections::VecDeque<(u64, i128)>> = HashMap::new();
        // mkdir (one path), rename and link (old, new), in order.
        let mut names: Vec<(bool, Vec<String>, u64)> = Vec::new();
        // Where each stream's record came, among syscalls and data.
        let mut opened: HashMap<u64, usize> = HashMap::new();
        // Folder streams' getdents64 output, by stream.
        let mut folder_reads: HashMap<u64, Reads> = HashMap::new();
        let getdents = Sys::Getdents64.name();
        let mut children: HashMap<u32, std::collections::VecDeque<u32>> = HashMap::new();
        let mut at_random: HashMap<u32, std::collections::VecDeque<[u8; crate::auxv::AT_RANDOM_LEN]>> = HashMap::new();
        let report = recording.for_each(|record| {
            histories.observe(&record);
            match record.kind {
                Some(R::Process(p)) if p.event == "exec" => {
                    first_exec.get_or_insert(p.ts_ns);
                    // Every exec takes its place in the process's queue, with bytes or without.
                    let bytes = <[u8; crate::auxv::AT_RANDOM_LEN]>::try_from(&p.at_random[..]).unwrap_or_default();
                    at_random.entry(p.pid).or_default().push_back(bytes);
                }
                Some(R::Process(p)) if p.event == "fork" || p.event == "thread" => {
                    children.entry(p.tid).or_default().push_back(p.child);
                }
                Some(R::Stream(info)) => {
                    order += 1;
                    opened.insert(info.id, order);
                    infos.insert(info.id, info);
                }
                Some(R::Syscall(call)) => {
                    order += 1;
                    let event = match &*proto_text::text(&call.name) {
                        "read" | "readv" if call.ret == 0 => Some(FileEvent::Eof),
                        "lseek" if call.ret >= 0 => Some(FileEvent::Seek(call.ret as u64)),
                        _ => None,
                    };
                    if let (Some(event), true) = (event, call.stream_id != 0) {
                        positions.entry(call.stream_id).or_default().push((call.ts_ns, order, event));
                    }
                    if let Some((kind, ns)) = time_read(&call) {
                        clock_reads.entry((call.tid, kind)).or_default().push_back((call.ts_ns, ns));
                    } else if call.name == Sys::Sysinfo.name() {
                        if call.ret == 0 && !call.random.is_empty() {
                            sysinfo.push_back(call.random.clone());
                        }
                    } else if call.ret > 0 && !call.random.is_empty() {
                        if call.name == Sys::OpensslRand.name() {
                            library_random.0.push_back((call.tid, call.random.clone()));
                        } else {
                            random.0.push_back((call.tid, call.random.clone()));
                        }
                    }
                    if call.ret == 0 && !call.paths.is_empty() {
                        names.push((call.name.starts_with(b"mkdir"), call.paths.clone(), call.ts_ns));
                    }
                    if call.name == getdents && call.ret == 0 {
                        folder_reads.entry(call.stream_id).or_default().end(call.ts_ns, order);
                    }
                    if call.name == "connect" && call.ret < 0 && call.ret != -(libc::EINPROGRESS as i64) {
                        failed_connects.push((call.detail, (-call.ret) as i32));
                    } else if call.name == "connect" && call.ret == 0 && !call.detail.is_empty() {
                        connected.push((call.stream_id, call.detail));
                    }
                }
                Some(R::Data(d)) if d.syscall == getdents => {
                    order += 1;
                    folder_reads.entry(d.stream_id).or_default().data(order, &d);
                }
                Some(R::Data(d)) => {
                    order += 1;
                    data.entry(d.stream_id).or_default().push((d.ts_ns, order, d));
                }
                Some(R::Gap(g)) => {
                    gapped.insert(g.stream_id);
                }
                _ => {}
            }
        })?;
        let mut script = Script {
            command: report.info.map(|i| i.command).unwrap_or_default(),
            failed_connects,
            started_ns: first_exec,
            random,
            library_random,
            sysinfo,
            clock_reads,
            at_random,
            children,
            ..Default::default()
        };
        script.udp_addresses.extend(
            connected
                .into_iter()
                .filter(|(id, _)| infos.get(id).is_some_and(|i| i.kind() == StreamKind::Udp))
                .map(|c| c.1),
        );
        let mut folders: Vec<(usize, String, Reads)> = folder_reads
            .into_iter()
            .filter_map(|(id, mut reads)| {
                let info = infos.get(&id).filter(|i| i.kind() == StreamKind::File && i.path.starts_with('/'))?;
                if gapped.contains(&id) || info.joined_mid_stream {
                    reads.spoil();
                }
                Some((opened.get(&id).copied().unwrap_or(0), info.path.clone(), reads))
            })
            .collect();
        folders.sort_by_key(|f| f.0);
        script.listings = Listings::build(folders.into_iter().map(|(_, path, reads)| (path, reads)).collect());
        script.random_devices = random_devices(&infos, &data, &gapped);
        script.proc_files = proc_files(&infos, &data, &gapped);
        let root = recording.manifest.root_pid;
        for info in infos.values() {
            let standard = info.origin == "inherited" && info.pid == root && (info.fd == 1 || info.fd == 2);
            let terminal = info.path.starts_with("/dev/pts/") || info.path.starts_with("/dev/tty");
            if !standard || terminal || gapped.contains(&info.id) {
                continue;
            }
            let mut output = RecordedOutput { fd: info.fd, ..Default::default() };
            let mut chunks: Vec<&proto::Data> = data
                .get(&info.id)
                .map(|c| c.iter().map(|c| &c.2).filter(|d| d.direction() == Direction::Out).collect())
                .unwrap_or_default();
            chunks.sort_by_key(|d| d.offset);
            for d in chunks {
                append(&mut output.bytes, &mut output.wildcards, d);
            }
            script.outputs.push(output);
        }
        script.outputs.sort_by_key(|o| o.fd);
        // Every stream, with or without bytes: a connection that carried none was still made
        // (a readiness probe a server counts, a client that gave up).
        let mut ids: Vec<u64> = infos.keys().copied().collect();
        ids.sort_unstable();
        // The TLS stream (with plaintext) of each socket stream that carried one.
        let mut tls_of: HashMap<u64, u64> = HashMap::new();
        for info in infos.values() {
            if info.kind() == StreamKind::Tls && info.carrier != 0 && data.contains_key(&info.id) {
                tls_of.entry(info.carrier).or_insert(info.id);
            }
        }
        let mut accepted = Vec::new();
        // Both ends of each connection, (local, peer) by stream: outbound and accepted.
        let mut outbound_ends: Vec<(u64, &str, &str)> = Vec::new();
        let mut accepted_ends: HashMap<(&str, &str), u64> = HashMap::new();
        let mut tls_inbound: HashMap<u64, TlsSession> = HashMap::new();
        let mut datagrams: HashMap<SocketAddr, DatagramPeer> = HashMap::new();
        for id in ids {
            let Some(info) = infos.get(&id) else { continue };
            if let Ok(local) = info.local.parse::<SocketAddr>() {
                if !script.local_ips.contains(&local.ip()) {
                    script.local_ips.push(local.ip());
                }
            }
            let mut chunks = data.remove(&id).unwrap_or_default();
            // Redaction may hold one direction back on disk: time says what came first.
            chunks.sort_by_key(|c| (c.0, c.1));
            match info.kind() {
                StreamKind::Tcp if info.origin == "socket" && !info.listening => {
                    let Ok(peer) = info.peer.parse::<SocketAddr>() else { continue };
                    let (steps, tls) = match tls_of.get(&id).and_then(|t| Some((infos.get(t)?, data.remove(t)?))) {
                        Some((tls_info, mut plain)) => {
                            plain.sort_by_key(|c| (c.0, c.1));
                            let session = TlsSession {
                                sni: tls_info.sni.clone(),
                                alpn: tls_info.alpn.clone(),
                                prefix: steps(cleartext_prefix(&chunks).map(|d| (d, 0))),
                            };
                            (steps(plain.iter().map(|c| (&c.2, 0))), Some(session))
                        }
                        None => (steps(chunks.iter().map(|c| (&c.2, 0))), None),
                    };
                    script.connections.push(Connection {
                        stream_id: id,
                        peer,
                        unix_path: None,
                        steps,
                        opens_at: 0,
                        tls,
                        piece: None,
                    });
                    outbound_ends.push((id, &info.local, &info.peer));
                }
                StreamKind::Tcp if info.origin == "accept" => {
                    let Ok(local) = info.local.parse::<SocketAddr>() else { continue };
                    accepted_ends.insert((&info.local, &info.peer), id);
                    let at = (info.ts_ns, opened.get(&id).copied().unwrap_or(0));
                    // A TLS server's connection: the replayer is the TLS client, and plays the
                    // recorded plaintext (TLS first; a cleartext upgrade is not replayed).
                    let tls = tls_of.get(&id).filter(|_| cleartext_prefix(&chunks).next().is_none());
                    match tls.and_then(|t| Some((infos.get(t)?, data.remove(t)?))) {
                        Some((tls_info, mut plain)) => {
                            plain.sort_by_key(|c| (c.0, c.1));
                            tls_inbound.insert(
                                id,
                                TlsSession {
                                    sni: tls_info.sni.clone(),
                                    alpn: tls_info.alpn.clone(),
                                    prefix: Vec::new(),
                                },
                            );
                            accepted.push((id, local, at, plain));
                        }
                        None => accepted.push((id, local, at, chunks)),
                    }
                }
                // A unix socket client (psql's default, `redis-cli -s`): played like TCP, under
                // a stand-in address; its own servers' sockets are sorted out below.
                StreamKind::Unix if info.origin == "socket" && !info.peer.is_empty() => {
                    let next = script.unix_peers.len() as u16;
                    let peer = *script.unix_peers.entry(info.peer.clone()).or_insert_with(|| unix_stand_in(next));
                    let steps = steps(chunks.iter().map(|c| (&c.2, 0)));
                    let unix_path = Some(info.peer.clone());
                    script.connections.push(Connection {
                        stream_id: id,
                        peer,
                        unix_path,
                        steps,
                        opens_at: 0,
                        tls: None,
                        piece: None,
                    });
                }
                StreamKind::Udp => {
                    if !info.peer.is_empty() {
                        script.udp_addresses.insert(info.peer.clone());
                    }
                    // Each record is one datagram; a reply belongs to the last datagram sent to
                    // its sender from the same socket.
                    let mut last: HashMap<SocketAddr, usize> = HashMap::new();
                    for (_, _, d) in &chunks {
                        let address = if d.addr.is_empty() { &info.peer } else { &d.addr };
                        let Ok(address) = address.parse::<SocketAddr>() else { continue };
                        script.udp_addresses.insert(address.to_string());
                        let peer =
                            datagrams.entry(address).or_insert_with(|| DatagramPeer { address, exchanges: Vec::new() });
                        match d.direction() {
                            Direction::Out => {
                                let mut exchange = DatagramExchange::default();
                                append(&mut exchange.sent, &mut exchange.wildcards, d);
                                last.insert(address, peer.exchanges.len());
                                peer.exchanges.push(exchange);
                            }
                            Direction::In => {
                                if let Some(&i) = last.get(&address) {
                                    peer.exchanges[i].replies.push((d.payload.to_vec(), d.ts_ns));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                // A recording without file offsets (an older one): files read to their end
                // with read/lseek.
                StreamKind::File
                    if info.origin == "open"
                        && !info.joined_mid_stream
                        && !histories.get(&info.path).is_some_and(|h| h.placed) =>
                {
                    let events = positions.remove(&id).unwrap_or_default();
                    if let Some(content) = file_content(&chunks, events) {
                        script.files.entry(info.path.clone()).or_insert(FileStart::Content(content, None));
                    }
                }
                _ => {}
            }
        }
        // Only files seen whole (a library the loader reads the head of, then maps, comes from
        // the disk), or that the program created: opened new, made by mkdir, or named by a
        // rename or link of something it created (a temporary file renamed into place) that it
        // had not read before.
        // A path a rename or link put another file at: what the program did to it after that
        // says nothing of the file it found (git reads its index, then renames index.lock
        // over it and reads that).
        let mut replaced: HashMap<&str, u64> = HashMap::new();
        for (_, paths, ts) in names.iter().filter(|(mkdir, ..)| !mkdir) {
            if let [_, new] = paths.as_slice() {
                let earliest = replaced.entry(new.as_str()).or_insert(*ts);
                *earliest = (*earliest).min(*ts);
            }
        }
        type Start = (Initial, bool, Option<i64>, Vec<(u64, u64)>);
        let initial: HashMap<String, Start> = histories
            .into_histories()
            .filter(|(_, h)| h.placed)
            .filter_map(|(path, h)| {
                let start = h.initial_before(replaced.get(path.as_str()).copied().unwrap_or(u64::MAX))?;
                Some((path, (start, h.redacted, h.mtime_ns, h.redacted_reads)))
            })
            .collect();
        let mut created: std::collections::HashSet<String> =
            initial.iter().filter(|(_, (i, ..))| *i == Initial::Created).map(|(p, _)| p.clone()).collect();
        let mut created_dirs: Vec<String> = Vec::new();
        let under_created = |path: &str, dirs: &[String]| dirs.iter().any(|d| path.starts_with(&format!("{d}/")));
        for (mkdir, paths, _) in &names {
            match (mkdir, paths.as_slice()) {
                (true, [dir]) => {
                    created_dirs.push(dir.clone());
                    created.insert(dir.clone());
                }
                // Named by something the program made, and not there before (opened, read).
                (false, [old, new])
                    if (created.contains(old) || under_created(old, &created_dirs))
                        && !initial
                            .get(new)
                            .is_some_and(|(i, ..)| matches!(i, Initial::Content(_) | Initial::Unknown(_))) =>
                {
                    created.insert(new.clone());
                }
                _ => {}
            }
        }
        for path in &created {
            if !under_created(path, &created_dirs) {
                script.files.insert(path.clone(), FileStart::Absent);
            }
        }
        for (path, (start, redacted, mtime_ns, redacted_reads)) in initial {
            if created.contains(&path) || under_created(&path, &created_dirs) {
                continue;
            }
            let mut content = match start {
                Initial::Content(content) => content,
                Initial::Unknown(pieces) => {
                    if !pieces.is_empty() && !host_agrees(&path, &pieces, &redacted_reads) {
                        script.changed_on_host.push(path);
                    }
                    continue;
                }
                Initial::Created => continue,
            };
            if !redacted_reads.is_empty() && fill_from_host(&path, &mut content, &redacted_reads) {
                script.filled_from_host.push(path.clone());
            } else if redacted && std::str::from_utf8(&content).is_err() {
                // Redaction keeps lengths, not binary formats (see `file_content`).
                continue;
            }
            script.files.insert(path, FileStart::Content(content, mtime_ns));
        }
        // A connection between two of the program's own sockets (a server it ran and its own
        // client of it): in replay both ends are in the sandbox and talk for real, so neither
        // end is played.
        let internal: std::collections::HashSet<u64> = outbound_ends
            .iter()
            .filter_map(|&(id, local, peer)| Some([id, *accepted_ends.get(&(peer, local))?]))
            .flatten()
            .collect();
        script.connections.retain(|c| !internal.contains(&c.stream_id));
        // And one to a unix socket the program bound: its server ran in the recording.
        let bound: std::collections::HashSet<&str> = infos
            .values()
            .filter(|i| i.kind() == StreamKind::Unix && !i.local.is_empty())
            .map(|i| i.local.as_str())
            .collect();
        script.connections.retain(|c| !c.unix_path.as_deref().is_some_and(|p| bound.contains(p)));
        script.unix_peers.retain(|path, _| !bound.contains(path.as_str()));
        accepted.retain(|a: &Accepted| !internal.contains(&a.0));
        script.internal_connections = internal.len() / 2;
        // Connections in the order the program opened them.
        script.connections.sort_by_key(|c| c.stream_id);
        handshake_only(&mut script.connections);
        (script.inbound, script.inbound_order) = inbound(accepted);
        for c in &mut script.inbound {
            c.tls = tls_inbound.remove(&c.stream_id);
        }
        script.datagrams = datagrams.into_values().collect();
        script.datagrams.sort_by_key(|p| p.address);
        Ok(script)
    }
}

/// What the program read of each of the kernel's files that say the same to every process
/// (`rootfs::is_system_proc_file`): of its first open that read from the start, the bytes read
/// in one pass from offset 0 (a reader that seeks back to the start to read again, as procps
/// does, sees them again). Opens that lost bytes or had secrets redacted are passed over.
fn proc_files(
    infos: &HashMap<u64, proto::StreamInfo>,
    data: &HashMap<u64, Vec<(u64, usize, proto::Data)>>,
    gapped: &std::collections::HashSet<u64>,
) -> Vec<(String, Vec<u8>)> {
    let mut opens: Vec<&proto::StreamInfo> = infos
        .values()
        .filter(|i| i.kind() == StreamKind::File && !gapped.contains(&i.id))
        .filter(|i| super::rootfs::is_system_proc_file(&i.path))
        .collect();
    opens.sort_by_key(|i| i.id);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for info in opens {
        if files.iter().any(|(path, _)| *path == info.path) {
            continue;
        }
        let mut reads: Vec<&(u64, usize, proto::Data)> =
            data.get(&info.id).into_iter().flatten().filter(|c| c.2.direction() == Direction::In).collect();
        reads.sort_by_key(|c| (c.0, c.1));
        if reads.first().is_none_or(|c| c.2.offset != 0) || reads.iter().any(|c| !c.2.redactions.is_empty()) {
            continue;
        }
        files.push((info.path.clone(), longest_pass(reads.iter().map(|c| &c.2))));
    }
    files
}

/// Of reads that go over a file from its start, perhaps more than once (procps reads
/// /proc/stat again with a larger buffer when the first did not hold it all), the bytes of
/// the longest pass: a pass ends where a read does not start where the last one ended.
fn longest_pass<'a>(reads: impl Iterator<Item = &'a proto::Data>) -> Vec<u8> {
    let (mut longest, mut pass): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    for d in reads {
        if d.offset != pass.len() as u64 {
            if pass.len() > longest.len() {
                longest = std::mem::take(&mut pass);
            }
            pass.clear();
            if d.offset != 0 {
                continue;
            }
        }
        pass.extend_from_slice(&d.payload);
    }
    if pass.len() > longest.len() {
        longest = pass;
    }
    longest
}

/// The random devices whose reads replay serves from the recording.
pub const RANDOM_DEVICES: &[&str] = &["/dev/urandom", "/dev/random"];

/// What the program read from each random device, all its streams' reads in recorded order. A
/// device one of whose streams lost bytes or was redacted is left to the host.
fn random_devices(
    infos: &HashMap<u64, proto::StreamInfo>,
    data: &HashMap<u64, Vec<(u64, usize, proto::Data)>>,
    gapped: &std::collections::HashSet<u64>,
) -> Vec<(String, Vec<u8>)> {
    let mut devices = Vec::new();
    for device in RANDOM_DEVICES {
        let streams: Vec<u64> = infos.values().filter(|i| i.path == *device).map(|i| i.id).collect();
        let mut reads: Vec<&(u64, usize, proto::Data)> = streams
            .iter()
            .flat_map(|id| data.get(id).into_iter().flatten())
            .filter(|c| c.2.direction() == Direction::In)
            .collect();
        if reads.is_empty()
            || streams.iter().any(|id| gapped.contains(id))
            || reads.iter().any(|c| !c.2.redactions.is_empty())
        {
            continue;
        }
        reads.sort_by_key(|c| (c.0, c.1));
        devices.push(((*device).to_owned(), reads.iter().flat_map(|c| c.2.payload.iter().copied()).collect()));
    }
    devices
}

/// Puts the host's bytes into the spans of `content` redacted at record time, where the host's
/// file is otherwise the same (same length, same bytes outside them): a source file or a
/// config that is still there then replays as the program read it, a secret in a string or
/// an expression included, while the recording never held it. False where the host has no
/// such file (another machine, a changed file): the placeholders stay.
fn fill_from_host(path: &str, content: &mut [u8], spans: &[(u64, u64)]) -> bool {
    let Ok(host) = std::fs::read(path) else { return false };
    if !same_but_redacted(0, content, &host, spans) {
        return false;
    }
    content.copy_from_slice(&host);
    true
}

/// Whether `host`, the host file's bytes from offset `at`, are `recorded` but in the file
/// ranges redacted at record time (what placeholders replaced there can be anything).
fn same_but_redacted(at: u64, recorded: &[u8], host: &[u8], redacted: &[(u64, u64)]) -> bool {
    let hidden = |i: usize| redacted.iter().any(|&(a, b)| (a..b).contains(&(at + i as u64)));
    recorded.len() == host.len() && recorded.iter().zip(host).enumerate().all(|(i, (r, h))| r == h || hidden(i))
}

/// Whether the host's file holds `pieces` (offset, bytes) where they were read, redacted
/// spans aside. Files the program read only in part come from the host in replay: one that no
/// longer holds what was read (a library upgraded since, a log rotated) is a world the program
/// did not see. The kernel's own files change by themselves and are not asked about.
fn host_agrees(path: &str, pieces: &[(u64, Vec<u8>)], redacted: &[(u64, u64)]) -> bool {
    use std::os::unix::fs::FileExt as _;
    if ["/proc/", "/sys/", "/dev/"].iter().any(|p| path.starts_with(p)) {
        return true;
    }
    let Ok(file) = std::fs::File::open(path) else { return false };
    pieces.iter().all(|(at, bytes)| {
        let mut host = vec![0u8; bytes.len()];
        file.read_exact_at(&mut host, *at).is_ok() && same_but_redacted(*at, bytes, &host, redacted)
    })
}

/// A connection that only shook hands with a TLS server whose other connections' plaintext
/// was recorded (a pooling client's spare: its library is hooked, and no plaintext went
/// either way) is a TLS connection with nothing in it, not ciphertext to compare.
fn handshake_only(connections: &mut [Connection]) {
    let with_plaintext: std::collections::HashSet<SocketAddr> =
        connections.iter().filter(|c| c.tls.as_ref().is_some_and(|t| t.prefix.is_empty())).map(|c| c.peer).collect();
    for c in connections.iter_mut().filter(|c| c.tls.is_none() && with_plaintext.contains(&c.peer)) {
        if matches!(c.steps.first(), Some(Step::Send { bytes, .. }) if bytes.starts_with(&[0x16, 0x03])) {
            c.steps.clear();
            c.tls = Some(TlsSession::default());
        }
    }
}

/// A TLS socket's records before its handshake: up to the first bytes either way that start
/// like a TLS handshake record (a server may peek at the first byte alone).
fn cleartext_prefix(chunks: &[(u64, usize, proto::Data)]) -> impl Iterator<Item = &proto::Data> {
    chunks.iter().map(|c| &c.2).take_while(|d| d.payload.first() != Some(&0x16))
}

/// Appends a record's payload to `bytes`, and its redacted spans, moved to where they land.
fn append(bytes: &mut Vec<u8>, wildcards: &mut Vec<(usize, usize)>, d: &proto::Data) {
    let base = bytes.len();
    wildcards.extend(d.redactions.iter().map(|r| (base + r.offset as usize, r.length as usize)));
    bytes.extend_from_slice(&d.payload);
}

/// A connection's records as steps; each comes with its index in the order of all inbound
/// connections' records (0 for an outbound connection). What the program read in one go is
/// one step unless something happened elsewhere in between.
fn steps<'a>(chunks: impl Iterator<Item = (&'a proto::Data, usize)>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut last = 0;
    for (d, at) in chunks {
        let follows = at == 0 || at == last + 1;
        last = at;
        match (d.direction(), steps.last_mut()) {
            (Direction::Out, Some(Step::Send { bytes, wildcards })) => append(bytes, wildcards, d),
            (Direction::Out, _) => {
                let (mut bytes, mut wildcards) = (Vec::new(), Vec::new());
                append(&mut bytes, &mut wildcards, d);
                steps.push(Step::Send { bytes, wildcards });
            }
            (Direction::In, Some(Step::Receive { bytes, .. })) if follows => bytes.extend_from_slice(&d.payload),
            (Direction::In, _) => steps.push(Step::Receive { bytes: d.payload.to_vec(), ts_ns: d.ts_ns, gate: at }),
            _ => {}
        }
    }
    steps
}

/// The program's accepted connections (id, local address, when accepted, records) as
/// connections to replay, with the order of their events across connections.
type Accepted = (u64, SocketAddr, (u64, usize), Vec<(u64, usize, proto::Data)>);
fn inbound(mut accepted: Vec<Accepted>) -> (Vec<Connection>, Vec<OrderEvent>) {
    accepted.sort_by_key(|a| a.0);
    let mut all: Vec<(u64, usize, usize, usize)> = Vec::new(); // ts, order, connection, chunk
    for (i, (.., chunks)) in accepted.iter().enumerate() {
        all.extend(chunks.iter().enumerate().map(|(j, c)| (c.0, c.1, i, j)));
    }
    all.sort_unstable();
    // Event 0 is a placeholder: a gate of 0 means "no wait".
    let mut order = vec![OrderEvent { connection: usize::MAX, to_program: false, end: 0, ts_ns: 0 }];
    let mut index: Vec<Vec<usize>> = accepted.iter().map(|a| vec![0; a.3.len()]).collect();
    let mut ends: Vec<[u64; 2]> = vec![[0; 2]; accepted.len()];
    for &(_, _, i, j) in &all {
        let d = &accepted[i].3[j].2;
        let to_program = d.direction() == Direction::In;
        let end = &mut ends[i][to_program as usize];
        *end += d.payload.len() as u64;
        index[i][j] = order.len();
        order.push(OrderEvent { connection: i, to_program, end: *end, ts_ns: d.ts_ns });
    }
    let connections = accepted
        .into_iter()
        .zip(index)
        .map(|((stream_id, peer, opened, chunks), index)| Connection {
            tls: None,
            piece: None,
            unix_path: None,
            stream_id,
            peer,
            opens_at: 1 + all.partition_point(|e| (e.0, e.1) < opened),
            steps: steps(chunks.iter().zip(index).map(|(c, at)| (&c.2, at))),
        })
        .collect();
    (connections, order)
}

#[derive(Debug, Clone, Copy)]
enum FileEvent {
    Seek(u64),
    Eof,
}

/// A file's content as the program read it: reads placed at the file position (following
/// lseek), complete only if a read hit the end and every byte before it was read. Positional
/// reads (pread) carry no position in the recording: such files come from the disk.
fn file_content(chunks: &[(u64, usize, proto::Data)], events: Vec<(u64, usize, FileEvent)>) -> Option<Vec<u8>> {
    enum Ev<'a> {
        Read(&'a proto::Data),
        File(FileEvent),
    }
    let mut timeline: Vec<(u64, usize, Ev)> = chunks
        .iter()
        .filter(|c| c.2.direction() == Direction::In)
        .map(|c| (c.0, c.1, Ev::Read(&c.2)))
        .chain(events.into_iter().map(|(ts, order, e)| (ts, order, Ev::File(e))))
        .collect();
    timeline.sort_by_key(|e| (e.0, e.1));
    let mut content: Vec<u8> = Vec::new();
    let mut covered: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0usize;
    let mut end = None;
    for (_, _, ev) in timeline {
        match ev {
            Ev::Read(d) if d.syscall == "read" || d.syscall == "readv" => {
                let to = pos + d.payload.len();
                if content.len() < to {
                    content.resize(to, 0);
                }
                content[pos..to].copy_from_slice(&d.payload);
                covered.push((pos, to));
                pos = to;
            }
            Ev::Read(_) => return None,
            Ev::File(FileEvent::Seek(to)) => pos = to as usize,
            Ev::File(FileEvent::Eof) => end = Some(pos),
        }
    }
    let end = end?;
    covered.sort_unstable();
    let mut reach = 0;
    for (from, to) in covered {
        if from > reach {
            break;
        }
        reach = reach.max(to);
    }
    if reach < end || end == 0 {
        return None;
    }
    content.truncate(end);
    // Redaction keeps lengths, not binary formats: a binary file with a redacted span (an
    // "email" in bytecode) is served from the disk, a text file as recorded (its placeholders
    // then flow into requests where the recording has the same placeholders).
    let redacted = chunks.iter().any(|c| !c.2.redactions.is_empty());
    if redacted && std::str::from_utf8(&content).is_err() {
        return None;
    }
    Some(content)
}

/// The address a recorded unix socket peer goes by among the connections (the `n`th path):
/// in fd00::/8, which no recording's TCP peers use here.
fn unix_stand_in(n: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x7265, 0x7472, 0x6163, 0x65, 0, 0, 1)), n + 1)
}

impl Connection {
    /// Where it went, as the report says it: the socket path for a unix one.
    pub fn peer_name(&self) -> String {
        self.unix_path.clone().unwrap_or_else(|| self.peer.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_go_to_their_thread_and_never_come_short() {
        let mut recorded =
            RecordedBytes([(1, vec![1; 16]), (2, vec![2; 32]), (1, vec![3; 32]), (2, vec![4; 8])].into());
        // Thread 2 first: its own, though thread 1's come before.
        assert_eq!(recorded.take(Some(2), 32), Some(vec![2; 32]));
        // Thread 1 asks for 32: its 16 would be short, its next 32 serve.
        assert_eq!(recorded.take(Some(1), 32), Some(vec![3; 32]));
        // A thread with none of its own left gets another's of exactly the size asked.
        assert_eq!(recorded.take(Some(9), 8), Some(vec![4; 8]));
        assert_eq!(recorded.take(Some(9), 12), None);
        assert_eq!(recorded.take(None, 16), Some(vec![1; 16]));
        assert!(recorded.is_empty());
    }

    fn read(ts: u64, syscall: &'static str, bytes: &[u8]) -> (u64, usize, proto::Data) {
        let d = proto::Data {
            direction: Direction::In as i32,
            syscall: syscall.into(),
            payload: bytes::Bytes::copy_from_slice(bytes),
            ..Default::default()
        };
        (ts, ts as usize, d)
    }

    #[test]
    fn reads_land_at_their_file_positions() {
        // bash: read 8 bytes, seek back to 0, read all, read 0 (end).
        let chunks = [read(1, "read", b"#!/bin/b"), read(3, "read", b"#!/bin/bash\necho hi\n")];
        let events = vec![(2, 2, FileEvent::Seek(0)), (4, 4, FileEvent::Eof)];
        assert_eq!(file_content(&chunks, events).as_deref(), Some(&b"#!/bin/bash\necho hi\n"[..]));
        // No read hit the end: not served (the loader maps the rest of a library).
        assert_eq!(file_content(&chunks[..1], vec![]), None);
        // A hole (seek past unread bytes): not served.
        let chunks = [read(1, "read", b"abc"), read(3, "read", b"xyz")];
        assert_eq!(file_content(&chunks, vec![(2, 2, FileEvent::Seek(10)), (4, 4, FileEvent::Eof)]), None);
        // pread carries no position in the recording: not served.
        assert_eq!(file_content(&[read(1, "pread64", b"abc")], vec![(2, 2, FileEvent::Eof)]), None);
    }

    #[test]
    fn a_kernel_file_read_twice_is_its_longest_pass() {
        let at = |offset: u64, bytes: &[u8]| proto::Data { offset, ..read(0, "read", bytes).2 };
        // procps: a buffer too small, then the whole file from the start.
        let reads = [at(0, b"cpu  1 2"), at(0, b"cpu  1 2 3\nintr 5\n")];
        assert_eq!(longest_pass(reads.iter()), b"cpu  1 2 3\nintr 5\n");
        // Two pieces, then a second pass as long: the first.
        let reads = [at(0, b"MemTotal: "), at(10, b"100\n"), at(0, b"MemTotal: 999\n")];
        assert_eq!(longest_pass(reads.iter()), b"MemTotal: 100\n");
        // A read from elsewhere ends a pass and is not one.
        let reads = [at(0, b"ab"), at(7, b"zzzzzzzz")];
        assert_eq!(longest_pass(reads.iter()), b"ab");
    }
}
