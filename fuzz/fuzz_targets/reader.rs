//! The recording reader on hostile bytes: segment frames, compressed blocks, a segment's age
//! envelope, the manifest and the audit log's lines must fail cleanly, never panic; and any
//! bytes compressed come back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrace_agent::{keys::Identity, store};

fuzz_target!(|data: &[u8]| {
    let _ = store::reader::parse_frames(data);
    let _ = store::compress::decompress(data);
    let mut compressor = store::compress::Compressor::new(Vec::new());
    std::io::Write::write_all(&mut compressor, data).expect("writes to a Vec");
    let packed = compressor.finish().expect("writes to a Vec");
    assert_eq!(store::compress::decompress(&packed), Ok((data.to_vec(), false)));
    let _ = serde_json::from_slice::<store::Manifest>(data);
    let _ = serde_json::from_slice::<retrace_agent::audit::Entry>(data);
    thread_local! {
        static IDENTITY: Identity = Identity::generate();
    }
    IDENTITY.with(|id| {
        let _ = store::crypt::decrypt(std::path::Path::new("fuzz"), data, id, &[]);
    });
});
