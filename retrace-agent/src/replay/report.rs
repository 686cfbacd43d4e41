//! The replay report: every recorded exchange matched or diverged (with the first differing
//! offset and context), blocked attempts, files served, what the program wrote and removed in
//! its private layer, and its exit status against the recorded one.

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Difference {
    /// Offset in what the program sent on this connection.
    pub offset: u64,
    pub what: String,
    pub expected: String,
    pub actual: String,
    /// What `--denoise` may learn from it.
    #[serde(skip)]
    pub learn: Option<Learn>,
}

/// A difference that could be noise: a header's value, or a text (a body, an output line) of
/// which a span differs.
#[derive(Debug, Clone, PartialEq)]
pub enum Learn {
    Header(String),
    Text { expected: Vec<u8>, actual: Vec<u8> },
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Exchange {
    pub stream_id: u64,
    pub peer: String,
    /// `matched`, `diverged` or `not_played` (the program never made this connection).
    pub status: String,
    pub bytes_from_program: u64,
    pub bytes_to_program: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// Differences ignored as noise (HTTP header values, noise rules), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<super::http::Ignored>,
}

impl Exchange {
    /// Adds what the program did with another of the same recorded connection's requests.
    pub fn add(&mut self, other: Exchange) {
        self.bytes_from_program += other.bytes_from_program;
        self.bytes_to_program += other.bytes_to_program;
        self.ignored.extend(other.ignored);
        if other.status != "matched" {
            self.status = other.status;
        }
        if self.difference.is_none() {
            self.difference = other.difference;
        }
    }
}

/// The program's stdout or stderr against the recorded command's.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OutputCheck {
    pub fd: i32,
    /// `matched` or `diverged`.
    pub status: String,
    /// Bytes the program wrote there.
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
    /// Lines that differed only in their times or by the noise rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<super::http::Ignored>,
}

/// A connection of the program that matched no recorded one (by what it sent first): reset.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Unmatched {
    pub address: String,
    /// The start of what the program sent.
    pub sent: String,
    /// The recorded connection to that address it came closest to, and how it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closest_stream_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<Difference>,
}

/// A TLS handshake with the replayer's server that did not complete: the program refused the
/// replay's certificate (it pins a key or trusts only roots compiled into it), or the
/// handshake failed otherwise.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TlsRefusal {
    pub address: String,
    /// The server names the replayer's certificate was made for.
    pub names: Vec<String>,
    /// The program did not trust the replay CA.
    pub untrusted: bool,
    pub detail: String,
}

/// A DNS question the program asked a recorded DNS server.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DnsQuery {
    pub name: String,
    /// A, AAAA, ... (TYPEn for the rest).
    #[serde(rename = "type")]
    pub qtype: String,
    /// `recorded`, or NXDOMAIN for a question the recording never asked.
    pub answer: String,
}

