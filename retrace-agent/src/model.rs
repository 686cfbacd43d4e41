//! The model of a recording: the records (`proto`, generated from `proto/retrace.proto`:
//! streams, data, gaps, syscalls, counters) that the recorder builds, redaction rewrites, the
//! store seals and every reader reads. No concern of its own beyond the types: the store, the
//! redactor and the views all depend on it, and it on none of them.

pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/retrace.v1.rs"));
}

/// Syscall names, `bytes` fields that hold ASCII (see `retrace.proto`).
pub mod proto_text {
    use bytes::Bytes;

    /// A static name, without an allocation.
    pub fn name(name: &'static str) -> Bytes {
        Bytes::from_static(name.as_bytes())
    }

    pub fn text(bytes: &Bytes) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(bytes)
    }

    /// Serialises as a string (JSON output of `inspect`).
    pub fn serialize<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text(bytes))
    }
}
