//! Segment files as standard age files (X25519 recipients, no plugins): any age tool opens
//! one. The ciphertext is hashed (BLAKE3) as it is written, for the manifest and the next
//! segment's header. BLAKE3 rather than SHA-256: SHA-256 was the largest single cost of the
//! writer thread at capture speed (19% of the agent's samples, more than the cipher).

use std::{
    io::{self, Read as _, Write},
    path::Path,
};

use super::{segment_file::SegmentFile, StoreError};
use crate::keys::{Identity, Recipient};

/// A segment file that hashes what it is given.
pub struct HashingFile {
    pub file: SegmentFile,
    hasher: blake3::Hasher,
    pub bytes: u64,
}

impl HashingFile {
    pub fn new(file: SegmentFile) -> HashingFile {
        HashingFile { file, hasher: blake3::Hasher::new(), bytes: 0 }
    }

    pub fn digest(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub type EncryptingWriter = age::stream::StreamWriter<HashingFile>;

pub fn encrypt_to(recipients: &[Recipient], out: HashingFile) -> io::Result<EncryptingWriter> {
    let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| io::Error::other(e.to_string()))?;
    encryptor.wrap_output(out)
}

pub fn hash_hex(bytes: &[u8]) -> String {
    hex(blake3::hash(bytes).as_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What decrypting a segment gave.
pub struct Plaintext {
    pub bytes: Vec<u8>,
    /// The file ended before age's final chunk (an unsealed tail): `bytes` holds every chunk
    /// that authenticated.
    pub truncated: bool,
}

/// Decrypts one segment file's bytes. A file cut short yields the chunks before the cut.
pub fn decrypt(
    path: &Path,
    ciphertext: &[u8],
    identity: &Identity,
    recipients: &[String],
) -> Result<Plaintext, StoreError> {
    let fail = |reason: String| StoreError::Decrypt {
        path: path.to_path_buf(),
        reason,
        recipients: if recipients.is_empty() { "unknown recipients".into() } else { recipients.join(", ") },
    };
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(|e| fail(e.to_string()))?;
    let mut reader =
        decryptor.decrypt(std::iter::once(identity as &dyn age::Identity)).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::with_capacity(ciphertext.len());
    match reader.read_to_end(&mut bytes) {
        Ok(_) => Ok(Plaintext { bytes, truncated: false }),
        // read_to_end keeps what it read before the error: the authenticated chunks.
        Err(_) => Ok(Plaintext { bytes, truncated: true }),
    }
}
