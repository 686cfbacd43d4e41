//! Retrace agent library: capture (kernel probes and ring buffer), streams (rebuilding files
//! and connections from syscalls), the record model (`model`), redaction, store (the recording
//! format), the recorder engine that ties them together, replay, read-side views, and the node
//! agent. The CLI in `main.rs`/`cli/` only parses and dispatches, through the face below.

pub mod audit;
pub mod auxv;
pub mod capture;
pub mod clock;
pub mod cpus;
pub mod export;
pub mod filestate;
pub mod hex;
pub mod keys;
pub mod model;
pub mod node;
pub mod recorder;
pub mod redact;
pub mod replay;
pub mod retention;
pub mod shared;
pub mod stages;
pub mod store;
pub mod streams;
pub mod target;
pub mod vdso;
pub mod view;

// The library's face: the verbs `retrace` (cli/) and the node agent (node/) both call —
// record, read, replay, verify, export — and the types they take. The modules behind them are
// public for tests and tools, not for the CLI to reach into.
pub use capture::ProbeConfig;
pub use clock::now_wall_ns;
pub use export::export;
pub use recorder::{record, RecordConfig, RecordError, RecordSummary};
pub use redact::{CheckedRules, RulesFile};
pub use replay::{replay, ReplayConfig, ReplayReport};
pub use store::{verify::verify, Compression, Manifest, Recording, SegmentPolicy, StoreError};
pub use target::Target;

/// The hot path's maps (streams, fd tables, per-stream redaction state, by small integer keys):
/// foldhash, seeded per process, costs a fraction of SipHash per lookup.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the rest of `buf`.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// Retrace's folder under an XDG base directory: `$VAR/retrace`, else `~/DEFAULT/retrace`.
pub(crate) fn xdg_retrace_dir(var: &str, default_under_home: &str) -> Option<std::path::PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let base = set(var).or_else(|| set("HOME").map(|home| home.join(default_under_home)))?;
    Some(base.join("retrace"))
}
