//! A segment file written with O_DIRECT by threads of its own: frames are gathered in 4 KiB-
//! aligned 1 MiB buffers and whole buffers go to the device without passing through the page
//! cache. On the machines we measured, buffered writes ran at a fifth of direct ones (page
//! allocation and accounting, not the disk, were the limit). A direct write blocks until the
//! device has the data (~0.8 ms per MiB here), so a disk thread does it while the writer
//! thread encrypts the next buffer, and a hash thread hashes (BLAKE3) each buffer once it is
//! written, while the disk thread writes the next: done one after the other by one thread, the
//! write and the hash (~1.1 ms per MiB) held capture under 1 GB/s. The partial tail is written
//! when the segment is sealed, after O_DIRECT is switched off, so the file ends exactly where
//! its last frame does. Filesystems without O_DIRECT get the same file through ordinary writes.
//! With a seal pool, a buffer's two halves are written at once (`pwrite` at their offsets): a
//! crash in between can leave the first half unwritten, which a reader of the unsealed
//! segment meets as a chunk that does not authenticate, the end of what it recovers, as with
//! a buffer that never reached the file.

use crate::stages;

use std::{
    alloc::{alloc_zeroed, dealloc, Layout},
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, OpenOptionsExt as _},
    },
    path::Path,
    ptr::NonNull,
    sync::{
        mpsc::{channel, Receiver, Sender},
        Arc,
    },
    thread::JoinHandle,
};

/// The threads that seal chunks and hash buffers in parallel, when the agent has cores to
/// spare (see `SegmentPolicy::seal_threads`).
pub type SealPool = Arc<rayon::ThreadPool>;

const BLOCK: usize = 4096;
const BUFFER: usize = 1 << 20;
/// One buffer being filled, one being written, one being hashed, one queued.
const BUFFERS: usize = 4;

/// A sealed segment file: its length and the BLAKE3 hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub bytes: u64,
    pub digest: [u8; 32],
}

pub struct SegmentFile {
    buf: Buffer,
    len: usize,
    /// Whether whole blocks are handed over (the file was opened with O_DIRECT).
    direct: bool,
    jobs: Sender<Job>,
    /// Buffers back from the hash thread, with the error of their write if it failed.
    free: Receiver<(Buffer, Option<io::Error>)>,
    /// Returns the file's length.
    disk: JoinHandle<io::Result<u64>>,
    /// Returns the hash of what the disk thread wrote (its part of the seal is done when the
    /// disk thread's is).
    hash: JoinHandle<Option<[u8; 32]>>,
    pool: Option<SealPool>,
}

/// A buffer on its way: to the disk thread, then (with the write's error) to the hash thread.
enum Job {
    Write(Buffer, usize, Option<io::Error>),
    /// The last bytes (any length); then fsync, and the threads end.
    Seal(Buffer, usize),
}

impl SegmentFile {
    /// Creates the file; with a pool, each buffer is hashed by its threads (BLAKE3's tree
    /// hashes a buffer's parts in parallel).
    pub fn create(path: &Path, pool: Option<SealPool>) -> io::Result<SegmentFile> {
        let open = |flags| OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(path);
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        let buf = Buffer::new()?;
        let (jobs, jobs_rx) = channel();
        let (written, written_rx) = channel();
        let (free_tx, free) = channel();
        for _ in 1..BUFFERS {
            free_tx.send((Buffer::new()?, None)).expect("receiver held here");
        }
        let (hash_pool, disk_pool) = (pool.clone(), pool.clone());
        let hash = std::thread::Builder::new().name("retrace-hash".into()).spawn(move || {
            let _cpu = stages::ThreadCpu::new(&stages::HASH);
            hash(written_rx, free_tx, hash_pool)
        })?;
        let disk = std::thread::Builder::new().name("retrace-disk".into()).spawn(move || {
            let _cpu = stages::ThreadCpu::new(&stages::DISK);
            Disk { file, direct, bytes: 0, pool: disk_pool }.run(jobs_rx, written)
        })?;
        Ok(SegmentFile { buf, len: 0, direct, jobs, free, disk, hash, pool })
    }

    pub fn pool(&self) -> Option<&SealPool> {
        self.pool.as_ref()
    }

    /// Bytes buffered: where the next `reserve` begins.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Whether `n` bytes can be reserved without handing the buffer to the disk first.
    pub fn has_room(&self, n: usize) -> bool {
        BUFFER - self.len >= n
    }

