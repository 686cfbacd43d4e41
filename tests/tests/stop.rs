//! How a recording stops: `--duration` on an attached process, SIGTERM while recording a
//! launched command, and the target exiting. Each leaves a complete recording.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use retrace_tests::{assert_no_panic, retrace_command, scratch, Rec};

#[test]
fn duration_stops_an_attached_recording() {
    let dir = scratch("duration");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let rec = dir.join("rec");
    let start = Instant::now();
    let out = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap(), "--pid", &sleeper.id().to_string(), "--duration", "1"])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_no_panic(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(20), "took {took:?}");
    assert!(sleeper.try_wait().unwrap().is_none(), "the attached process keeps running");
    sleeper.kill().unwrap();
    let rec = Rec::open(&rec);
    assert!(rec.recording.manifest.complete);
    assert_eq!(rec.recording.manifest.mode, "attach");
}

#[test]
fn sigterm_stops_a_launched_command_and_keeps_the_recording() {
    let dir = scratch("sigterm");
    let rec = dir.join("rec");
    let script = "echo started; exec sleep 60";
    let mut recorder = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap(), "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the command to run, then ask retrace to stop.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(recorder.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "started");
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc_kill(recorder.id() as i32, 15) };
    let out = recorder.wait_with_output().unwrap();
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(128 + 15), "the command's status (killed by SIGTERM)");
    let rec = Rec::open(&rec);
    assert!(rec.recording.manifest.complete);
    assert_eq!(rec.recording.manifest.exit_status, Some(143));
    let stdout = rec.find("the command's stdout", |s| s.fd == 1 && s.bytes_out > 0);
    assert_eq!(rec.bytes(stdout.id, retrace_agent::model::proto::Direction::Out), b"started\n");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Unmounts on drop, so a failing assertion does not leave the mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_recording_cleanly() {
    let dir = scratch("enospc");
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=4M", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(status.success(), "mounting a small tmpfs (the tests run as root)");
    let _mount = Mount(mnt.clone());
    let rec = mnt.join("rec");
    let script =
        "import os\nfd=os.open('/dev/null', os.O_WRONLY)\nfor i in range(3000): os.write(fd, b'y'*4096)\nprint('done')";
    let out = retrace_command()
        .args(["record", "-o", rec.to_str().unwrap(), "--", "python3", "-c", script])
        .output()
        .unwrap();
    assert_no_panic(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("no space left"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done", "the command ran to its end");
    // Every sealed segment verifies; what was written is readable up to the unsealed tail.
    let verify = retrace_command().args(["verify", rec.to_str().unwrap()]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let rec = Rec::open(&rec);
    assert!(!rec.recording.manifest.complete);
    let null = rec.streams.iter().filter(|s| s.path == "/dev/null").max_by_key(|s| s.bytes_out).expect("/dev/null");
    let bytes = rec.bytes(null.id, retrace_agent::model::proto::Direction::Out);
    assert!(!bytes.is_empty() && bytes.iter().all(|&b| b == b'y'), "{} bytes recorded", bytes.len());
}
