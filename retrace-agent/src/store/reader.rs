//! Reads a recording back: the manifest, then every record of every segment in order. A torn
//! last frame (the recorder was killed mid-write) ends the read of that segment and is reported.

use std::path::{Path, PathBuf};

use bytes::Buf as _;
use prost::Message as _;

use super::{io_err, manifest::Manifest, proto, StoreError};

pub struct Recording {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// What reading the segments found besides records.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// A segment ended inside a frame (unfinished tail).
    pub torn_tail: Option<(String, u64)>,
}

impl Recording {
    pub fn open(dir: &Path) -> Result<Recording, StoreError> {
        Ok(Recording { dir: dir.to_path_buf(), manifest: Manifest::read(dir)? })
    }

    /// Calls `f` for every record, in recording order.
    pub fn for_each(&self, mut f: impl FnMut(proto::Record)) -> Result<ReadReport, StoreError> {
        let mut report = ReadReport::default();
        for name in &self.manifest.segments {
            let path = self.dir.join(name);
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                // The recorder may die between naming a segment and creating it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.manifest.complete => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            let mut buf = &data[..];
            while buf.has_remaining() {
                let offset = (data.len() - buf.len()) as u64;
                let mut probe = buf;
                let len = match prost::encoding::decode_varint(&mut probe) {
                    Ok(len) if (probe.len() as u64) >= len => len as usize,
                    _ if !self.manifest.complete => {
                        report.torn_tail = Some((name.clone(), offset));
                        break;
                    }
                    _ => return Err(StoreError::Corrupt { path, offset }),
                };
                let record = proto::Record::decode(&probe[..len])
                    .map_err(|_| StoreError::Corrupt { path: path.clone(), offset })?;
                buf = &probe[len..];
                f(record);
            }
        }
        Ok(report)
    }
}
