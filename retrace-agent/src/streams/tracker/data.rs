//! Payload placement: chunks at their stream offsets, holes as gaps, loss reported late.

use bytes::Bytes;
use retrace_common::{
    syscall::{Direction, Sys},
    DataChunk, SyscallRecord, FD_REOPENED,
};

use super::*;

impl Tracker {
    /// Loss the kernel could not attach to any record, read from its map at the end.
    /// `reopened`: a record that changed the fd was dropped too, so the loss cannot be told
    /// to belong to what the agent last knew the fd as: it goes to a stream of unknown identity.
    #[allow(clippy::too_many_arguments)]
    pub fn pending_loss(
        &mut self,
        tgid: u32,
        fd: i32,
        bytes_in: u64,
        bytes_out: u64,
        reopened: bool,
        now_mono_ns: u64,
        out: &mut Vec<proto::Record>,
    ) {
        let ts = self.wall_ns(now_mono_ns);
        let bound = match reopened {
            true => Some(self.reopen_fd(tgid, fd, ts, out)),
            false => self.tables.get(tgid, fd).map(|entry| entry.stream),
        };
        if let Some(sid) = bound {
            self.gap(sid, Direction::In, bytes_in, GapReason::RecordDropped, "", ts, out);
            self.gap(sid, Direction::Out, bytes_out, GapReason::RecordDropped, "", ts, out);
            return;
        }
        // The fd was closed (or its process exited): the loss belongs at the end of the stream
        // it named then.
        let Some(mut closed) = self.closed_fds.get(&(tgid, fd)).copied() else {
            self.unattributed_bytes += bytes_in + bytes_out;
            return;
        };
        for (dir, len) in [(Direction::In, bytes_in), (Direction::Out, bytes_out)] {
            if len == 0 {
                continue;
            }
            let pos = if dir == Direction::In { &mut closed.pos_in } else { &mut closed.pos_out };
            let offset = *pos;
            *pos += len;
            self.gap_at(closed.stream, dir, offset, len, GapReason::RecordDropped, "", ts, out);
        }
        self.closed_fds.insert((tgid, fd), closed);
    }

    /// Notes where the stream behind a closing fd ended.
    pub(super) fn remember_closed(&mut self, tgid: u32, fd: i32, stream: u64) {
        let Some(s) = self.streams.get(&stream) else { return };
        if self.closed_fds.len() >= CLOSED_FDS_MAX {
            self.closed_fds.clear();
        }
        self.closed_fds.insert((tgid, fd), ClosedFd { stream, pos_in: s.pos_in, pos_out: s.pos_out });
    }

    /// The pending call of a thread; a different call still pending there lost its record.
    pub(super) fn take_pending(&mut self, tid: u32, ts_ns: u64, out: &mut Vec<proto::Record>) -> PendingCall {
        match self.pending.remove(&tid) {
            Some(call) if call.ts_ns == ts_ns => call,
            Some(stale) => {
                self.abandon(stale, out);
                PendingCall { ts_ns, ..Default::default() }
            }
            None => PendingCall { ts_ns, ..Default::default() },
        }
    }

    /// A call whose record was dropped. A placed call's reserved range is completed with gaps
    /// (the kernel counts nothing more for it); held chunks are discarded, as the kernel counted
    /// the whole call as lost.
    pub(super) fn abandon(&mut self, call: PendingCall, out: &mut Vec<proto::Record>) {
        let Some((sid, dir, base)) = call.placed else { return };
        let Some(total) = call.total else { return };
        let ts = self.wall_ns(call.ts_ns);
        for (offset, len) in holes(&call.spans, total) {
            self.gap_at(sid, dir, base + offset, len, GapReason::RecordDropped, "", ts, out);
        }
    }

