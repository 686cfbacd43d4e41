//! Limits shared by both sides.

/// Largest payload slice one ring-buffer record carries. Bigger transfers are split into chunks.
pub const CHUNK_MAX: usize = 32 * 1024;

/// Longest path or socket address copied with a lifecycle record (PATH_MAX).
pub const AUX_MAX: usize = 4096;
/// Where the second path starts in a two-path call's aux area (rename, link).
pub const AUX_SECOND_PATH: usize = AUX_MAX / 2;

/// Longest socket address kept (sizeof(struct sockaddr_storage)).
pub const SOCKADDR_MAX: usize = 128;

/// Words of the kernel's `TRACED` bitmap: one bit for every process id up to Linux's
/// `PID_MAX_LIMIT` (4 Mi), whatever `kernel.pid_max` is now or becomes (512 KiB).
pub const TRACED_WORDS: u32 = (4 << 20) / 64;

/// Indices into the kernel's per-CPU `STATS` counters.
pub mod stat {
    /// Payload chunks not written because the ring buffer was full (records).
    pub const CHUNKS_DROPPED: u32 = 0;
    /// Payload bytes in those chunks.
    pub const CHUNK_BYTES_DROPPED: u32 = 1;
    /// Syscall records that could not be written; their bytes went to `PENDING_LOSS`.
    pub const RECORDS_DROPPED: u32 = 2;
    /// Process records (fork/exec/exit) that could not be written.
    pub const TASK_RECORDS_DROPPED: u32 = 3;
    /// Payload bytes that could not be read from user memory.
    pub const FAULT_BYTES: u32 = 4;
    /// Payload bytes beyond `--max-payload`.
    pub const TRUNCATED_BYTES: u32 = 5;
    /// Payload bytes written into the ring buffer.
    pub const CAPTURED_BYTES: u32 = 6;
    /// Times a traced process was paused because the ring buffer was half full
    /// (`--backpressure`).
    pub const PAUSES: u32 = 7;
    pub const COUNT: u32 = 8;
}
