//! Recordings in S3-compatible object storage, against a real S3 API on loopback (moto's
//! server, installed by `cargo xtask setup`): uploaded segments first and the manifest last,
//! idempotent on retry, and read back by every reader from `s3://bucket/prefix`.

use std::process::Output;

use retrace_tests::{assert_bytes_eq, pattern, record, scratch, S3};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_recording_goes_up_segments_first_and_every_reader_opens_it_there() {
    let dir = scratch("storage-s3");
    let s3 = S3::start();
    assert_eq!(s3.curl("PUT", "retrace-recordings"), "200");
    // Enough to seal several segments.
    let file = dir.join("data.bin");
    std::fs::write(&file, pattern(3 << 20, 7)).unwrap();
    let (rec, out) = record(&dir, &["--segment-size", "1M"], &["cat", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let local = dir.join("rec");
    let segments = std::fs::read_dir(&local)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert!(segments >= 2, "{segments} segments");
    let url = "s3://retrace-recordings/node-a/rec-1";
    let up = s3.retrace(&["upload", local.to_str().unwrap(), url]);
    assert!(up.status.success(), "{}", stderr(&up));
    assert!(stderr(&up).contains(&format!("{segments} segments uploaded, 0 already there")), "{}", stderr(&up));
    // A retry finds every segment there: nothing is put twice.
    let again = s3.retrace(&["upload", local.to_str().unwrap(), url]);
    assert!(stderr(&again).contains(&format!("0 segments uploaded, {segments} already there")), "{}", stderr(&again));

    // Readers open it where it is: verify, and the file's bytes exactly.
    let verify = s3.retrace(&["verify", url]);
    assert!(
        verify.status.success() && String::from_utf8_lossy(&verify.stdout).contains("complete"),
        "{}",
        stderr(&verify)
    );
    let stream = rec.by_path(&file).id.to_string();
    let cat = s3.retrace(&["cat", url, &stream, "--in"]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_bytes_eq(&cat.stdout, &std::fs::read(&file).unwrap(), "cat from s3:// against the file on disk");

    // Without its manifest (an upload that did not finish) there is no recording to read.
    assert_eq!(s3.curl("DELETE", "retrace-recordings/node-a/rec-1/manifest.json"), "204");
    let gone = s3.retrace(&["streams", url]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("no manifest.json"), "{}", stderr(&gone));
    // Bad input: one line each.
    let no_bucket = s3.retrace(&["upload", local.to_str().unwrap(), "s3://no-such-bucket/x"]);
    assert_eq!(no_bucket.status.code(), Some(1));
    assert_eq!(stderr(&no_bucket).lines().count(), 1, "{}", stderr(&no_bucket));
    assert!(stderr(&no_bucket).contains("NoSuchBucket"), "{}", stderr(&no_bucket));
    let not_s3 = s3.retrace(&["upload", local.to_str().unwrap(), "/tmp/elsewhere"]);
    assert!(stderr(&not_s3).contains("is no s3://BUCKET/PREFIX address"), "{}", stderr(&not_s3));
}