impl DnsQuery {
    pub const NXDOMAIN: &'static str = "NXDOMAIN (never asked when recorded)";
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Blocked {
    pub syscall: String,
    pub address: String,
    pub pid: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// `passed` or `failed`.
    pub result: String,
    /// The program's own exit status (128+N for signal N).
    pub exit_status: i32,
    /// Wall-clock reads answered with the recorded time, and how many of them with the exact
    /// time the recorded thread read (the others: the recorded event's time plus elapsed).
    pub clock_reads: u64,
    pub clock_reads_exact: u64,
    /// New images given the AT_RANDOM bytes their recorded exec had.
    pub at_random_replayed: u64,
    /// getrandom calls answered with the recorded bytes, and those past the recorded ones
    /// (answered by the kernel).
    pub random_reads: u64,
    pub random_unreplayed: u64,
    /// Calls of OpenSSL's random functions answered with the recorded bytes, and those past
    /// them (answered by OpenSSL).
    pub library_random_reads: u64,
    pub library_random_unreplayed: u64,
    /// Folder reads (getdents64) answered with the recorded entries.
    pub listings_served: u64,
    /// Bytes read from a random device (/dev/urandom, /dev/random) that were the recorded
    /// ones, and bytes read past them (fresh).
    pub device_random_replayed: u64,
    pub device_random_unreplayed: u64,
    pub exchanges: Vec<Exchange>,
    /// stdout (1) and stderr (2), where they were compared (no terminal when recorded or now).
    pub outputs: Vec<OutputCheck>,
    pub blocked: Vec<Blocked>,
    /// Recorded datagram peers that could not be served (their address could not be bound).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datagrams_not_replayed: Vec<String>,
    /// DNS questions answered by recorded DNS servers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<DnsQuery>,
    /// Datagrams to other recorded peers that matched a recorded one (and got its replies).
    pub datagrams_matched: u64,
    /// Connections to a recorded address that matched none of its recorded connections, and
    /// datagrams (`udp ADDRESS`) that matched none of those recorded to their peer.
    pub unmatched: Vec<Unmatched>,
    /// TLS connections whose handshake with the replayer failed (see `TlsRefusal`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_refused: Vec<TlsRefusal>,
    /// TLS connections the replayer terminated with the replay CA.
    pub tls_terminated: u64,
    /// HTTP/1.x requests the program sent on another connection than when recorded, or on a
    /// new one (a client that pools connections): each got the response to the same request.
    pub requests_moved: u64,
    /// Recorded connections between two of the program's own sockets (a server it ran and its
    /// own client): not played, made again for real inside the sandbox.
    pub internal_connections: usize,
    /// Unix socket paths the program tried that do not exist on the host: refused with ENOENT,
    /// as the host would, and not a failure (nothing could be reached there).
    pub absent_sockets: Vec<String>,
    pub files_served: Vec<String>,
    /// Of those, files read with secrets in them (redacted at record time) whose placeholders
    /// hold the host's bytes again: the host's file is the recorded one but for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_filled_from_host: Vec<String>,
    /// Files the program read only in part (a library's header, a log's tail): they come from
    /// the host, and these no longer hold what the program read when recorded. A warning: the
    /// outputs say whether it mattered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_changed_on_host: Vec<String>,
    /// Files the recording created, which exist on the host today: hidden at the start.
    pub files_absent: Vec<String>,
    /// Files the program created or changed (in its private layer, never on the host).
    pub scratch_writes: Vec<String>,
    /// Paths the program removed (likewise).
    pub scratch_removed: Vec<String>,
    /// The program's exit status when recorded, if it ended on its own then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_exit_status: Option<i32>,
    pub errors: Vec<String>,
}

impl ReplayReport {
    pub fn passed(&self) -> bool {
        self.errors.is_empty()
            && self.blocked.is_empty()
            && self.unmatched.is_empty()
            && self.tls_refused.is_empty()
            && self.dns.iter().all(|q| q.answer != DnsQuery::NXDOMAIN)
            && self.exchanges.iter().all(|e| e.status == "matched")
            && self.outputs.iter().all(|o| o.status == "matched")
            && !self.exit_differs()
    }

    /// The program ended with another status than when it was recorded.
    pub fn exit_differs(&self) -> bool {
        self.recorded_exit_status.is_some_and(|recorded| recorded != self.exit_status)
    }

