//! fd tables and stream identities: opening, binding, closing, addresses.

use super::*;

impl Tracker {
    /// Records the fds a process already has open, known by path/peer and marked as joined
    /// mid-stream: on attach (`origin` "attach"), and for a launched command held before exec
    /// ("inherited": close-on-exec fds are left out, exec closes them). Its cwd is learnt here
    /// too, while the process surely exists: from then on fork, chdir and fchdir records keep
    /// every followed process's cwd (one that exits at once still has its relative paths right).
    pub fn adopt_open_fds(&mut self, tgid: u32, origin: &str, now_mono_ns: u64, out: &mut Vec<proto::Record>) {
        self.adopt_fds_where(tgid, origin, now_mono_ns, out, |_| true);
    }

    /// `adopt_open_fds` for the fds `keep` accepts only.
    pub(super) fn adopt_fds_where(
        &mut self,
        tgid: u32,
        origin: &str,
        now_mono_ns: u64,
        out: &mut Vec<proto::Record>,
        keep: impl Fn(i32) -> bool,
    ) {
        if let Some(cwd) = procfs::cwd(tgid) {
            self.cwd.insert(tgid, cwd);
        }
        let table = self.tables.table_id(tgid);
        let ts = self.wall_ns(now_mono_ns);
        for (fd, id) in procfs::open_fds(tgid).unwrap_or_default() {
            if !keep(fd) || (origin == "inherited" && id.cloexec) {
                continue;
            }
            let sid = self.new_stream(tgid, fd, &id, origin, true, ts, out);
            if let Some(s) = self.streams.get_mut(&sid) {
                s.refs += 1;
            }
            self.tables.table_mut(table).fds.insert(fd, FdEntry { stream: sid, cloexec: id.cloexec });
        }
    }

    /// Points `fd` at stream `sid`, closing what it pointed at before.
    pub(super) fn bind_fd(
        &mut self,
        tgid: u32,
        fd: i32,
        sid: u64,
        cloexec: bool,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if let Some(old) = self.unbind_fd(tgid, fd) {
            self.release(old.stream, ts, out);
        }
        let table = self.tables.table_id(tgid);
        self.tables.table_mut(table).fds.insert(fd, FdEntry { stream: sid, cloexec });
        if let Some(s) = self.streams.get_mut(&sid) {
            s.refs += 1;
        }
    }

    pub(super) fn unbind_fd(&mut self, tgid: u32, fd: i32) -> Option<FdEntry> {
        let table = self.tables.table_id(tgid);
        let entry = self.tables.table_mut(table).fds.remove(&fd)?;
        self.remember_closed(tgid, fd, entry.stream);
        Some(entry)
    }

