//! Export: a sanitised copy of a recording for one recipient. Decrypts, applies the rules again
//! at their strictest (every built-in detector, no allowlisted values), re-encrypts to the
//! recipient only (the exporter's own identity cannot read it) with its own expiry, and writes
//! a plain note of what was removed.

use crate::clock::now_wall_ns;
use retrace_common::syscall::Sys;
use std::{path::Path, time::Duration};

use crate::{
    keys::Recipient,
    redact::{CheckedRules, RedactStage, RedactStats, Redactor},
    store::{manifest::Manifest, Compression, Recording, SegmentPolicy, StoreError, Writer},
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rules(#[from] crate::redact::RulesError),
}

pub const NOTE: &str = "EXPORT-NOTE.txt";

pub fn export(
    source: &Recording,
    rules: &CheckedRules,
    to: Recipient,
    expires: Duration,
    out: &Path,
) -> Result<(Manifest, RedactStats), ExportError> {
    // Compiled by the caller from `RulesFile::strictest`.
    let strict = rules.file();
    let mut stage = RedactStage::new(Redactor::new(rules.compiled().clone()));
    let now = now_wall_ns();
    let src = &source.manifest;
    let manifest = Manifest {
        id: crate::recorder::recording_id(),
        segments: Vec::new(),
        complete: false,
        recipients: vec![to.to_string()],
        expires_ns: now.saturating_add(expires.as_nanos() as u64),
        redaction_rules: strict.rule_names(),
        capture_allowlist: strict.capture.is_some(),
        exported_from: Some(src.id.clone()),
        ..src.clone()
    };
    // The export is compressed if its source was.
    let policy = SegmentPolicy { compression: Compression::of(src), ..SegmentPolicy::default() };
    let mut writer = Writer::create(out, manifest, vec![to], policy)?;
    let mut failed = None;
    let mut records = Vec::new();
    // What getrandom returned can be key material: the copy keeps it only if its rules ask.
    let keep_random = strict.capture.as_ref().is_some_and(|c| c.random);
    let report = source.for_each(|mut record| {
        if failed.is_some() {
            return;
        }
        if let Some(crate::model::proto::record::Kind::Process(process)) = &mut record.kind {
            if !keep_random {
                process.at_random.clear();
            }
        }
        if let Some(crate::model::proto::record::Kind::Syscall(call)) = &mut record.kind {
            // The same field holds what sysinfo and the clock returned: kept.
            let random = call.name == Sys::Getrandom.name() || call.name == Sys::OpensslRand.name();
            if !keep_random && random {
                call.random.clear();
            }
        }
        stage.push(record, &mut records);
        for r in records.drain(..) {
            if let Err(e) = writer.append(r) {
                failed = Some(e);
                return;
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    stage.finish(&mut records);
    for r in records {
        writer.append(r)?;
    }
    let manifest =
        writer.finish(src.ended_ns.unwrap_or(now), src.exit_status, src.stopped_by_recorder, src.stopped_ns)?;
    let stats = stage.stats.clone();
    let mut note = format!(
        "Export of recording {} as {}, for {}\nexpires {}\nrules applied: {}\n",
        src.id,
        manifest.id,
        manifest.recipients.join(", "),
        crate::audit::rfc3339(manifest.expires_ns),
        manifest.redaction_rules.join(", ")
    );
    if report.torn_tail.is_some() {
        note.push_str("the source recording was unfinished: its unsealed tail is included as far as it verified\n");
    }
    note.push_str("redacted (pieces, bytes) per rule, on top of what was redacted at record time:\n");
    for (rule, (pieces, bytes)) in &stats.by_rule {
        note.push_str(&format!("  {rule}: {pieces} pieces, {bytes} bytes\n"));
    }
    if stats.not_captured_bytes > 0 {
        note.push_str(&format!(
            "left out by the capture allowlist: {} bytes of {} streams\n",
            stats.not_captured_bytes, stats.not_captured_streams
        ));
    }
    if !keep_random {
        note.push_str("left out: what getrandom and OpenSSL's RAND_bytes returned, and each exec's AT_RANDOM bytes (ask with `[capture] random = true` in the rules)\n");
    }
    crate::store::writer::write_durably(&out.join(NOTE), note.as_bytes())?;
    Ok((manifest, stats))
}