    /// A payload chunk: written at once when its call's size is known, held otherwise.
    pub(super) fn chunk(&mut self, chunk: DataChunk, payload: Bytes, out: &mut Vec<proto::Record>) {
        let dir = Sys::from_u32(chunk.sys).and_then(Sys::direction);
        let (tid, ts_ns) = (chunk.hdr.tid, chunk.hdr.ts_ns);
        let mut call = self.take_pending(tid, ts_ns, out);
        match dir {
            Some(dir) if chunk.call_bytes > 0 => {
                let ts = self.wall_ns(ts_ns);
                let (sid, dir, base) = match call.placed {
                    Some(p) => p,
                    None => {
                        let sid = match Sys::from_u32(chunk.sys) {
                            Some(sys) if sys.is_tls() => {
                                self.tls_stream(chunk.hdr.tgid, chunk.fd, chunk.position_arg, sys, ts, out)
                            }
                            _ => self.call_stream(chunk.hdr.tgid, chunk.fd, chunk.flags, ts, out),
                        };
                        let name = Sys::from_u32(chunk.sys).map(Sys::name).unwrap_or("?");
                        let lost_before = (chunk.lost_before_in, chunk.lost_before_out);
                        let base = self.reserve(sid, dir, chunk.call_bytes, &call.addrs, lost_before, name, ts, out);
                        call.placed = Some((sid, dir, base));
                        call.total = Some(chunk.call_bytes);
                        call.file_offset = Sys::from_u32(chunk.sys)
                            .and_then(|sys| self.file_offset(sid, sys, chunk.position_arg, chunk.call_bytes));
                        (sid, dir, base)
                    }
                };
                call.spans.push((chunk.offset, payload.len() as u64));
                self.totals.recorded_bytes += payload.len() as u64;
                self.first_bytes(sid, dir, base + chunk.offset, &payload, out);
                let addr = addr_of(&call.addrs, chunk.msg_index);
                let file_offset = call.file_offset.map(|f| f + chunk.offset);
                out.push(data_record(sid, dir, ts, &chunk, base + chunk.offset, file_offset, payload, addr));
            }
            _ => call.chunks.push((chunk, payload)),
        }
        self.pending.insert(tid, call);
    }

    /// A stream's first bytes: a socket's may be a TLS handshake, a TLS stream's name its
    /// protocol.
    fn first_bytes(&mut self, sid: u64, dir: Direction, offset: u64, payload: &[u8], out: &mut Vec<proto::Record>) {
        let Some(s) = self.streams.get(&sid) else { return };
        if s.info.kind == proto::StreamKind::Tls as i32 {
            if s.hello.is_some() {
                self.tls_first_bytes(sid, payload, out);
            }
        } else if offset < 1024 || s.hello.is_some() {
            self.observe_handshake(sid, dir, offset, payload);
        }
    }

    /// The stream a data call's fd names: a new one of unknown identity when its record or
    /// chunk says the fd changed in records the kernel dropped (`FD_REOPENED`).
    fn call_stream(&mut self, tgid: u32, fd: i32, flags: u32, ts: u64, out: &mut Vec<proto::Record>) -> u64 {
        if flags & FD_REOPENED != 0 {
            self.reopen_fd(tgid, fd, ts, out)
        } else {
            self.stream_for_fd(tgid, fd, ts, out)
        }
    }