    /// One fd fewer refers to the stream; the last one closes it.
    pub(super) fn release(&mut self, sid: u64, ts: u64, out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        s.refs = s.refs.saturating_sub(1);
        if s.refs == 0 {
            let carried_tls = s.has_tls;
            self.streams.remove(&sid);
            self.handshakes.retain(|(_, c)| *c != sid);
            out.push(record(R::Close(proto::StreamClose { stream_id: sid, ts_ns: ts })));
            if carried_tls {
                self.close_carried(sid, ts, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_stream(
        &mut self,
        tgid: u32,
        fd: i32,
        id: &procfs::FdIdentity,
        origin: &str,
        joined: bool,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        self.next_stream += 1;
        self.totals.streams += 1;
        let sid = self.next_stream;
        let info = proto::StreamInfo {
            id: sid,
            kind: id.kind.to_proto() as i32,
            pid: tgid,
            fd,
            path: id.path.clone(),
            local: id.local.clone(),
            peer: id.peer.clone(),
            origin: origin.to_owned(),
            joined_mid_stream: joined,
            position: id.position,
            ts_ns: ts,
            listening: id.listening,
            ..Default::default()
        };
        out.push(record(R::Stream(info.clone())));
        // Joined streams count from the file position, so offsets stay true file offsets.
        let pos = if joined && id.kind == Kind::File { id.position } else { 0 };
        let file_pos = (id.kind == Kind::File).then_some(pos);
        self.streams.insert(
            sid,
            Stream { info, refs: 0, pos_in: pos, pos_out: pos, file_pos, append: false, hello: None, has_tls: false },
        );
        sid
    }

    /// The stream behind an fd; an fd we never saw opened (inherited, or opened before attach)
    /// is looked up in /proc now and marked as joined mid-stream.
    pub(super) fn stream_for_fd(&mut self, tgid: u32, fd: i32, ts: u64, out: &mut Vec<proto::Record>) -> u64 {
        if let Some(entry) = self.tables.get(tgid, fd) {
            return entry.stream;
        }
        // An fd Retrace never saw created (one received over a unix socket, made by io_uring...).
        // Asking /proc now is no answer: by the time this record is read the process may have
        // closed it and put a file opened later under the same number.
        let id = procfs::FdIdentity {
            kind: Kind::Other,
            path: format!("fd {fd} (opened by a call Retrace does not follow)"),
            ..Default::default()
        };
        let sid = self.new_stream(tgid, fd, &id, "untracked", true, ts, out);
        self.bind_fd(tgid, fd, sid, false, ts, out);
        sid
    }

    /// The kernel dropped a record that changed `fd` (an open, close or dup): what it pointed
    /// at before is closed, and from here on it is a stream of unknown identity (asking /proc
    /// now could name a file opened later still).
    pub(super) fn reopen_fd(&mut self, tgid: u32, fd: i32, ts: u64, out: &mut Vec<proto::Record>) -> u64 {
        let id = procfs::FdIdentity {
            kind: Kind::Other,
            path: format!("fd {fd} (reopened while records were dropped)"),
            ..Default::default()
        };
        let sid = self.new_stream(tgid, fd, &id, "unknown", true, ts, out);
        self.bind_fd(tgid, fd, sid, false, ts, out);
        sid
    }

    pub(super) fn fd_path(&mut self, tgid: u32, fd: i32, ts: u64, out: &mut Vec<proto::Record>) -> Option<String> {
        let sid = self.stream_for_fd(tgid, fd, ts, out);
        self.streams.get(&sid).map(|s| s.info.path.clone()).filter(|p| p.starts_with('/'))
    }

    /// The cwd of a followed process; /proc is asked only for one whose fork record was lost.
    pub(super) fn cwd_of(&mut self, tgid: u32) -> String {
        self.cwd.entry(tgid).or_insert_with(|| procfs::cwd(tgid).unwrap_or_else(|| "/".into())).clone()
    }

    /// Sets the addresses a syscall or the kernel reported, and writes the updated identity.
    pub(super) fn set_addresses(
        &mut self,
        sid: u64,
        local: Option<String>,
        peer: Option<String>,
        out: &mut Vec<proto::Record>,
    ) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if let Some(peer) = peer.filter(|p| !p.is_empty()) {
            s.info.peer = peer;
        }
        if let Some(local) = local.filter(|l| !l.is_empty()) {
            s.info.local = local;
        }
        out.push(record(R::Stream(s.info.clone())));
    }

    /// Fills in addresses a socket's stream does not have yet (accepted without asking for
    /// the peer, connected before the kernel chose the port) from what the kernel reported.
    pub(super) fn fill_addresses(&mut self, sid: u64, local: String, peer: String, out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get_mut(&sid) else { return };
        if !matches!(s.info.kind(), proto::StreamKind::Tcp | proto::StreamKind::Udp) {
            return;
        }
        let mut changed = false;
        if let Some(merged) = merge_local(&s.info.local, &local) {
            s.info.local = merged;
            changed = true;
        }
        // An all-zero address is unknown (IPv6 UDP), not a peer.
        if !peer.is_empty() && !is_unspecified(&peer) && s.info.peer.is_empty() {
            s.info.peer = peer;
            changed = true;
        }
        if changed {
            out.push(record(R::Stream(s.info.clone())));
        }
    }

    /// The live socket's local address, if `check` accepts what the live fd is now (the agent
    /// runs behind the process, and the fd number may already name another socket).
    pub(super) fn live_local_if(
        &self,
        tgid: u32,
        fd: i32,
        sid: u64,
        check: impl Fn(&procfs::FdIdentity) -> bool,
    ) -> Option<String> {
        let kind = self.streams.get(&sid)?.info.kind();
        if kind != proto::StreamKind::Udp && kind != proto::StreamKind::Tcp {
            return None;
        }
        let mut live = procfs::FdIdentity::default();
        procfs::socket_identity(tgid, fd, &mut live);
        (check(&live) && !live.local.is_empty()).then_some(live.local)
    }

    pub(super) fn learn_peer_if_unset(&mut self, sid: u64, peer: &str, out: &mut Vec<proto::Record>) {
        if let Some(s) = self.streams.get_mut(&sid) {
            if s.info.peer.is_empty() {
                s.info.peer = peer.to_owned();
                out.push(record(R::Stream(s.info.clone())));
            }
        }
    }
}

/// The better of the local address a stream has and the one the kernel reported: the kernel's
/// port replaces a port 0 (bind to port 0), and its exact address replaces a wildcard (accepted
/// from a listener on 0.0.0.0); an unknown (all-zero) kernel address keeps the bound one.
fn merge_local(current: &str, kernel: &str) -> Option<String> {
    let (Some((cur_addr, cur_port)), Some((_, k_port))) = (current.rsplit_once(':'), kernel.rsplit_once(':')) else {
        return (current.is_empty() && !kernel.is_empty()).then(|| kernel.to_owned());
    };
    let merged = match (is_unspecified(current), is_unspecified(kernel)) {
        (_, false) if cur_port == "0" || is_unspecified(current) => kernel.to_owned(),
        (_, true) if cur_port == "0" && k_port != "0" => format!("{cur_addr}:{k_port}"),
        _ => return None,
    };
    (merged != current).then_some(merged)
}

/// `0.0.0.0:port` or `[::]:port`.
pub(super) fn is_unspecified(addr: &str) -> bool {
    addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:")
}

#[cfg(test)]
mod tests {
    use super::merge_local;

    #[test]
    fn kernel_addresses_refine_known_ones() {
        assert_eq!(merge_local("", "127.0.0.1:5"), Some("127.0.0.1:5".into()));
        assert_eq!(merge_local("[::1]:0", "[::]:4242"), Some("[::1]:4242".into()));
        assert_eq!(merge_local("0.0.0.0:80", "127.0.0.1:80"), Some("127.0.0.1:80".into()));
        assert_eq!(merge_local("127.0.0.1:0", "127.0.0.1:9"), Some("127.0.0.1:9".into()));
        assert_eq!(merge_local("127.0.0.1:9", "127.0.0.1:9"), None);
        assert_eq!(merge_local("127.0.0.1:9", "[::]:9"), None);
        assert_eq!(merge_local("/run/x.sock", ""), None);
    }
}
