//! Retrace agent library: capture (kernel probes and ring buffer), streams (rebuilding files
//! and connections from syscalls), store (the recording format), the recorder engine that ties
//! them together, and read-side views. The CLI in `main.rs`/`cli/` only parses and dispatches.

pub mod capture;
pub mod recorder;
pub mod store;
pub mod streams;
pub mod target;
pub mod view;

pub use recorder::{record, RecordConfig, RecordError, RecordSummary};