    /// Reserves a call's byte range in its stream, first learning the datagram peer it named
    /// and placing the loss of earlier calls whose records were dropped (they came first);
    /// returns where the range starts.
    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &mut self,
        sid: u64,
        dir: Direction,
        call_bytes: u64,
        addrs: &[(u32, String)],
        (lost_in, lost_out): (u64, u64),
        syscall: &'static str,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) -> u64 {
        if let Some((_, first)) = addrs.first() {
            self.learn_peer_if_unset(sid, first, out);
        }
        self.gap(sid, Direction::In, lost_in, GapReason::RecordDropped, syscall, ts, out);
        self.gap(sid, Direction::Out, lost_out, GapReason::RecordDropped, syscall, ts, out);
        let base = self.position(sid, dir);
        self.advance(sid, dir, call_bytes);
        base
    }

    /// A call whose payload came in its own record (`kind::DATA_CALL`, one buffer, one chunk):
    /// placed and written in one pass.
    pub(super) fn data_call(&mut self, rec: &SyscallRecord, payload: Bytes, out: &mut Vec<proto::Record>) {
        let Some((sys, dir)) = Sys::from_u32(rec.sys).and_then(|s| Some((s, s.direction()?))) else { return };
        // Datagram addresses come before the call's record.
        let call = self.take_pending(rec.hdr.tid, rec.hdr.ts_ns, out);
        let ts = self.wall_ns(rec.hdr.ts_ns);
        let sid = if sys.is_tls() {
            self.tls_stream(rec.hdr.tgid, rec.args[0] as i32, rec.args[3], sys, ts, out)
        } else {
            self.call_stream(rec.hdr.tgid, rec.args[0] as i32, rec.flags, ts, out)
        };
        if let Some((local, peer)) = sockaddr::tuple(&rec.sock) {
            self.fill_addresses(sid, local, peer, out);
        }
        let lost_before = (rec.lost_before_in, rec.lost_before_out);
        let base = self.reserve(sid, dir, rec.bytes, &call.addrs, lost_before, sys.name(), ts, out);
        let file_offset = self.file_offset(sid, sys, rec.args[3], rec.bytes);
        let captured = payload.len() as u64;
        self.totals.recorded_bytes += captured;
        self.first_bytes(sid, dir, base, &payload, out);
        let chunk = DataChunk {
            hdr: rec.hdr,
            fd: rec.args[0] as i32,
            call_bytes: rec.bytes,
            sys: rec.sys,
            ..Default::default()
        };
        out.push(data_record(sid, dir, ts, &chunk, base, file_offset, payload, addr_of(&call.addrs, 0)));
        if rec.bytes > captured {
            let mut budget = Budget::of(rec);
            self.hole(sid, dir, base + captured, rec.bytes - captured, &mut budget, true, sys, ts, out);
        }
    }

    /// Places a data call's held chunks at their stream positions (placed calls are already
    /// written) and turns what is missing into gaps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn data(
        &mut self,
        sid: u64,
        dir: Direction,
        sys: Sys,
        rec: &SyscallRecord,
        call: PendingCall,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if rec.bytes == 0 {
            return;
        }
        let mut budget = Budget::of(rec);
        let (sid, base, spans) = match call.placed {
            Some((placed_sid, _, base)) => (placed_sid, base, call.spans),
            None => {
                // The record placed earlier calls' loss already (`syscall`).
                let base = self.reserve(sid, dir, rec.bytes, &call.addrs, (0, 0), sys.name(), ts, out);
                let file_offset = self.file_offset(sid, sys, rec.args[3], rec.bytes);
                let mut spans = Vec::with_capacity(call.chunks.len());
                for (chunk, payload) in call.chunks {
                    spans.push((chunk.offset, payload.len() as u64));
                    self.first_bytes(sid, dir, base + chunk.offset, &payload, out);
                    self.totals.recorded_bytes += payload.len() as u64;
                    let addr = addr_of(&call.addrs, chunk.msg_index);
                    let at = file_offset.map(|f| f + chunk.offset);
                    out.push(data_record(sid, dir, ts, &chunk, base + chunk.offset, at, payload, addr));
                }
                (sid, base, spans)
            }
        };
        for (offset, len) in holes(&spans, rec.bytes) {
            let at_end = offset + len == rec.bytes;
            self.hole(sid, dir, base + offset, len, &mut budget, at_end, sys, ts, out);
        }
    }

    /// Splits a hole into gaps by reason: truncation sits at the end of a call, ring and fault
    /// losses anywhere.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hole(
        &mut self,
        sid: u64,
        dir: Direction,
        mut offset: u64,
        len: u64,
        budget: &mut Budget,
        at_end: bool,
        sys: Sys,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        let truncation = if budget.rate_limited { GapReason::RateLimit } else { GapReason::MaxPayload };
        let order: [(GapReason, &mut u64); 3] = if at_end {
            [
                (truncation, &mut budget.truncated),
                (GapReason::RingFull, &mut budget.ring),
                (GapReason::Fault, &mut budget.fault),
            ]
        } else {
            [
                (GapReason::RingFull, &mut budget.ring),
                (GapReason::Fault, &mut budget.fault),
                (truncation, &mut budget.truncated),
            ]
        };
        let mut left = len;
        let mut pieces = Vec::new();
        for (reason, avail) in order {
            let n = left.min(*avail);
            if n > 0 {
                *avail -= n;
                left -= n;
                pieces.push((reason, n));
            }
        }
        if left > 0 {
            pieces.push((GapReason::RingFull, left));
        }
        for (reason, n) in pieces {
            self.gap_at(sid, dir, offset, n, reason, sys.name(), ts, out);
            offset += n;
        }
    }

    /// A gap of `len` bytes at the stream's current position, which it then advances.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gap(
        &mut self,
        sid: u64,
        dir: Direction,
        len: u64,
        reason: GapReason,
        syscall: &'static str,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if len == 0 {
            return;
        }
        let offset = self.position(sid, dir);
        self.gap_at(sid, dir, offset, len, reason, syscall, ts, out);
        self.advance(sid, dir, len);
    }

    /// Writes a gap record at `offset` and counts it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gap_at(
        &mut self,
        sid: u64,
        dir: Direction,
        offset: u64,
        len: u64,
        reason: GapReason,
        syscall: &'static str,
        ts: u64,
        out: &mut Vec<proto::Record>,
    ) {
        if reason == GapReason::InKernelCopy {
            self.totals.in_kernel_bytes += len;
        } else {
            self.totals.lost_bytes += len;
        }
        out.push(record(R::Gap(proto::Gap {
            stream_id: sid,
            direction: dir_proto(dir) as i32,
            ts_ns: ts,
            offset,
            length: len,
            reason: reason as i32,
            syscall: proto_text::name(syscall),
        })));
    }

    /// The file offset a data call of `moved` bytes used on a file stream, moving the file's
    /// position as the kernel does: positional calls name their offset and leave the position
    /// alone; the others use it and advance it; an O_APPEND write goes to an end we do not know.
    pub(super) fn file_offset(&mut self, sid: u64, sys: Sys, position_arg: u64, moved: u64) -> Option<u64> {
        let stream = self.streams.get_mut(&sid).filter(|s| s.info.kind == proto::StreamKind::File as i32)?;
        let current_position = position_arg as i64 == -1 && matches!(sys, Sys::Preadv2 | Sys::Pwritev2);
        match sys {
            // A folder's position is the file system's cookie, not a byte offset: its entries
            // are no file content.
            Sys::Getdents64 => None,
            Sys::Pread64 | Sys::Pwrite64 | Sys::Preadv | Sys::Pwritev | Sys::Preadv2 | Sys::Pwritev2
                if !current_position =>
            {
                Some(position_arg)
            }
            _ if stream.append && sys.direction() == Some(Direction::Out) => {
                stream.file_pos = None;
                None
            }
            _ => {
                let at = stream.file_pos?;
                stream.file_pos = Some(at + moved);
                Some(at)
            }
        }
    }

    pub(super) fn position(&self, sid: u64, dir: Direction) -> u64 {
        self.streams.get(&sid).map(|s| if dir == Direction::In { s.pos_in } else { s.pos_out }).unwrap_or(0)
    }

    pub(super) fn advance(&mut self, sid: u64, dir: Direction, n: u64) {
        if let Some(s) = self.streams.get_mut(&sid) {
            match dir {
                Direction::In => s.pos_in += n,
                Direction::Out => s.pos_out += n,
            }
        }
    }
}

/// The (offset, length) ranges of `[0, total)` that the sorted `spans` do not cover.
fn holes(spans: &[(u64, u64)], total: u64) -> Vec<(u64, u64)> {
    let mut holes = Vec::new();
    let mut expected = 0u64;
    for &(offset, len) in spans {
        if offset > expected {
            holes.push((expected, offset - expected));
        }
        expected = offset + len;
    }
    if total > expected {
        holes.push((expected, total - expected));
    }
    holes
}
