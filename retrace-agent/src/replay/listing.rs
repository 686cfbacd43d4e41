//! Folder listings as the program read them (getdents64): replay answers them from the
//! recording, so a program sees the names, types and order it saw, not what the disk holds
//! today nor the overlay's order (which puts the files the replayer layered in first).
//!
//! A listing is served by position: the replayer keeps the folder's file position (the open
//! file description's, shared with forks and dups) at the index of the next entry, so
//! `rewinddir`, `seekdir` and `telldir` work as the kernel's, and a listing that starts again at
//! position 0 is the next one the program read of that folder when recorded.

use std::{collections::HashMap, os::fd::AsRawFd as _};

use crate::store::proto;

/// One folder entry as `struct linux_dirent64` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub kind: u8,
    pub name: Vec<u8>,
}

/// `struct linux_dirent64`: d_ino, d_off, d_reclen, d_type, then the name.
const HEADER: usize = 19;

/// The entries in getdents64's output; `None` where it does not parse (a cut record).
pub fn parse(mut bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let ino = u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?);
        let reclen = u16::from_ne_bytes(bytes.get(16..18)?.try_into().ok()?) as usize;
        let kind = *bytes.get(18)?;
        let record = bytes.get(..reclen).filter(|_| reclen > HEADER)?;
        let name = &record[HEADER..];
        let name = &name[..name.iter().position(|&b| b == 0)?];
        entries.push(Entry { ino, kind, name: name.to_vec() });
        bytes = &bytes[reclen..];
    }
    Some(entries)
}

/// Packs `entries[from..]` into getdents64 output of at most `room` bytes; `d_off` is the
/// index after each entry. Returns the bytes and how many entries they hold.
pub fn pack(entries: &[Entry], from: usize, room: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut taken = 0;
    for (i, entry) in entries.iter().enumerate().skip(from) {
        let reclen = (HEADER + entry.name.len() + 1).next_multiple_of(8);
        if out.len() + reclen > room {
            break;
        }
        out.extend_from_slice(&entry.ino.to_ne_bytes());
        out.extend_from_slice(&(i as i64 + 1).to_ne_bytes());
        out.extend_from_slice(&(reclen as u16).to_ne_bytes());
        out.push(entry.kind);
        out.extend_from_slice(&entry.name);
        out.resize(out.len() + reclen - HEADER - entry.name.len(), 0);
        taken += 1;
    }
    (out, taken)
}

/// A folder's stream, read by the program: its getdents64 output and the calls that found its
/// end, in recorded order.
#[derive(Debug, Default)]
pub struct Reads {
    /// (time, record order, bytes), or no bytes for a call that returned 0 (the end). Time
    /// first: redaction can write a call's data after later calls' records.
    calls: Vec<(u64, usize, Option<Vec<u8>>)>,
    /// Bytes were lost or redacted: the names cannot be trusted.
    spoiled: bool,
}

impl Reads {
    pub fn data(&mut self, order: usize, d: &proto::Data) {
        self.spoiled |= !d.redactions.is_empty();
        self.calls.push((d.ts_ns, order, Some(d.payload.to_vec())));
    }

    pub fn end(&mut self, ts_ns: u64, order: usize) {
        self.calls.push((ts_ns, order, None));
    }

    pub fn spoil(&mut self) {
        self.spoiled = true;
    }

    /// The listings this stream read, each up to the call that returned 0 (a program that
    /// stopped early has read a listing in part: served as far as it read, then ended).
    fn listings(mut self) -> Option<Vec<Vec<Entry>>> {
        if self.spoiled {
            return None;
        }
        self.calls.sort_by_key(|c| (c.0, c.1));
        let mut listings = Vec::new();
        let mut bytes = Vec::new();
        let mut open = false;
        for (_, _, call) in self.calls {
            match call {
                Some(b) => {
                    bytes.extend_from_slice(&b);
                    open = true;
                }
                None => {
                    listings.push(parse(&std::mem::take(&mut bytes))?);
                    open = false;
                }
            }
        }
        if open {
            listings.push(parse(&bytes)?);
        }
        Some(listings)
    }
}

/// Each folder's listings, by path, in the order the program read them.
#[derive(Debug, Default)]
pub struct Listings {
    by_path: HashMap<String, Vec<Vec<Entry>>>,
}

