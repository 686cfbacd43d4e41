//! Capture: load and attach the probes, consume the ring buffer, decode records.

pub mod consumer;
pub mod decode;
pub mod loader;
pub mod pauses;
pub mod tls;

pub use loader::{KernelStats, ProbeConfig, Probes};
pub use pauses::Pauses;

/// Errors of the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this kernel exposes no BTF (/sys/kernel/btf/vmlinux); Retrace needs a kernel built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf {
        #[source]
        source: aya::BtfError,
    },
    #[error("failed to load the eBPF programs (are you root or do you have CAP_BPF and CAP_PERFMON?)")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("failed to attach eBPF program `{program}`")]
    Attach {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the eBPF object has a program for syscall `{name}`, which has no known number on this architecture")]
    UnknownSyscall { name: String },
    #[error("the eBPF object has no program `{name}`")]
    MissingProgram { name: String },
    #[error("eBPF map operation failed")]
    Map {
        #[source]
        source: aya::maps::MapError,
    },
    #[error("failed to start the process that resumes paused processes (`retrace resume-guard`); record without --backpressure, or check that the retrace binary can be run again")]
    Guard {
        #[source]
        source: std::io::Error,
    },
    #[error("ring buffer I/O failed")]
    Io {
        #[source]
        source: std::io::Error,
    },
}

impl CaptureError {
    pub(crate) fn map(source: aya::maps::MapError) -> Self {
        CaptureError::Map { source }
    }
}
