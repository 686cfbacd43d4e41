//! A segment file written with O_DIRECT: frames are gathered in a 4 KiB-aligned buffer and
//! whole buffers go to the device without passing through the page cache. On the machines we
//! measured, buffered writes ran at a fifth of direct ones (page allocation and accounting, not
//! the disk, were the limit). The partial tail is written when the segment is sealed, after
//! O_DIRECT is switched off, so the file ends exactly where its last frame does. Filesystems
//! without O_DIRECT get the same file through ordinary writes.

use std::{
    alloc::{alloc, dealloc, Layout},
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::Path,
};

const BLOCK: usize = 4096;
const BUFFER: usize = 1 << 20;

pub struct SegmentFile {
    file: File,
    buf: *mut u8,
    len: usize,
    direct: bool,
}

// SAFETY: the buffer is owned by this value alone.
unsafe impl Send for SegmentFile {}

impl SegmentFile {
    pub fn create(path: &Path) -> io::Result<SegmentFile> {
        let open = |flags| OpenOptions::new().write(true).create(true).truncate(true).custom_flags(flags).open(path);
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0)?, false),
            Err(e) => return Err(e),
        };
        // SAFETY: non-zero size, power-of-two alignment.
        let buf = unsafe { alloc(Self::layout()) };
        if buf.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        Ok(SegmentFile { file, buf, len: 0, direct })
    }

    fn layout() -> Layout {
        Layout::from_size_align(BUFFER, BLOCK).expect("valid layout")
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (BUFFER - self.len).min(data.len());
            // SAFETY: len + n <= BUFFER; the regions do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(self.len), n) };
            self.len += n;
            data = &data[n..];
            if self.len == BUFFER {
                self.write_buffer()?;
            }
        }
        Ok(())
    }

    /// `n` writable bytes right after what is buffered, to be filled in place and then
    /// `commit`ted (the encryptor seals its chunks there: one copy fewer). Whole blocks are
    /// written out first when the room is short; the unaligned rest moves to the front.
    pub fn reserve(&mut self, n: usize) -> io::Result<&mut [u8]> {
        assert!(n <= BUFFER - BLOCK, "reserve at most BUFFER - BLOCK bytes");
        if BUFFER - self.len < n {
            self.write_out(if self.direct { self.len / BLOCK * BLOCK } else { self.len })?;
        }
        // SAFETY: len + n <= BUFFER; the bytes are only written through the slice before commit
        // (uninitialised bytes are never read: a u8 slice over them is filled first).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.buf.add(self.len), n) })
    }

    /// Counts `n` bytes filled through `reserve` as written; returns them.
    pub fn commit(&mut self, n: usize) -> &[u8] {
        assert!(self.len + n <= BUFFER);
        self.len += n;
        // SAFETY: the bytes were filled through `reserve`'s slice.
        unsafe { std::slice::from_raw_parts(self.buf.add(self.len - n), n) }
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        self.write_out(self.len)
    }

    /// Writes the first `n` buffered bytes to the file and moves the rest to the front.
    fn write_out(&mut self, n: usize) -> io::Result<()> {
        // SAFETY: the first `len` bytes of the buffer are initialised; `n <= len`.
        let bytes = unsafe { std::slice::from_raw_parts(self.buf, n.min(self.len)) };
        match (&self.file).write_all(bytes) {
            // A filesystem that accepted O_DIRECT at open but not for this write.
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.buffered()?;
                (&self.file).write_all(bytes)?;
            }
            other => other?,
        }
        let n = bytes.len();
        // SAFETY: both ranges lie in the buffer; `copy` allows overlap.
        unsafe { std::ptr::copy(self.buf.add(n), self.buf, self.len - n) };
        self.len -= n;
        Ok(())
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

    /// Writes what is buffered (the unaligned tail without O_DIRECT) and fsyncs the data.
    pub fn seal(&mut self) -> io::Result<()> {
        if self.len > 0 {
            if !self.len.is_multiple_of(BLOCK) {
                self.buffered()?;
            }
            self.write_buffer()?;
        }
        self.file.sync_data()
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        // SAFETY: allocated in `create` with the same layout.
        unsafe { dealloc(self.buf, Self::layout()) };
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
            let mut file = SegmentFile::create(&path).unwrap();
            for (i, len) in
                [0usize, 1, 4095, 4096, 4097, BUFFER - 3, BUFFER, 3 * BUFFER + 17, 12345].into_iter().enumerate()
            {
                let chunk: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
                file.write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
            }
            file.seal().unwrap();
            drop(file);
            let got = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(got.len(), want.len(), "size in {}", dir.display());
            assert!(got == want, "content in {}", dir.display());
        }
    }
}