    /// The buffered bytes from `from` on, for sealing in place before they are handed over.
    pub fn buffered_from(&mut self, from: usize) -> &mut [u8] {
        let len = self.len;
        self.buf.slice_mut(from, len - from)
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (BUFFER - self.len).min(data.len());
            self.buf.slice_mut(self.len, n).copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == BUFFER {
                self.hand_over(BUFFER)?;
            }
        }
        Ok(())
    }

    /// `n` writable bytes right after what is buffered, to be filled in place and then
    /// `commit`ted (the encryptor seals its chunks there: one copy fewer). Whole blocks are
    /// handed to the disk thread first when the room is short; the unaligned rest moves to the
    /// front of the next buffer.
    pub fn reserve(&mut self, n: usize) -> io::Result<&mut [u8]> {
        assert!(n <= BUFFER - BLOCK, "reserve at most BUFFER - BLOCK bytes");
        if BUFFER - self.len < n {
            self.hand_over(if self.direct { self.len / BLOCK * BLOCK } else { self.len })?;
        }
        Ok(self.buf.slice_mut(self.len, n))
    }

    /// Counts `n` bytes filled through `reserve` as written.
    pub fn commit(&mut self, n: usize) {
        assert!(self.len + n <= BUFFER);
        self.len += n;
    }

    /// Queues the first `n` buffered bytes for the disk and goes on in a free buffer, the rest
    /// moved to its front. Fails with the error of an earlier write, if one failed.
    fn hand_over(&mut self, n: usize) -> io::Result<()> {
        let (mut next, failed) = stages::WRITER.waiting(|| self.free.recv()).map_err(|_| disk_gone())?;
        if let Some(e) = failed {
            return Err(e);
        }
        let rest = self.len - n;
        next.slice_mut(0, rest).copy_from_slice(self.buf.slice(n, rest));
        let full = std::mem::replace(&mut self.buf, next);
        self.jobs.send(Job::Write(full, n, None)).map_err(|_| disk_gone())?;
        self.len = rest;
        Ok(())
    }

    /// Writes what is buffered, fsyncs the data and returns the file's length and hash.
    pub fn seal(self) -> io::Result<Sealed> {
        let SegmentFile { buf, len, jobs, disk, hash, .. } = self;
        jobs.send(Job::Seal(buf, len)).map_err(|_| disk_gone())?;
        let (bytes, digest) = stages::WRITER.waiting(|| (disk.join(), hash.join()));
        let bytes = bytes.map_err(|_| disk_gone())??;
        let digest = digest.ok().flatten().ok_or_else(disk_gone)?;
        Ok(Sealed { bytes, digest })
    }
}

/// io::Error is not Clone: the same OS error (ENOSPC stays ENOSPC) or kind and message.
fn same_error(e: &io::Error) -> io::Error {
    e.raw_os_error().map_or_else(|| io::Error::new(e.kind(), e.to_string()), io::Error::from_raw_os_error)
}

fn disk_gone() -> io::Error {
    io::Error::other("the segment's disk thread stopped")
}

/// The disk thread's side: writes buffers in order and passes them on to be hashed.
struct Disk {
    file: File,
    direct: bool,
    bytes: u64,
    /// With a pool, a buffer's two halves are written at once, one by a pool thread: the
    /// kernel's copy into a tmpfs page cache (~0.3 CPU s/GB) is one thread's work otherwise,
    /// and held one recording near 3 GB/s; two writers of a tmpfs file measured 1.4–1.6x one.
    pool: Option<SealPool>,
}

/// Buffers from this size are written in two halves when there is a pool.
const SPLIT_MIN: usize = 256 << 10;

