//! Shared body of every data syscall probe.

use aya_ebpf::{helpers::bpf_probe_read_user, programs::RawTracePointContext};
use retrace_common::{config::CHUNK_MAX, syscall::Sys};

use crate::{
    call::Call,
    copy::{emit_address_of, Copy, Source},
    emit::{self, Aux, Pieces},
    maps::payload_kept,
};

/// Where a datagram address sits in the call's arguments.
pub enum Addr {
    None,
    /// sendto: `(addr, addrlen)` by value.
    ByValue(usize, usize),
    /// recvfrom: `(addr, *addrlen)` filled in by the kernel.
    ByPointer(usize, usize),
}

/// Records a data call: its payload (if it moved any) and its record, together when they fit one
/// ring record.
#[inline(always)]
pub fn on_data(
    ctx: &RawTracePointContext,
    sys: Sys,
    source: Source,
    buf_arg: usize,
    len_arg: usize,
    addr: Addr,
) -> u32 {
    data_call(&Call::exit(ctx), sys, source, buf_arg, len_arg, addr, false)
}

const MSG_PEEK: u64 = 2;

/// A receive with its flags in argument `flags_arg`: one that only peeked (MSG_PEEK) left the
/// bytes in the socket, for the receive that takes them to record; it is recorded as a call
/// without payload (wget peeks at every response's headers).
#[inline(always)]
pub fn on_receive(
    ctx: &RawTracePointContext,
    sys: Sys,
    source: Source,
    buf_arg: usize,
    len_arg: usize,
    addr: Addr,
    flags_arg: usize,
) -> u32 {
    let call = Call::exit(ctx);
    let peeked = call.args[flags_arg] & MSG_PEEK != 0;
    data_call(&call, sys, source, buf_arg, len_arg, addr, peeked)
}

/// A data call's record, with its payload unless it moved nothing or only peeked.
#[inline(always)]
fn data_call(call: &Call, sys: Sys, source: Source, buf_arg: usize, len_arg: usize, addr: Addr, peeked: bool) -> u32 {
    let fd = call.args[0] as i32;
    super::tls::note_socket(fd);
    let data = if call.ret > 0 && !peeked {
        match addr {
            Addr::None => {}
            Addr::ByValue(a, l) => {
                if call.args[a] != 0 {
                    emit_address_of(call, call.args[a], call.args[l]);
                }
            }
            Addr::ByPointer(a, l) => {
                let len = emit::user_i32(call.args[l]);
                if call.args[a] != 0 && len > 0 {
                    emit_address_of(call, call.args[a], len as u64);
                }
            }
        }
        let moved = call.ret as u64;
        let (kept, rate_limited) =
            if source == Source::Mmsghdr { (moved, false) } else { payload_kept(call.tgid, call.ts_ns, moved) };
        if kept <= CHUNK_MAX as u64 {
            // The common case: the payload rides in the call's own record.
            let pieces = match source {
                Source::Buffer => Some(Pieces::One(call.args[buf_arg])),
                Source::Iovec => iovec_pieces(call.args[buf_arg], call.args[len_arg], kept),
                Source::Msghdr => msghdr_pieces(call, call.args[buf_arg], kept),
                Source::Mmsghdr => None,
            };
            if let Some(pieces) = pieces {
                emit::data_call(call, sys, fd, pieces, moved, kept, rate_limited);
                return 0;
            }
        }
        Copy::run(call, sys as u32, fd, source, call.args[buf_arg], call.args[len_arg], moved, kept, rate_limited)
    } else {
        None
    };
    emit::syscall(call, sys, Aux::None, [0, 0], data, Some(fd));
    0
}

/// Where the first `kept` bytes of a vectored call are, when an iovec array of one or two
/// entries holds them (readv/writev of a header and a body, the common shape); longer arrays,
/// and arrays that no longer add up, go to the copier.
#[inline(always)]
fn iovec_pieces(iov: u64, count: u64, kept: u64) -> Option<Pieces> {
    if count == 0 || count > 2 {
        return None;
    }
    let first: [u64; 2] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    let first_len = if first[1] < kept { first[1] } else { kept };
    if first_len == kept {
        return Some(Pieces::One(first[0]));
    }
    if count == 1 {
        return None;
    }
    let second: [u64; 2] = unsafe { bpf_probe_read_user((iov + 16) as *const [u64; 2]) }.ok()?;
    if second[1] < kept - first_len {
        return None;
    }
    if first_len == 0 {
        return Some(Pieces::One(second[0]));
    }
    Some(Pieces::Two(first[0], first_len, second[0]))
}

/// sendmsg/recvmsg: the pieces of the message's iovecs (see `iovec_pieces`), and its address
/// record (msg_name, as the copier writes it) when they are taken this way.
#[inline(always)]
fn msghdr_pieces(call: &Call, msg: u64, kept: u64) -> Option<Pieces> {
    // msg_name, msg_namelen (and padding), msg_iov, msg_iovlen.
    let head: [u64; 4] = unsafe { bpf_probe_read_user(msg as *const [u64; 4]) }.ok()?;
    let pieces = iovec_pieces(head[2], head[3], kept)?;
    let name_len = head[1] as u32;
    if head[0] != 0 && name_len != 0 {
        emit_address_of(call, head[0], name_len as u64);
    }
    Some(pieces)
}

/// Records a call that names or changes fds but moves no payload.
#[inline(always)]
pub fn on_meta(
    ctx: &RawTracePointContext,
    sys: Sys,
    aux: impl FnOnce(&Call) -> Aux,
    extra: impl FnOnce(&Call) -> [i64; 2],
    loss_fd: bool,
) -> u32 {
    let call = Call::exit(ctx);
    let aux = aux(&call);
    let extra = extra(&call);
    let fd = if loss_fd { Some(call.args[0] as i32) } else { None };
    emit::syscall(&call, sys, aux, extra, None, fd);
    0
}

pub fn no_aux(_: &Call) -> Aux {
    Aux::None
}

pub fn no_extra(_: &Call) -> [i64; 2] {
    [0, 0]
}
