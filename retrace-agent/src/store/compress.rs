//! Optional lz4 compression of a segment's plaintext (`retrace record --compress`), applied
//! before encryption. The frame stream is cut into blocks of at most `BLOCK` bytes; each block
//! is `raw length (u32 LE) | stored length (u32 LE) | stored bytes`, where the stored bytes are
//! an lz4 block, or the raw bytes themselves when lz4 would not make them smaller (equal
//! lengths), so incompressible payload costs 8 bytes per block and no decompression.

use std::io::{self, Write};

use lz4_flex::block::{compress_into_with_table, decompress_into, get_maximum_output_size, CompressTable};

/// Raw bytes per block: under 64 KiB, so lz4 uses its small (16-bit offset) hash table.
pub const BLOCK: usize = 63 << 10;
const HEADER: usize = 8;

/// Compresses what is written to it into blocks written to `inner`.
pub struct Compressor<W: Write> {
    inner: W,
    raw: Vec<u8>,
    out: Vec<u8>,
    table: CompressTable,
}

impl<W: Write> Compressor<W> {
    pub fn new(inner: W) -> Compressor<W> {
        Compressor {
            inner,
            raw: Vec::with_capacity(BLOCK),
            out: vec![0; HEADER + get_maximum_output_size(BLOCK)],
            table: CompressTable::small(),
        }
    }

    /// Writes the last (short) block and hands back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit()?;
        Ok(self.inner)
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        let raw_len = self.raw.len();
        let packed = compress_into_with_table(&self.raw, &mut self.out[HEADER..], &mut self.table)
            .map_err(|e| io::Error::other(format!("lz4 block could not be compressed: {e}")))?;
        let stored = packed.min(raw_len);
        self.out[..4].copy_from_slice(&(raw_len as u32).to_le_bytes());
        self.out[4..HEADER].copy_from_slice(&(stored as u32).to_le_bytes());
        if stored < raw_len {
            self.inner.write_all(&self.out[..HEADER + stored])?;
        } else {
            self.inner.write_all(&self.out[..HEADER])?;
            self.inner.write_all(&self.raw)?;
        }
        self.raw.clear();
        Ok(())
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let take = (BLOCK - self.raw.len()).min(buf.len());
            self.raw.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.raw.len() == BLOCK {
                self.emit()?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The frame stream back from `data`'s blocks, and whether it stopped at a block cut short
/// (an unsealed tail). A block that cannot be right is an error at its offset in `data`.
pub fn decompress(data: &[u8]) -> Result<(Vec<u8>, bool), u64> {
    let mut plain = Vec::with_capacity(data.len().saturating_mul(3));
    let mut at = 0;
    while at < data.len() {
        let Some(header) = data.get(at..at + HEADER) else { return Ok((plain, true)) };
        let raw_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let stored = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        if raw_len == 0 || raw_len > BLOCK || stored > raw_len {
            return Err(at as u64);
        }
        let Some(body) = data.get(at + HEADER..at + HEADER + stored) else { return Ok((plain, true)) };
        let start = plain.len();
        if stored == raw_len {
            plain.extend_from_slice(body);
        } else {
            plain.resize(start + raw_len, 0);
            match decompress_into(body, &mut plain[start..]) {
                Ok(n) if n == raw_len => {}
                _ => return Err(at as u64),
            }
        }
        at += HEADER + stored;
    }
    Ok((plain, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(data: &[u8], writes: usize) -> Vec<u8> {
        let mut c = Compressor::new(Vec::new());
        for piece in data.chunks(writes.max(1)) {
            c.write_all(piece).unwrap();
        }
        c.finish().unwrap()
    }

    #[test]
    fn blocks_round_trip_whatever_the_write_sizes() {
        // Text that compresses, then bytes that do not (stored raw), across block ends.
        let mut data = Vec::new();
        for i in 0..20_000 {
            data.extend_from_slice(format!("{{\"id\":{i},\"name\":\"user{}\"}}\n", i % 97).as_bytes());
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        for writes in [1, 700, BLOCK - 1, BLOCK + 3, 1 << 20] {
            let packed = compress(&data, writes);
            assert_eq!(decompress(&packed), Ok((data.clone(), false)), "writes of {writes}");
        }
        let packed = compress(&data, 4096);
        assert!(packed.len() < data.len() * 2 / 3, "text compressed: {} of {}", packed.len(), data.len());
    }

    #[test]
    fn a_cut_block_is_a_torn_tail_and_a_bad_block_an_error() {
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let packed = compress(&data, 1 << 16);
        let first_block = HEADER + u32::from_le_bytes(packed[4..8].try_into().unwrap()) as usize;
        let (plain, torn) = decompress(&packed[..first_block + 3]).unwrap();
        assert!(torn);
        assert_eq!(plain, data[..BLOCK]);
        let mut bad = packed.clone();
        bad[first_block] = 0xff; // raw length beyond a block
        bad[first_block + 1] = 0xff;
        assert_eq!(decompress(&bad), Err(first_block as u64));
        let mut bad = packed;
        bad[HEADER + 2] ^= 0x80; // inside the first lz4 block
        assert!(decompress(&bad).is_err() || decompress(&bad).unwrap().0 != data);
    }
}