impl Disk {
    fn run(mut self, jobs: Receiver<Job>, written: Sender<Job>) -> io::Result<u64> {
        // The first failed write's error; after it buffers only go on (the writer stops at
        // the error, which comes back with the next buffer or from the seal).
        let mut failed: Option<io::Error> = None;
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Write(buf, n, _) => {
                    let mut error = None;
                    if failed.is_none() {
                        if let Err(e) = self.write(buf.slice(0, n)) {
                            error = Some(same_error(&e));
                            failed = Some(e);
                        }
                    }
                    if written.send(Job::Write(buf, n, error)).is_err() {
                        break;
                    }
                }
                Job::Seal(buf, n) => {
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    if !n.is_multiple_of(BLOCK) {
                        self.buffered()?;
                    }
                    self.write(buf.slice(0, n))?;
                    // An fsync failure is not retried: the data it covered may be gone.
                    self.file.sync_data()?;
                    written.send(Job::Seal(buf, n)).map_err(|_| disk_gone())?;
                    return Ok(self.bytes);
                }
            }
        }
        Err(disk_gone())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.write_at(bytes, self.bytes) {
            // A filesystem that accepted O_DIRECT at open but not for this write.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.buffered()?;
                self.write_at(bytes, self.bytes)?;
            }
            other => other?,
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` at `offset`: at once in two block-aligned halves with a pool.
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let Some(pool) = self.pool.as_ref().filter(|_| bytes.len() >= SPLIT_MIN) else {
            return self.file.write_all_at(bytes, offset);
        };
        let (first, second) = bytes.split_at(bytes.len() / 2 / BLOCK * BLOCK);
        let mut second_written = Ok(());
        // The first half on this thread, the second on a pool thread meanwhile.
        let first_written = pool.in_place_scope(|scope| {
            scope.spawn(|_| second_written = self.file.write_all_at(second, offset + first.len() as u64));
            self.file.write_all_at(first, offset)
        });
        first_written.and(second_written)
    }

    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            let fd = self.file.as_raw_fd();
            // SAFETY: plain fcntl on our own fd.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(io::Error::last_os_error());
            }
            self.direct = false;
        }
        Ok(())
    }
}

/// The hash thread's side: hashes what was written, in order, and hands the buffers back.
/// Returns the hash once the sealing write is in (None if the disk thread stopped first).
fn hash(written: Receiver<Job>, free: Sender<(Buffer, Option<io::Error>)>, pool: Option<SealPool>) -> Option<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let update = |hasher: &mut blake3::Hasher, bytes: &[u8]| match &pool {
        Some(pool) => {
            pool.install(|| hasher.update_rayon(bytes));
        }
        None => {
            hasher.update(bytes);
        }
    };
    while let Ok(job) = written.recv() {
        match job {
            Job::Write(buf, n, error) => {
                if error.is_none() {
                    update(&mut hasher, buf.slice(0, n));
                }
                if free.send((buf, error)).is_err() {
                    return None;
                }
            }
            Job::Seal(buf, n) => {
                update(&mut hasher, buf.slice(0, n));
                return Some(*hasher.finalize().as_bytes());
            }
        }
    }
    None
}

/// A 4 KiB-aligned buffer of `BUFFER` bytes (O_DIRECT needs aligned memory).
struct Buffer(NonNull<u8>);

// SAFETY: the buffer is owned by this value alone.
unsafe impl Send for Buffer {}

impl Buffer {
    fn layout() -> Layout {
        Layout::from_size_align(BUFFER, BLOCK).expect("valid layout")
    }

    fn new() -> io::Result<Buffer> {
        // SAFETY: non-zero size, power-of-two alignment. Zeroed once, so every byte is
        // initialised and slices over any part of it are sound.
        let ptr = unsafe { alloc_zeroed(Self::layout()) };
        NonNull::new(ptr).map(Buffer).ok_or_else(|| io::ErrorKind::OutOfMemory.into())
    }

    fn slice(&self, at: usize, n: usize) -> &[u8] {
        assert!(at + n <= BUFFER);
        // SAFETY: in bounds (checked above), initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(at), n) }
    }

    fn slice_mut(&mut self, at: usize, n: usize) -> &mut [u8] {
        assert!(at + n <= BUFFER);
        // SAFETY: as in `slice`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr().add(at), n) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_holds_exactly_what_was_written() {
        // On the disk (O_DIRECT) and on tmpfs (whichever way it goes there).
        for dir in [std::env::temp_dir(), "/dev/shm".into()] {
            let path = dir.join(format!("retrace-segment-test-{}", std::process::id()));
            let mut want = Vec::new();
            let mut file = SegmentFile::create(&path, None).unwrap();
            for (i, len) in
                [0usize, 1, 4095, 4096, 4097, BUFFER - 3, BUFFER, 3 * BUFFER + 17, 12345].into_iter().enumerate()
            {
                let chunk: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
                file.write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
                // Filled in place too, across buffer ends (an unaligned rest moves along).
                let room = file.reserve(70_000).unwrap();
                let fill: Vec<u8> = (0..len % 70_000).map(|j| (i * 13 + j) as u8).collect();
                room[..fill.len()].copy_from_slice(&fill);
                file.commit(fill.len());
                want.extend_from_slice(&fill);
            }
            let sealed = file.seal().unwrap();
            let got = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(got.len(), want.len(), "size in {}", dir.display());
            assert!(got == want, "content in {}", dir.display());
            assert_eq!(sealed, Sealed { bytes: want.len() as u64, digest: *blake3::hash(&want).as_bytes() });
        }
    }

    #[test]
    fn with_a_pool_buffers_are_written_in_halves_and_the_file_is_the_same() {
        let pool: SealPool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
        for dir in [std::env::temp_dir(), "/dev/shm".into()] {
            let path = dir.join(format!("retrace-segment-pool-test-{}", std::process::id()));
            let mut file = SegmentFile::create(&path, Some(pool.clone())).unwrap();
            let want: Vec<u8> = (0..5 * BUFFER + 4097).map(|j| (j * 31 + j / 4096) as u8).collect();
            for piece in want.chunks(300_001) {
                file.write_all(piece).unwrap();
            }
            let sealed = file.seal().unwrap();
            let got = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert!(got == want, "content in {}", dir.display());
            assert_eq!(sealed, Sealed { bytes: want.len() as u64, digest: *blake3::hash(&want).as_bytes() });
        }
    }

    #[test]
    fn a_failed_write_comes_back_as_itself() {
        // /dev/full: every write fails with ENOSPC, in the disk thread. The error must reach the
        // writer unchanged (ENOSPC is told apart as "disk full"), from a later write or the seal.
        let pool: SealPool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap());
        for (len, pool) in
            [10, BUFFER + 1, 5 * BUFFER].into_iter().flat_map(|len| [(len, None), (len, Some(pool.clone()))])
        {
            let mut file = SegmentFile::create(Path::new("/dev/full"), pool).unwrap();
            let error = match file.write_all(&vec![7u8; len]) {
                Err(e) => e,
                Ok(()) => file.seal().unwrap_err(),
            };
            assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{len} bytes: {error}");
        }
    }
}
