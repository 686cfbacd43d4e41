//! Drains the ring buffer with tokio's `AsyncFd` and hands decoded events on in batches.

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::stages;

use super::{
    decode::{decode, Event},
    tls::{Candidate, Watch},
    CaptureError, Pauses,
};

/// Largest batch handed on at once, in records and in payload bytes: with the channel's few
/// slots, this bounds the agent's memory beyond the ring buffer. 1 MiB batches kept the peak
/// heap of an overflowing nginx recording at ~35 MiB against ~50 MiB with 2 MiB, and moved
/// as much per second.
const BATCH: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;
/// A batch of small records ends sooner: each later stage copies or scans every payload, and
/// with the batches in flight within a core's L2 they are still there when it does (1 KiB
/// `pread` records: ~20% less agent CPU than with 1 MiB batches on a 1 MiB-L2 core). Large
/// records are scanned and encrypted where they lie, and fewer hand-offs serve them better.
const SMALL_BATCH_BYTES: usize = 256 << 10;
/// Records up to this size on average make a batch of small records.
const SMALL_RECORD: usize = 8 << 10;

/// Whether a batch of `records` records holding `bytes` bytes is full.
fn batch_full(records: usize, bytes: usize) -> bool {
    records >= BATCH || bytes >= BATCH_BYTES || (bytes >= SMALL_BATCH_BYTES && bytes < records * SMALL_RECORD)
}
/// How often the ring is drained when the kernel does not wake us.
const DRAIN_INTERVAL_MS: u64 = 20;

/// Reads records until `stop` fires, then drains what is left and returns. Malformed records
/// are counted, not fatal. With backpressure, every drain that empties the ring resumes the
/// processes the kernel paused; `pauses` is handed back for the last resume after detaching.
pub async fn consume(
    ring: RingBuf<MapData>,
    out: mpsc::Sender<Vec<Event>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut pauses: Option<Pauses>,
    held: Option<Watch>,
) -> Result<(ConsumeStats, Option<Pauses>), CaptureError> {
    // SAFETY: the ring buffer owns its fd, which stays open until the AsyncFd is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| CaptureError::Io { source: e.into() })?;
    let mut stats = ConsumeStats::default();
    // The kernel wakes us only when a batch has piled up; drain on a timer too, so small
    // traffic is written promptly (the writer also seals segments by age on these ticks).
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(DRAIN_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => {
                if !drain(fd.get_mut(), &out, &mut stats, held.as_ref()).await && out.send(Vec::new()).await.is_err() {
                    return Ok((stats, pauses));
                }
                false
            }
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(|source| CaptureError::Io { source })?;
                drain(guard.get_inner_mut(), &out, &mut stats, held.as_ref()).await;
                guard.clear_ready();
                false
            }
            _ = stop.changed() => true,
        };
        // The ring was just emptied (a drain blocked on a full pipeline has not returned, so a
        // paused process stays paused until the agent catches up).
        if let Some(pauses) = pauses.as_mut() {
            pauses.resume_stopped();
        }
        if stopping || *stop.borrow() {
            drain(fd.get_mut(), &out, &mut stats, held.as_ref()).await;
            return Ok((stats, pauses));
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ConsumeStats {
    pub records: u64,
    pub malformed: u64,
}

/// Hands on everything in the ring; returns whether anything was there.
/// A process the kernel held at exec goes to `held` at once, not behind the pipeline.
async fn drain(
    ring: &mut RingBuf<MapData>,
    out: &mpsc::Sender<Vec<Event>>,
    stats: &mut ConsumeStats,
    held: Option<&Watch>,
) -> bool {
    let mut any = false;
    loop {
        let mut batch = Vec::with_capacity(256);
        let mut bytes = 0;
        // No await in the loop: the task stays on this thread while its CPU is read.
        let cpu = stages::thread_cpu_ns();
        while !batch_full(batch.len(), bytes) {
            let Some(item) = ring.next() else { break };
            stats.records += 1;
            bytes += item.len();
            match decode(&item) {
                Ok(mut event) => {
                    if let (Event::TaskExec { rec, at_random, .. }, Some(watch)) = (&mut event, held) {
                        // Before the image runs if it is held (and they stay put after).
                        *at_random = crate::auxv::read(rec.hdr.tgid);
                        if rec.flags & retrace_common::TASK_HELD != 0 {
                            watch.push(Candidate::Held { tgid: rec.hdr.tgid, program: rec.program });
                        }
                    }
                    batch.push(event)
                }
                Err(e) => {
                    stats.malformed += 1;
                    log::warn!("{e}");
                }
            }
        }
        stages::CONSUMER.add_cpu_since(cpu);
        if batch.is_empty() {
            return any;
        }
        any = true;
        let full = batch_full(batch.len(), bytes);
        let waiting = std::time::Instant::now();
        let sent = out.send(batch).await;
        stages::CONSUMER.add_waited(waiting.elapsed().as_nanos() as u64);
        if sent.is_err() || !full {
            return any;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_records_make_smaller_batches() {
        // 1 KiB records: the batch ends at 256 KiB.
        assert!(!batch_full(255, 255 << 10));
        assert!(batch_full(256, 256 << 10));
        // 32 KiB records (a large write as the ring carries it): at 1 MiB.
        assert!(!batch_full(8, 256 << 10));
        assert!(!batch_full(31, 31 << 15));
        assert!(batch_full(32, 1 << 20));
        // Tiny records: at the record count.
        assert!(!batch_full(4095, 4095 * 64));
        assert!(batch_full(4096, 4096 * 64));
    }
}
