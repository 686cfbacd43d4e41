//! The streaming redactor on arbitrary bytes cut into arbitrary reads: records keep their
//! order and lengths, marks stay inside their payloads, and a short stream comes out exactly
//! as a one-shot redaction of it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use retrace_agent::{
    redact::{redact_all, stream::StreamRedactor, Redactor, RulesFile},
    store::proto,
};

thread_local! {
    static REDACTOR: Redactor = Redactor::new(RulesFile::default().compile().expect("built-in rules compile"));
}

fuzz_target!(|input: &[u8]| {
    let Some((&cuts, data)) = input.split_first() else { return };
    REDACTOR.with(|redactor| {
        let mut stream = StreamRedactor::default();
        let mut out = Vec::new();
        let step = usize::from(cuts % 64) + 1;
        let mut offset = 0u64;
        for chunk in data.chunks(step) {
            let record = proto::Data { offset, payload: Bytes::copy_from_slice(chunk), ..Default::default() };
            offset += chunk.len() as u64;
            stream.push(redactor, record, &mut out);
        }
        stream.flush(redactor, &mut out);
        let mut joined = Vec::new();
        for d in &out {
            assert_eq!(d.offset, joined.len() as u64, "records in order, none lost");
            for r in &d.redactions {
                assert!((r.offset + r.length) as usize <= d.payload.len(), "mark inside its payload");
            }
            joined.extend_from_slice(&d.payload);
        }
        assert_eq!(joined.len(), data.len(), "lengths kept");
        if data.len() < 256 {
            assert_eq!(joined, redact_all(redactor, data).0, "short streams: same as one shot");
        }
    });
});
