//! The recording reader on hostile bytes: segment frames, a segment's age envelope, the
//! manifest and the audit log's lines must fail cleanly, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_agent::{keys::Identity, store};

fuzz_target!(|data: &[u8]| {
    let _ = store::reader::parse_frames(data);
    let _ = serde_json::from_slice::<store::Manifest>(data);
    let _ = serde_json::from_slice::<retrace_agent::audit::Entry>(data);
    thread_local! {
        static IDENTITY: Identity = Identity::generate();
    }
    IDENTITY.with(|id| {
        let _ = store::crypt::decrypt(std::path::Path::new("fuzz"), data, id, &[]);
    });
});