impl Listings {
    /// From each folder stream's reads, in the order the streams were opened. A folder with a
    /// stream that cannot be trusted is left to the disk.
    pub fn build(streams: Vec<(String, Reads)>) -> Listings {
        let mut by_path: HashMap<String, Option<Vec<Vec<Entry>>>> = HashMap::new();
        for (path, reads) in streams {
            // The program named a folder as it liked (`/lib/…`, through a symlink); the kernel
            // names its fd by the folder's own path (`/usr/lib/…`), the sandbox's symlinks
            // being the disk's.
            let path =
                std::fs::canonicalize(&path).ok().and_then(|p| p.into_os_string().into_string().ok()).unwrap_or(path);
            let slot = by_path.entry(path).or_insert_with(|| Some(Vec::new()));
            match (reads.listings(), slot.as_mut()) {
                (Some(listings), Some(all)) => all.extend(listings),
                _ => *slot = None,
            }
        }
        let by_path = by_path.into_iter().filter_map(|(p, l)| Some((p, l?))).filter(|(_, l)| !l.is_empty()).collect();
        Listings { by_path }
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// The notifier's side: answers getdents64 on folders with a recorded listing.
#[derive(Debug, Default)]
pub struct Folders {
    listings: Listings,
    /// Per folder: listings started so far (the one in use is the last started).
    started: HashMap<String, usize>,
}

impl Folders {
    pub fn new(listings: Listings) -> Folders {
        Folders { listings, ..Default::default() }
    }

    /// getdents64(fd, buf, count) of thread `tid`: `None` to let the kernel answer (no listing
    /// of that folder was recorded), else the call's return value or errno.
    pub fn answer(&mut self, tid: u32, args: &[u64; 6]) -> Option<Result<i64, i32>> {
        if self.listings.is_empty() {
            return None;
        }
        let (fd, buf, count) = (args[0] as i32, args[1], args[2] as usize);
        let path = std::fs::read_link(format!("/proc/{tid}/fd/{fd}")).ok()?;
        let path = path.to_str()?;
        let passes = self.listings.by_path.get(path)?;
        let file = super::notify::their_fd(tid, fd)?;
        // SAFETY: lseek on our own duplicate of the program's folder fd.
        let position = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) };
        if position < 0 {
            return None;
        }
        let started = self.started.entry(path.to_owned()).or_insert(0);
        if position == 0 {
            *started += 1;
        }
        let pass = &passes[started.saturating_sub(1).min(passes.len() - 1)];
        let from = position as usize;
        if from >= pass.len() {
            return Some(Ok(0));
        }
        let (bytes, taken) = pack(pass, from, count);

        if taken == 0 {
            return Some(Err(libc::EINVAL));
        }
        if let Err(errno) = super::clock::write_to(tid, buf, &bytes) {
            return Some(Err(errno));
        }
        // SAFETY: as above; the position is the next entry's index.
        unsafe { libc::lseek(file.as_raw_fd(), (from + taken) as i64, libc::SEEK_SET) };
        Some(Ok(bytes.len() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, name: &str) -> Entry {
        Entry { ino, kind: libc::DT_REG, name: name.as_bytes().to_vec() }
    }

    #[test]
    fn packed_entries_parse_back_and_stop_at_the_room_given() {
        let entries = vec![entry(2, "."), entry(1, ".."), entry(77, "a-much-longer-name.txt")];
        let (bytes, taken) = pack(&entries, 0, 4096);
        assert_eq!(taken, 3);
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(parse(&bytes).unwrap(), entries);
        let (bytes, taken) = pack(&entries, 1, 24 + 24);
        assert_eq!(taken, 1, "the long name needs 48 bytes of its own");
        assert_eq!(parse(&bytes).unwrap(), entries[1..2]);
        assert_eq!(pack(&entries, 0, 10).1, 0);
    }

    #[test]
    fn reads_split_into_listings_at_each_end_and_a_cut_record_spoils_them() {
        let (first, _) = pack(&[entry(5, "x"), entry(6, "y")], 0, 4096);
        let (second, _) = pack(&[entry(6, "y")], 0, 4096);
        let reads = Reads {
            calls: vec![(10, 4, Some(first.clone())), (20, 2, None), (30, 1, Some(second)), (40, 3, None)],
            spoiled: false,
        };
        let listings = reads.listings().unwrap();
        assert_eq!(listings, vec![vec![entry(5, "x"), entry(6, "y")], vec![entry(6, "y")]]);
        let cut = Reads { calls: vec![(10, 1, Some(first[..first.len() - 3].to_vec()))], spoiled: false };
        assert!(cut.listings().is_none());
    }
}
