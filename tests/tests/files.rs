//! File I/O: every byte read with read/readv/pread64 and written with write/writev, in sizes
//! from 1 byte to 1 MiB, is recorded exactly.

use retrace_agent::model::proto::Direction;
use retrace_tests::{assert_bytes_eq, pattern, python, record, retrace, scratch};

const COPY_SCRIPT: &str = r#"
import os, sys
src, dst = sys.argv[1], sys.argv[2]
fd = os.open(src, os.O_RDONLY)
out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
sizes = [1, 7, 4096, 65536, 1 << 20, 333, 32768, 32769, 100000, 2, 32767]
i = pos = 0
while True:
    n = sizes[i % len(sizes)]
    kind = i % 3
    if kind == 0:
        data = os.read(fd, n)
    elif kind == 1:
        a, b = bytearray(n // 2 + 1), bytearray(n - n // 2)
        got = os.readv(fd, [a, b])
        data = bytes((a + b)[:got])
    else:
        data = os.pread(fd, n, pos)
        os.lseek(fd, pos + len(data), os.SEEK_SET)
    if not data:
        break
    pos += len(data)
    if i % 2 == 0:
        assert os.write(out, data) == len(data)
    else:
        h = len(data) // 3
        assert os.writev(out, [data[:h], data[h:]]) == len(data)
    i += 1
os.close(out)
"#;

#[test]
fn file_reads_and_writes_are_recorded_byte_for_byte() {
    let dir = scratch("file-copy");
    let src = dir.join("input.bin");
    let dst = dir.join("output.bin");
    let content = pattern(3 * 1024 * 1024 + 12345, 1);
    std::fs::write(&src, &content).unwrap();

    let (rec, _) = record(&dir, &[], &[python(), "-c", COPY_SCRIPT, src.to_str().unwrap(), dst.to_str().unwrap()]);

    assert_eq!(std::fs::read(&dst).unwrap(), content, "the traced program itself copied the file");
    let input = rec.by_path(&src);
    assert_eq!(input.kind, "file");
    assert_eq!((input.lost_bytes_in, input.lost_bytes_out), (0, 0), "nothing lost on {input:?}");
    assert_bytes_eq(&rec.bytes(input.id, Direction::In), &content, "bytes read from input.bin");
    let output = rec.by_path(&dst);
    assert_eq!((output.lost_bytes_in, output.lost_bytes_out), (0, 0), "nothing lost on {output:?}");
    assert_bytes_eq(&rec.bytes(output.id, Direction::Out), &content, "bytes written to output.bin");

    // Each syscall shape was exercised, and every chunk sits at its true stream offset.
    let name = |d: &retrace_agent::model::proto::Data| String::from_utf8_lossy(&d.syscall).into_owned();
    let mut calls: Vec<String> = rec.data(input.id).into_iter().map(name).collect();
    calls.extend(rec.data(output.id).into_iter().map(name));
    for name in ["read", "readv", "pread64", "write", "writev"] {
        assert!(calls.iter().any(|c| c == name), "no {name} recorded; saw {calls:?}");
    }
    for d in rec.data(input.id) {
        let at = d.offset as usize;
        assert_bytes_eq(&d.payload, &content[at..at + d.payload.len()], &format!("{} chunk at offset {at}", name(d)));
    }
    // A readv/writev of two iovecs that fits one chunk travels as one record (its two pieces
    // joined in the agent); larger calls are chunked.
    let mut by_call: std::collections::BTreeMap<(u64, String), Vec<usize>> = Default::default();
    for d in rec.data(input.id).into_iter().chain(rec.data(output.id)) {
        by_call.entry((d.ts_ns, name(d))).or_default().push(d.payload.len());
    }
    let vectored: Vec<_> = by_call.iter().filter(|((_, n), _)| n == "readv" || n == "writev").collect();
    assert!(vectored.iter().any(|(_, lens)| lens.len() == 1 && lens[0] > 1), "no vectored call recorded whole");
    for ((_, n), lens) in vectored {
        if lens.iter().sum::<usize>() <= 32 * 1024 {
            assert_eq!(lens.len(), 1, "a {n} of {} bytes split into {lens:?}", lens.iter().sum::<usize>());
        }
    }
    // A 1 MiB read is one call split into ring-buffer chunks: all of it is there.
    assert!(rec.data(input.id).iter().map(|d| d.payload.len()).max().unwrap() <= 32 * 1024);
}

#[test]
fn compressed_recordings_hold_the_same_bytes_in_less_disk() {
    let dir = scratch("file-copy-lz4");
    let src = dir.join("orders.jsonl");
    let dst = dir.join("copy.jsonl");
    // Text that compresses, then random bytes that do not (their blocks are stored raw).
    let mut content: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("{{\"order\":{i},\"sku\":\"item-{}\",\"qty\":{}}}\n", i % 501, i % 7).into_bytes())
        .collect();
    let text = content.len();
    content.extend(pattern(1 << 20, 2));
    std::fs::write(&src, &content).unwrap();

    let (rec, _) =
        record(&dir, &["--compress"], &[python(), "-c", COPY_SCRIPT, src.to_str().unwrap(), dst.to_str().unwrap()]);

    let input = rec.by_path(&src);
    assert_eq!((input.lost_bytes_in, input.lost_bytes_out), (0, 0), "nothing lost on {input:?}");
    assert_bytes_eq(&rec.bytes(input.id, Direction::In), &content, "bytes read from orders.jsonl");
    let output = rec.by_path(&dst);
    assert_bytes_eq(&rec.bytes(output.id, Direction::Out), &content, "bytes written to copy.jsonl");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rec/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["compression"], "lz4");
    let on_disk: u64 = manifest["segments"].as_array().unwrap().iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    // Read and written once each: the text shrinks, the random megabyte cannot.
    let payload = 2 * content.len() as u64;
    let ceiling = 2 * ((text / 2) as u64 + (1 << 20) + (1 << 16));
    assert!(on_disk < ceiling, "{on_disk} bytes on disk for {payload} of payload (ceiling {ceiling})");
    let verify = retrace(&["verify", dir.join("rec").to_str().unwrap()]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn sealing_on_parallel_threads_keeps_every_byte_and_redacts() {
    let dir = scratch("file-copy-parallel");
    let src = dir.join("data.bin");
    let dst = dir.join("copy.bin");
    // Megabytes across several segments and file buffers, a secret on either side of
    // chunk and buffer boundaries.
    let secret = "AKIACANARY7AWSKEY234";
    let mut content = pattern(6 << 20, 5);
    let mut spans = Vec::new();
    for at in [1_000, 65_530, (1 << 20) - 7, 3 << 20, (5 << 20) + 12_345] {
        let line = format!("\naws_access_key_id = {secret}\n");
        content[at..at + line.len()].copy_from_slice(line.as_bytes());
        let start = at + line.find(secret).unwrap();
        spans.push(start..start + secret.len());
    }
    std::fs::write(&src, &content).unwrap();

    // The redaction thread and the sealing pool are used as on a machine with cores to spare;
    // the stage accounting says so (the other tests of this file print it too, harmlessly).
    std::env::set_var("RETRACE_PIPELINE_STATS", "1");
    let (rec, out) = record(
        &dir,
        &["--seal-threads", "3", "--segment-size", "2M"],
        &[python(), "-c", COPY_SCRIPT, src.to_str().unwrap(), dst.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stages = stderr.lines().find(|l| l.contains("pipeline stages")).expect("the stage line is printed");
    let cpu_of = |stage: &str| -> f64 {
        let at = stages.find(&format!(" {stage} ")).unwrap_or_else(|| panic!("{stage} in {stages}"));
        stages[at + stage.len() + 2..].split('/').next().unwrap().parse().unwrap()
    };
    for stage in ["consumer", "redaction", "writer", "seal pool"] {
        assert!(cpu_of(stage) > 0.0, "{stage} did work: {stages}");
    }
    for (stream, dir_) in [(rec.by_path(&src), Direction::In), (rec.by_path(&dst), Direction::Out)] {
        assert_eq!((stream.lost_bytes_in, stream.lost_bytes_out), (0, 0), "nothing lost on {stream:?}");
        let got = rec.bytes(stream.id, dir_);
        assert_eq!(got.len(), content.len());
        let mut unredacted = got.clone();
        for span in &spans {
            assert_ne!(&got[span.clone()], secret.as_bytes(), "the secret at {span:?} is redacted");
            unredacted[span.clone()].copy_from_slice(&content[span.clone()]);
        }
        assert_bytes_eq(&unredacted, &content, "every other byte as written");
    }
    let segments = std::fs::read_dir(dir.join("rec"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert!(segments >= 4, "{segments} segments");
    let verify = retrace(&["verify", dir.join("rec").to_str().unwrap()]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// A folder listed with getdents64 is recorded as the kernel gave it: every entry's name, inode
/// number and type, in the kernel's order (what `ls -f` prints), in its folder's stream.
#[test]
fn folder_listings_are_recorded_entry_for_entry() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = scratch("file-listing");
    let folder = dir.join("listed");
    std::fs::create_dir_all(folder.join("sub")).unwrap();
    // Enough entries that the listing takes several getdents64 calls.
    for i in 0..2500 {
        std::fs::write(folder.join(format!("entry-{i:04}-{}", "x".repeat(i % 40))), "").unwrap();
    }
    let (rec, out) = record(&dir, &[], &["ls", "-f", folder.to_str().unwrap()]);
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let stream = rec.by_path(&folder);
    assert_eq!((stream.lost_bytes_in, stream.lost_bytes_out), (0, 0), "nothing lost on {stream:?}");
    let calls = rec.data(stream.id);
    assert!(
        calls.iter().map(|d| d.ts_ns).collect::<std::collections::BTreeSet<_>>().len() >= 2
            && calls.iter().all(|d| d.syscall == b"getdents64".to_vec()),
        "{} calls",
        calls.len()
    );
    // A call larger than a ring chunk comes in several pieces: joined, they are whole records.
    let bytes: Vec<u8> = calls.iter().flat_map(|d| d.payload.iter().copied()).collect();
    let entries = retrace_agent::replay::listing::parse(&bytes).expect("whole linux_dirent64 records");
    let names: Vec<String> = entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect();
    assert_eq!(names, printed, "the recorded order is the one ls -f printed");
    for entry in &entries {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        if name == ".." {
            continue;
        }
        let meta = std::fs::symlink_metadata(folder.join(&name)).unwrap();
        assert_eq!(entry.ino, meta.ino(), "{name}'s inode");
        let kind = if meta.is_dir() { libc::DT_DIR } else { libc::DT_REG };
        assert_eq!(entry.kind, kind, "{name}'s type");
    }
}