    /// Human summary, for stderr.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let matched = self.exchanges.iter().filter(|e| e.status == "matched").count();
        s.push_str(&format!(
            "retrace: replay {}: {matched}/{} exchanges matched, {} blocked attempts, {} files served from the recording, {} files written and {} removed in the sandbox; program exited {}\n",
            if self.passed() { "passed" } else { "FAILED" },
            self.exchanges.len(),
            self.blocked.len(),
            self.files_served.len(),
            self.scratch_writes.len(),
            self.scratch_removed.len(),
            self.exit_status
        ));
        if let Some(first) = self.files_changed_on_host.first() {
            s.push_str(&format!(
                "retrace:   warning: {} file(s) read in part when recorded differ on this host and were read from it (first: {first}; see files_changed_on_host)\n",
                self.files_changed_on_host.len()
            ));
        }
        if let (true, Some(recorded)) = (self.exit_differs(), self.recorded_exit_status) {
            s.push_str(&format!(
                "retrace:   exit status {} differs: the program exited {recorded} when recorded\n",
                self.exit_status
            ));
        }
        for e in self.exchanges.iter().filter(|e| e.status != "matched") {
            match &e.difference {
                Some(d) => s.push_str(&format!(
                    "retrace:   stream {} to {}: {} at byte {}: expected \"{}\", got \"{}\"\n",
                    e.stream_id, e.peer, d.what, d.offset, d.expected, d.actual
                )),
                None => s.push_str(&format!("retrace:   stream {} to {}: {}\n", e.stream_id, e.peer, e.status)),
            }
        }
        for t in &self.tls_refused {
            let why = if t.untrusted {
                "the program does not trust the replay CA (a pinned key, or roots compiled into it: it cannot be replayed against a stand-in server)"
            } else {
                "the TLS handshake with the replayer failed"
            };
            s.push_str(&format!("retrace:   TLS to {} ({}): {why}: {}\n", t.address, t.names.join(", "), t.detail));
        }
        for o in self.outputs.iter().filter(|o| o.status != "matched") {
            let name = if o.fd == 1 { "stdout" } else { "stderr" };
            if let Some(d) = &o.difference {
                s.push_str(&format!(
                    "retrace:   {name}: {} at byte {}: expected \"{}\", got \"{}\"\n",
                    d.what, d.offset, d.expected, d.actual
                ));
            }
        }
        let ignored: usize = self.exchanges.iter().map(|e| e.ignored.len()).sum::<usize>()
            + self.outputs.iter().map(|o| o.ignored.len()).sum::<usize>();
        if ignored > 0 {
            let outputs = self.outputs.iter().filter(|o| !o.ignored.is_empty());
            let mut fields: Vec<&str> = self
                .exchanges
                .iter()
                .flat_map(|e| e.ignored.iter().map(|i| i.field.as_str()))
                .chain(outputs.map(|o| if o.fd == 1 { "stdout lines" } else { "stderr lines" }))
                .collect();
            fields.sort_unstable();
            fields.dedup();
            s.push_str(&format!(
                "retrace:   {ignored} differences ignored as noise ({}; each in the report)\n",
                fields.join(", ")
            ));
        }
        for u in &self.unmatched {
            match (&u.difference, u.closest_stream_id) {
                (Some(d), Some(id)) => s.push_str(&format!(
                    "retrace:   a connection to {} matched no recorded one (reset); closest, stream {id}: {} at byte {}: expected \"{}\", got \"{}\"\n",
                    u.address, d.what, d.offset, d.expected, d.actual
                )),
                _ if u.address.starts_with("udp ") => s.push_str(&format!(
                    "retrace:   a datagram to {} matched no recorded one (no answer): \"{}\"\n",
                    &u.address[4..], u.sent
                )),
                _ => s.push_str(&format!(
                    "retrace:   a connection to {} matched no recorded one (reset): it sent \"{}\"\n",
                    u.address, u.sent
                )),
            }
        }
        for b in &self.blocked {
            s.push_str(&format!("retrace:   blocked {} to {} (pid {})\n", b.syscall, b.address, b.pid));
        }
        for q in self.dns.iter().filter(|q| q.answer == DnsQuery::NXDOMAIN) {
            s.push_str(&format!(
                "retrace:   DNS {} {}: answered NXDOMAIN, never asked when recorded\n",
                q.qtype, q.name
            ));
        }
        if !self.datagrams_not_replayed.is_empty() {
            s.push_str(&format!(
                "retrace:   note: recorded datagram peers not served: {}\n",
                self.datagrams_not_replayed.join(", ")
            ));
        }
        if !self.absent_sockets.is_empty() {
            s.push_str(&format!(
                "retrace:   note: connects to absent unix sockets refused with ENOENT: {}\n",
                self.absent_sockets.join(", ")
            ));
        }
        for e in &self.errors {
            s.push_str(&format!("retrace:   error: {e}\n"));
        }
        s
    }
}
