//! Appends records to the current segment and rotates segments by size and age.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use prost::Message as _;

use super::{io_err, manifest::Manifest, proto, StoreError};

/// When a segment is sealed and a new one started.
#[derive(Clone, Copy, Debug)]
pub struct SegmentPolicy {
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for SegmentPolicy {
    fn default() -> Self {
        SegmentPolicy { max_bytes: 64 << 20, max_age: Duration::from_secs(10) }
    }
}

pub struct Writer {
    dir: PathBuf,
    manifest: Manifest,
    policy: SegmentPolicy,
    current: Option<Segment>,
    frame: Vec<u8>,
}

struct Segment {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    opened: Instant,
}

impl Writer {
    /// Creates the recording directory (it must not hold a recording yet) and its manifest.
    pub fn create(dir: &Path, manifest: Manifest, policy: SegmentPolicy) -> Result<Writer, StoreError> {
        if dir.join(super::manifest::MANIFEST).exists() {
            return Err(StoreError::Exists { path: dir.to_path_buf() });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        manifest.write(dir)?;
        Ok(Writer { dir: dir.to_path_buf(), manifest, policy, current: None, frame: Vec::with_capacity(64 << 10) })
    }

    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    pub fn append(&mut self, record: &proto::Record) -> Result<(), StoreError> {
        self.rotate_if_due()?;
        if self.current.is_none() {
            self.open_segment()?;
        }
        let segment = self.current.as_mut().expect("segment opened above");
        self.frame.clear();
        record.encode_length_delimited(&mut self.frame).expect("Vec grows");
        segment.out.write_all(&self.frame).map_err(io_err(&segment.path))?;
        segment.bytes += self.frame.len() as u64;
        Ok(())
    }

    /// Seals the segment if it is old enough even when nothing is being written.
    pub fn tick(&mut self) -> Result<(), StoreError> {
        self.rotate_if_due()
    }

    fn rotate_if_due(&mut self) -> Result<(), StoreError> {
        let due = self
            .current
            .as_ref()
            .is_some_and(|s| s.bytes >= self.policy.max_bytes || s.opened.elapsed() >= self.policy.max_age);
        if due {
            self.seal()?;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), StoreError> {
        let name = format!("seg-{:06}.rtr", self.manifest.segments.len());
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(io_err(&path))?;
        self.manifest.segments.push(name);
        self.manifest.write(&self.dir)?;
        self.current =
            Some(Segment { path, out: BufWriter::with_capacity(1 << 20, file), bytes: 0, opened: Instant::now() });
        Ok(())
    }

    /// Flushes and fsyncs the current segment; the next record starts a new one.
    fn seal(&mut self) -> Result<(), StoreError> {
        if let Some(mut segment) = self.current.take() {
            segment.out.flush().map_err(io_err(&segment.path))?;
            segment.out.get_ref().sync_data().map_err(io_err(&segment.path))?;
        }
        Ok(())
    }

    /// Seals the last segment and marks the recording complete.
    pub fn finish(mut self, ended_ns: u64, exit_status: Option<i32>) -> Result<Manifest, StoreError> {
        self.seal()?;
        self.manifest.ended_ns = Some(ended_ns);
        self.manifest.exit_status = exit_status;
        self.manifest.complete = true;
        self.manifest.write(&self.dir)?;
        Ok(self.manifest)
    }
}

pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}
