//! The replay sandbox's filesystem and identity: every way a program can change files works
//! inside and leaves the host as it was; the program is root of a user namespace that is
//! nobody on the host; what it wrote can be kept for a look; its exit status is compared with
//! the recorded one.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use retrace_tests::{go_build, record, retrace_command, scratch};

const DIVERGED: i32 = 86;

fn replay(rec: &Path, extra: &[&str], command: &[&str], cwd: &Path) -> (Output, serde_json::Value) {
    retrace_tests::replay_in(cwd, rec, extra, command)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Tries every kind of change in each folder and prints `folder op result` lines (result `ok`
/// or the errno).
const MUTATOR: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
tag = sys.argv[1]
def attempt(folder, op, f):
    try:
        f()
        print(folder, op, "ok")
    except OSError as e:
        print(folder, op, e.errno)
def check(condition):
    if not condition:
        raise OSError(0, "unexpected")
def lc(result):
    if result != 0:
        raise OSError(ctypes.get_errno(), "libc")
for folder in sys.argv[2:]:
    p = lambda name: os.path.join(folder, name + "-" + tag)
    victim = p("victim")
    attempt(folder, "read", lambda: check(open(victim).read() == "host\n"))
    attempt(folder, "chmod", lambda: os.chmod(victim, 0o777))
    attempt(folder, "truncate", lambda: os.truncate(victim, 0))
    attempt(folder, "write", lambda: open(victim, "a").write("changed"))
    attempt(folder, "hardlink", lambda: os.link(victim, p("hard")))
    attempt(folder, "rename", lambda: os.rename(victim, p("renamed")))
    attempt(folder, "rm", lambda: os.remove(p("renamed")))
    attempt(folder, "create", lambda: open(p("new"), "w").write("x"))
    attempt(folder, "mkdir", lambda: os.mkdir(p("dir")))
    attempt(folder, "symlink", lambda: os.symlink("/etc/passwd", p("link")))
    attempt(folder, "mknod", lambda: os.mknod(p("node"), 0o600 | 0o060000, os.makedev(254, 0)))
    attempt(folder, "mount", lambda: lc(libc.mount(b"none", p("dir").encode(), b"tmpfs", 0, None)))
    attempt(folder, "listed", lambda: check(p("new").rsplit("/", 1)[1] in os.listdir(folder)))
for path, value in (("/proc/sys/vm/drop_caches", "3"), ("/sys/kernel/uevent_helper", "/x")):
    attempt(path, "write", lambda: open(path, "w").write(value))
print("uid_map", open("/proc/self/uid_map").read().split())
print("owner", os.stat("/etc/passwd").st_uid, os.stat("/etc").st_uid)
"#;

/// Everything that names a change, for each folder, as the host has it.
fn host_state(folders: &[PathBuf], tag: &str) -> Vec<String> {
    let mut state = Vec::new();
    for folder in folders {
        for name in ["victim", "hard", "renamed", "new", "dir", "link", "node"] {
            let path = folder.join(format!("{name}-{tag}"));
            match std::fs::symlink_metadata(&path) {
                Ok(m) => state.push(format!(
                    "{} mode {:o} nlink {} len {} content {:?}",
                    path.display(),
                    m.permissions().mode(),
                    m.nlink(),
                    m.len(),
                    std::fs::read(&path).ok()
                )),
                Err(_) => state.push(format!("{} absent", path.display())),
            }
        }
    }
    state
}

#[test]
fn every_change_works_inside_and_the_host_stays_as_it_was() {
    let dir = scratch("sandbox-host");
    let (_, _) = record(&dir, &[], &["python3", "-c", "print('recorded')"]);
    let tag = format!("retrace-{}", std::process::id());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let folders: Vec<PathBuf> =
        ["/", "/etc", "/dev", "/dev/shm", "/tmp", "/run", "/var/tmp", &home].iter().map(PathBuf::from).collect();
    for folder in &folders {
        let victim = folder.join(format!("victim-{tag}"));
        std::fs::write(&victim, "host\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let before = host_state(&folders, &tag);
    let script = dir.join("mutator.py");
    std::fs::write(&script, MUTATOR).unwrap();
    let mut command = vec!["python3", script.to_str().unwrap(), &tag];
    command.extend(folders.iter().map(|f| f.to_str().unwrap()));
    // Another program than the recorded one: --lenient, its own exit status.
    let (out, report) = replay(&dir.join("rec"), &["--lenient"], &command, &dir);
    let after = host_state(&folders, &tag);
    for folder in &folders {
        let _ = std::fs::remove_file(folder.join(format!("victim-{tag}")));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(before, after, "the host changed:\n{stdout}");
    assert_eq!(out.status.code(), Some(0), "{}\n{stdout}", stderr(&out));

    let result = |folder: &str, op: &str| -> String {
        let prefix = format!("{folder} {op} ");
        stdout.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("missing").to_owned()
    };
    // The host's files can be changed in every folder the host shows (the changes stay in the
    // sandbox's layer).
    for folder in ["/", "/etc", "/tmp", "/run", "/var/tmp", home.as_str()] {
        for op in
            ["read", "chmod", "truncate", "write", "hardlink", "rename", "rm", "create", "mkdir", "symlink", "listed"]
        {
            assert_eq!(result(folder, op), "ok", "{op} in {folder}:\n{stdout}");
        }
    }
    // /dev and /dev/shm are the sandbox's own: the host's files are not there, new ones can be.
    for folder in ["/dev", "/dev/shm"] {
        assert_eq!(result(folder, "read"), "2", "the host's {folder} is not seen:\n{stdout}");
        for op in ["create", "mkdir", "symlink", "listed"] {
            assert_eq!(result(folder, op), "ok", "{op} in {folder}:\n{stdout}");
        }
    }
    // Devices and mounts are refused everywhere; the kernel's and the devices' knobs too.
    for folder in &folders {
        let folder = folder.to_str().unwrap();
        assert_eq!(result(folder, "mknod"), "1", "mknod in {folder}:\n{stdout}");
        assert_eq!(result(folder, "mount"), "1", "mount in {folder}:\n{stdout}");
    }
    assert_eq!(result("/proc/sys/vm/drop_caches", "write"), "13", "{stdout}");
    assert_ne!(result("/sys/kernel/uevent_helper", "write"), "ok", "{stdout}");
    // Root inside is an unprivileged id range outside; the host's root files are root's inside.
    assert!(stdout.contains("uid_map ['0', '1073741824', '65536']"), "{stdout}");
    assert!(stdout.contains("owner 0 0"), "{stdout}");
    // The report lists what the program changed, by the paths it used.
    let written: Vec<&str> = report["scratch_writes"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let etc_new = format!("/etc/new-{tag}");
    assert!(written.contains(&etc_new.as_str()), "{report}");
    let removed: Vec<&str> = report["scratch_removed"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    let etc_victim = format!("/etc/victim-{tag}");
    assert!(removed.contains(&etc_victim.as_str()), "{report}");
}

#[test]
fn a_shell_script_with_mktemp_mv_rm_and_ls_replays_and_can_be_kept() {
    let dir = scratch("sandbox-shell");
    let script = dir.join("work.sh");
    std::fs::write(
        &script,
        "set -e\nt=$(mktemp -d)\necho one > \"$t/a\"\necho two > \"$t/b\"\nmv \"$t/a\" \"$t/c\"\nrm \"$t/b\"\nls \"$t\"\ncat \"$t/c\"\nmkdir -p out\ncp \"$t/c\" out/result\nrm -r \"$t\"\necho done\n",
    )
    .unwrap();
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "work.sh"]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "c\none\ndone\n");
    std::fs::remove_dir_all(dir.join("out")).unwrap();

    let kept = dir.join("kept");
    let (out, report) = replay(&dir.join("rec"), &["--keep-scratch", kept.to_str().unwrap()], &["sh", "work.sh"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout, "the same output");
    assert_eq!(report["result"], "passed", "{report}");
    assert!(!dir.join("out").exists(), "the replayed write stayed in the sandbox");
    // --keep-scratch: what the program left, at its path under the folder.
    let result = kept.join(dir.join("out/result").strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(&result).unwrap(), b"one\n", "kept file {}", result.display());
}

#[test]
fn a_relative_config_is_the_recorded_one_after_it_changed_on_disk() {
    let dir = scratch("sandbox-relative");
    std::fs::write(dir.join("settings.conf"), "mode = recorded\n").unwrap();
    let recorded = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec", "--", "cat", "settings.conf"])
        .output()
        .unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    std::fs::write(dir.join("settings.conf"), "mode = changed today\n").unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &["cat", "settings.conf"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mode = recorded\n", "{report}");
    let served = dir.join("settings.conf");
    assert!(report["files_served"].as_array().unwrap().iter().any(|f| f == served.to_str().unwrap()), "{report}");
}

/// A file read with a secret in it is recorded with a placeholder. Replayed where the host's
/// file is the recorded one but for that span, the program reads the host's bytes (a source
/// line that only looks like a secret still runs); where the file changed, the placeholder.
#[test]
fn a_redacted_file_gets_the_hosts_bytes_back_only_while_it_is_the_recorded_one() {
    let dir = scratch("sandbox-redacted-file");
    let secret = "CANARY-hunter2";
    std::fs::write(dir.join("app.toml"), format!("host = \"db\"\npassword = \"{secret}\"\n")).unwrap();
    std::fs::write(dir.join("helper.py"), "token = 'x' * 7\nTOKEN_LEN = len(token)\n").unwrap();
    let main = format!("import helper\nprint(helper.TOKEN_LEN, open('app.toml').read().count('{secret}'))\n");
    std::fs::write(dir.join("main.py"), main).unwrap();
    let command = [retrace_tests::python(), "-B", "main.py"];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "7 1\n");
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    for file in ["app.toml", "helper.py"] {
        let read = rec.bytes(rec.by_path(&dir.join(file)).id, retrace_agent::model::proto::Direction::In);
        let text = String::from_utf8_lossy(&read).into_owned();
        assert!(!text.contains(secret) && !text.contains("'x' * 7"), "{file} is recorded redacted: {text}");
    }
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "7 1\n");
    let filled: Vec<&str> =
        report["files_filled_from_host"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    for file in ["app.toml", "helper.py"] {
        assert!(filled.contains(&dir.join(file).to_str().unwrap()), "{file} filled: {report}");
    }
    // The config changed on the host: the recorded one is served, its password a placeholder.
    std::fs::write(dir.join("app.toml"), format!("host = \"db-2\"\npassword = \"{secret}\"\n")).unwrap();
    let (out, _) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "7 0\n", "{}", stderr(&out));
}

/// Serving a recorded file puts a folder over the host's in the program's view: it keeps the
/// host folder's times, so an archive of the folder (tar stores its modification time) and its
/// `stat` come out as recorded.
#[test]
fn folders_over_served_files_keep_the_hosts_times() {
    let dir = scratch("sandbox-folder-times");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/a.txt"), "alpha\n").unwrap();
    std::fs::write(dir.join("data/b.bin"), retrace_tests::pattern(50_000, 7)).unwrap();
    // (`/` itself would do, but other tests running beside this one change it.)
    let script = "tar czf out.tgz data && sha256sum out.tgz && stat -c '%n %a %Y' data data/a.txt";
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout));
    let served = report["files_served"].as_array().unwrap();
    assert!(served.iter().any(|f| f.as_str().unwrap().ends_with("data/a.txt")), "{report}");
}

/// A folder lists as it did when recorded: the entries, in the kernel's order of then (Python's
/// `os.listdir` and `find` do not sort), though files were since added, renamed and removed on
/// the host, whether named directly or through a symlink; and a listing that the program's own
/// change made shows that change.
#[test]
fn a_folder_lists_as_recorded_after_the_host_changed_it() {
    let dir = scratch("sandbox-listing");
    std::fs::create_dir_all(dir.join("data/sub")).unwrap();
    // A folder named through a symlink: its fd's path is the folder's own.
    std::os::unix::fs::symlink("data/sub", dir.join("via")).unwrap();
    for (i, name) in ["k1", "a7", "zz", "m.txt", "b-2", "q9.log", "c"].iter().enumerate() {
        std::fs::write(dir.join("data").join(name), format!("{i}\n")).unwrap();
    }
    let script = "import os\nprint(os.listdir('data'))\nopen('data/made-here', 'w').write('x')\n\
                  print(os.listdir('data'))\nprint([e.name for e in os.scandir('via')])\n\
                  os.system('find data -name \"*\" | head -c 2000')\n";
    let command = [retrace_tests::python(), "-c", script];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let listed = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert!(listed.contains("'made-here'") && listed.contains("data/zz"), "{listed}");
    std::fs::remove_file(dir.join("data/made-here")).unwrap();
    std::fs::rename(dir.join("data/zz"), dir.join("data/renamed")).unwrap();
    std::fs::remove_file(dir.join("data/c")).unwrap();
    std::fs::write(dir.join("data/new-on-host"), "").unwrap();
    std::fs::write(dir.join("data/sub/also-new"), "").unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), listed, "{report}");
    assert!(report["listings_served"].as_u64().unwrap() >= 5, "{report}");
}

/// `ls -l` of a folder that holds served files and of `/` shows what it showed when recorded:
/// a folder's link count, size and owner as a disk has them, not as the sandbox's overlay or
/// its own /proc would show them.
#[test]
fn a_long_listing_of_folders_over_served_files_is_the_recorded_one() {
    let dir = scratch("sandbox-long-listing");
    std::fs::create_dir_all(dir.join("data/one/deeper")).unwrap();
    std::fs::create_dir_all(dir.join("data/two")).unwrap();
    std::fs::write(dir.join("data/a.txt"), "alpha\n").unwrap();
    let script = "cat data/a.txt data/one/x 2>/dev/null; ls -la --time-style=+%s data data/one && \
                  stat -c '%n %h %s %b %U %G' data data/one . && ls -ld --time-style=+%s / /proc /sys /dev";
    std::fs::write(dir.join("data/one/x"), "x\n").unwrap();
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    let served = report["files_served"].as_array().cloned().unwrap_or_default();
    assert!(served.iter().any(|f| f.as_str().unwrap().ends_with("data/one/x")), "{report}");
    // /proc's link count is its number of processes: it may differ between two runs, and with
    // it the width `ls` pads the other lines' counts to.
    let steady = |text: &[u8]| {
        let lines = String::from_utf8_lossy(text).into_owned();
        let lines = lines.lines().filter(|l| !l.ends_with(" /proc"));
        lines.map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(steady(&out.stdout), steady(&recorded.stdout), "{}\n{report}", stderr(&out));
    // A folder made or removed inside a merged one counts at once (the replayer keeps each
    // merged folder's count only while the folder is unchanged).
    let changing = "stat -c %h data/one && mkdir data/one/new && stat -c %h data/one && rmdir data/one/new && \
                    stat -c %h data/one";
    let (out, report) = replay(&dir.join("rec"), &["--lenient"], &["sh", "-c", changing], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n4\n3\n", "{report}");
}

/// A file read only in part comes from the host in replay: where the host's copy no longer
/// holds the bytes that were read, the report says so; a change past them is no warning.
#[test]
fn a_file_read_in_part_that_changed_on_the_host_is_reported() {
    let dir = scratch("sandbox-changed-on-host");
    let data = dir.join("big.log");
    let mut bytes = retrace_tests::pattern(20_000, 3);
    std::fs::write(&data, &bytes).unwrap();
    let command = ["dd", "if=big.log", "bs=4096", "count=1", "status=none", "of=/dev/null"];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let changed = |report: &serde_json::Value| report["files_changed_on_host"].as_array().cloned().unwrap_or_default();
    // Past what was read: nothing to say.
    bytes[15_000] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert!(changed(&report).is_empty(), "{report}");
    // Inside it: a warning that names the file.
    bytes[100] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "the outputs match: {}", stderr(&out));
    assert_eq!(changed(&report), [serde_json::json!(data.to_str().unwrap())], "{report}");
    assert!(stderr(&out).contains("1 file(s) read in part when recorded differ on this host"), "{}", stderr(&out));
}

#[test]
fn the_exit_status_is_compared_with_the_recorded_one() {
    let dir = scratch("sandbox-exit");
    let recorded = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec", "--", "sh", "-c", "echo out; exit 3"])
        .output()
        .unwrap();
    assert_eq!(recorded.status.code(), Some(3), "{}", stderr(&recorded));
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", "echo out; exit 3"], &dir);
    assert_eq!(out.status.code(), Some(3), "the same status passes: {}", stderr(&out));
    assert_eq!(report["result"], "passed", "{report}");
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", "echo out; exit 0"], &dir);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert_eq!(report["recorded_exit_status"], 3, "{report}");
    assert!(stderr(&out).contains("exit status 0 differs: the program exited 3 when recorded"), "{}", stderr(&out));
    // Killed by a signal counts as 128+N, like a shell says.
    let (out, _) = replay(&dir.join("rec"), &[], &["sh", "-c", "kill -9 $$"], &dir);
    assert_eq!(out.status.code(), Some(DIVERGED), "{}", stderr(&out));
    assert!(stderr(&out).contains("exit status 137 differs"), "{}", stderr(&out));
}

#[test]
fn bad_replay_input_gets_one_clear_line() {
    let dir = scratch("sandbox-bad");
    let (_, _) = record(&dir, &[], &["true"]);
    let (out, _) = replay(&dir.join("rec"), &[], &["no-such-program-retrace"], &dir);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("command not found: no-such-program-retrace"), "{err}");
    // A folder that is no recording.
    std::fs::write(dir.join("manifest.json"), "{\"format_version\": 999}").unwrap();
    let (out, _) = replay(&dir, &[], &["true"], &dir);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_served_file_has_the_size_and_modification_time_the_program_saw() {
    let dir = scratch("sandbox-mtime");
    std::fs::write(dir.join("page.html"), "<p>recorded</p>\n").unwrap();
    // What a static file server does: fstat for the length and Last-Modified, then read that much.
    let script = "import os\nf = open('page.html', 'rb')\nst = os.fstat(f.fileno())\nprint(st.st_size, st.st_mtime_ns)\nprint(f.read(st.st_size).decode(), end='')\n";
    let recorded = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec", "--", retrace_tests::python(), "-c", script])
        .output()
        .unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.join("page.html"), "<p>changed on disk since</p>\n").unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &[retrace_tests::python(), "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout));
}

/// `record` patches each traced image's vDSO so its wall-clock reads are system calls, and
/// records what each returned: the replayed program reads the same times, to the nanosecond,
/// thread by thread (coreutils' `date`, Python's `time.time_ns()` on two threads, the
/// seconds of `time(2)` through ctypes).
#[test]
fn the_program_reads_the_wall_clock_it_read_when_recorded() {
    let dir = scratch("sandbox-clock");
    let python = retrace_tests::python();
    let script = format!(
        "date +%s.%N; {python} -c 'import ctypes, threading, time\n\
         print(time.time_ns())\n\
         t = threading.Thread(target=lambda: print(\"thread\", time.time_ns()))\n\
         t.start(); t.join()\n\
         print(ctypes.CDLL(None).time(None))'"
    );
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", &script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let printed = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert_eq!(printed.lines().count(), 4, "{printed}");
    // The recording holds the times the program printed, read by the kernel's probes.
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    let read_ns: Vec<i128> = rec
        .syscalls()
        .iter()
        .filter(|call| call.name == "clock_gettime" && call.random.len() == 16)
        .map(|call| {
            let sec = i64::from_le_bytes(call.random[..8].try_into().unwrap());
            let nsec = i64::from_le_bytes(call.random[8..].try_into().unwrap());
            sec as i128 * 1_000_000_000 + nsec as i128
        })
        .collect();
    let python_ns: i128 = printed.lines().nth(1).unwrap().parse().unwrap();
    assert!(read_ns.contains(&python_ns), "{python_ns} among the recorded reads {read_ns:?}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", &script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), printed, "{report}");
    assert!(report["clock_reads_exact"].as_u64().unwrap() >= 4, "{report}");
}

/// With `--no-clock` the vDSO is left alone: nothing of the clock is recorded, and the
/// replayed program reads the recorded command's start plus the time elapsed (not today's).
#[test]
fn without_recorded_reads_the_clock_is_the_recorded_time_plus_elapsed() {
    let dir = scratch("sandbox-clock-elapsed");
    let script = format!("date +%s; {} -c 'import time; print(int(time.time()))'", retrace_tests::python());
    let recorded = retrace_command()
        .current_dir(&dir)
        .args(["record", "--no-clock", "-o", "rec", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    let clock_calls = rec.syscalls().iter().filter(|c| c.name == "clock_gettime" || c.name == "gettimeofday").count();
    assert_eq!(clock_calls, 0, "--no-clock records no clock reads");
    let seconds = |out: &[u8]| -> Vec<i64> {
        String::from_utf8_lossy(out).lines().map(|l| l.trim().parse().expect("seconds")).collect()
    };
    let then = seconds(&recorded.stdout);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (out, report) = replay(&dir.join("rec"), &["--lenient"], &["sh", "-c", &script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let replayed = seconds(&out.stdout);
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    for (r, t) in replayed.iter().zip(&then) {
        assert!((r - t).abs() <= 1, "replayed {r}, recorded {t}: the recorded clock");
        assert!(*r <= now - 2, "replayed {r}, today {now}: not today's clock");
    }
    assert!(report["clock_reads"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["clock_reads_exact"].as_u64(), Some(0), "{report}");
}

#[test]
fn a_static_go_binary_reads_the_wall_clock_it_read_when_recorded() {
    let dir = scratch("sandbox-go-clock");
    // No libc: Go finds the vDSO itself, and the patches must reach it there too. A generator
    // seeded from the clock gives the same numbers.
    go_build(
        &dir,
        "clock",
        "package main\n\nimport (\n\t\"fmt\"\n\t\"math/rand\"\n\t\"time\"\n)\n\n\
         func main() {\n\tfmt.Println(time.Now().UnixNano())\n\
         \tfmt.Println(rand.New(rand.NewSource(time.Now().UnixNano())).Int63())\n}\n",
        &[],
    );
    let recorded = retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "./clock"]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (out, report) = replay(&dir.join("rec"), &[], &["./clock"], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout), "{report}");
}

/// Each new image's AT_RANDOM bytes (libc's stack guard, Go's runtime generator seed) are
/// read at its exec before it runs, and replay puts them back before its code reads them.
#[test]
fn each_image_gets_the_at_random_bytes_it_had_when_recorded() {
    let dir = scratch("sandbox-at-random");
    let show = "import ctypes; l = ctypes.CDLL(None); l.getauxval.restype = ctypes.c_ulong; \
                print(ctypes.string_at(l.getauxval(25), 16).hex())";
    let python = retrace_tests::python();
    let script = format!("{python} -c '{show}'; {python} -c '{show}'");
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", &script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let printed = String::from_utf8_lossy(&recorded.stdout).into_owned();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert_ne!(lines[0], lines[1], "two images, two draws");
    // The recording holds them on the execs of python.
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    let recorded_bytes: Vec<String> = rec
        .processes()
        .iter()
        .filter(|p| p.event == "exec" && p.path == python)
        .map(|p| p.at_random.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert_eq!(recorded_bytes, lines, "the exec records hold what each image saw");
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", &script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), printed, "{report}");
    assert!(report["at_random_replayed"].as_u64().unwrap() >= 2, "{report}");
}

/// glibc's getaddrinfo sorts two or more answers by connecting a UDP socket to each in turn
/// (sending nothing): a server resolving its own listening address (`http.server`) does. Every
/// address the recording's UDP socket connected to goes through again, not only the last.
#[test]
fn getaddrinfo_sorting_its_answers_is_not_blocked() {
    let dir = scratch("sandbox-gai-sort");
    let script = "import socket\n\
                  print(socket.getaddrinfo(None, 8080, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))";
    let command = [retrace_tests::python(), "-c", script];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let rec = retrace_tests::Rec::open(&dir.join("rec"));
    let udp_connects =
        rec.syscalls().iter().filter(|c| c.name == "connect" && c.ret == 0 && c.detail.ends_with(":8080")).count();
    assert!(udp_connects >= 2, "glibc connected to each answer: {udp_connects}");
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(report["blocked"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(out.stdout, recorded.stdout);
}

/// Every process and thread the program makes gets the id it got when recorded: a shell's `$$`
/// in a child, `$!`, a thread's id, though other processes on the host took ids in between
/// when recorded.
#[test]
fn children_and_threads_get_their_recorded_ids() {
    let dir = scratch("sandbox-pids");
    let script = "echo $$; sleep 0.5; sh -c 'echo $$'; sleep 0 & echo $!; wait; python3 -c \"import os, threading\n\
                  t = threading.Thread(target=lambda: print(threading.get_native_id()))\n\
                  t.start(); t.join(); print(os.getpid(), os.getppid())\"";
    let mut recorder = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec", "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Other processes take ids while the recorded shell sleeps: once it has printed its $$ (the
    // probes take a while to load on a busy machine, so a fixed wait could miss the sleep).
    let mut shell_output = std::io::BufReader::new(recorder.stdout.take().unwrap());
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut shell_output, &mut first_line).unwrap();
    assert!(!first_line.is_empty(), "the recorded shell printed nothing");
    for _ in 0..30 {
        std::process::Command::new("true").status().unwrap();
    }
    std::io::Read::read_to_end(&mut shell_output, &mut Vec::new()).unwrap();
    assert!(recorder.wait().unwrap().success());
    let recorded = retrace_tests::Rec::open(&dir.join("rec"));
    let ids: Vec<u32> = recorded.processes().iter().filter(|p| p.event == "fork").map(|p| p.child).collect();
    assert!(ids.windows(2).any(|w| w[1] > w[0] + 20), "the host took ids between the children: {ids:?}");
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let printed: Vec<u32> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|w| w.parse().unwrap()).collect();
    // $$, the child shell's $$, $!, the thread's id, python's pid and its parent's.
    assert_eq!(printed.len(), 6, "{printed:?}");
    for id in [printed[1], printed[2], printed[4]] {
        assert!(ids.contains(&id), "{id} is a recorded child's id: {ids:?}");
    }
    let threads: Vec<u32> = recorded.processes().iter().filter(|p| p.event == "thread").map(|p| p.child).collect();
    assert!(threads.contains(&printed[3]), "{} is a recorded thread's id: {threads:?}", printed[3]);
}

/// A file read through a symlink (`/etc/localtime`, a `current` release link) is served at
/// the link's target: the program reads the recorded bytes through the link, and the link
/// is still a link (`readlink`, `ls -l`, Java's and tzlocal's time zone name).
#[test]
fn a_file_read_through_a_symlink_is_served_and_the_link_stays() {
    let dir = scratch("sandbox-symlink-served");
    std::fs::create_dir_all(dir.join("releases")).unwrap();
    std::fs::write(dir.join("releases/v1.txt"), "version one\n").unwrap();
    std::os::unix::fs::symlink("releases/v1.txt", dir.join("current")).unwrap();
    let script = "cat current && readlink current && stat -c '%F %s' current releases/v1.txt";
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert!(String::from_utf8_lossy(&recorded.stdout).starts_with("version one\nreleases/v1.txt\nsymbolic link"));
    // The target changes on the host (same length, so only the bytes say which was served).
    std::fs::write(dir.join("releases/v1.txt"), "version ONE\n").unwrap();
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout), "{report}");
}

/// The kernel's files that say the same to every process (memory, load, uptime) say in
/// replay what they said when recorded, to `cat` and to procps's `free`, which reads
/// /proc/meminfo again from its start, and so does sysinfo(2) (glibc's getloadavg); a
/// process's own files stay live.
#[test]
fn the_kernels_files_say_what_they_said_when_recorded() {
    let dir = scratch("sandbox-proc-files");
    let sysinfo =
        "import ctypes; b = ctypes.create_string_buffer(112); ctypes.CDLL(None).sysinfo(b); print(b.raw.hex())";
    let script = format!(
        "cat /proc/uptime /proc/loadavg && free -b && cat /proc/self/comm && {} -c '{sysinfo}'",
        retrace_tests::python()
    );
    let script = script.as_str();
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    // Uptime moves every 10 ms in /proc/uptime and every second in sysinfo's: today's differ.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let today = std::process::Command::new("sh").args(["-c", script]).output().unwrap();
    let last_line = |out: &[u8]| String::from_utf8_lossy(out).lines().last().unwrap_or_default().to_owned();
    assert_ne!(last_line(&today.stdout), last_line(&recorded.stdout));
    assert_ne!(today.stdout, recorded.stdout);
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout), "{report}");
    let served: Vec<&str> = report["files_served"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    for file in ["/proc/uptime", "/proc/loadavg", "/proc/meminfo"] {
        assert!(served.contains(&file), "{file}: {report}");
    }
    let own = |f: &&str| {
        f.starts_with("/proc/self") || f.strip_prefix("/proc/").is_some_and(|r| r.starts_with(char::is_numeric))
    };
    assert!(!served.iter().any(own), "{report}");
}

/// What the program read from /dev/urandom and /dev/random (a shell's `head -c`, Python's
/// buffered file) it reads again, in the same order; the devices still stat as character
/// devices; reads past the recording get fresh bytes and are counted.
#[test]
fn random_devices_give_the_recorded_bytes_again() {
    let dir = scratch("sandbox-random-devices");
    let script = "head -c 32 /dev/urandom | od -An -tx1 && python3 -c \"import os, stat\n\
                  f = open('/dev/random', 'rb')\n\
                  print(f.read(16).hex(), stat.S_ISCHR(os.fstat(f.fileno()).st_mode), stat.S_ISCHR(os.stat('/dev/urandom').st_mode))\"";
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--", "sh", "-c", script]).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert!(
        String::from_utf8_lossy(&recorded.stdout).ends_with(" True True\n"),
        "{}",
        String::from_utf8_lossy(&recorded.stdout)
    );
    let (out, report) = replay(&dir.join("rec"), &[], &["sh", "-c", script], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout));
    assert!(report["device_random_replayed"].as_u64().unwrap() >= 48, "{report}");
    assert_eq!(report["device_random_unreplayed"], 0, "{report}");
    // Asking for more than was recorded: the recorded bytes first, then fresh ones.
    let more = "head -c 100000 /dev/urandom | od -An -tx1 | sed -n 1,2p";
    let (out, report) = replay(&dir.join("rec"), &["--lenient"], &["sh", "-c", more], &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    let first: String = String::from_utf8_lossy(&recorded.stdout).lines().take(2).collect::<Vec<_>>().join("\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), first, "{report}");
    assert_eq!(report["device_random_replayed"], 32, "{report}");
    assert_eq!(report["device_random_unreplayed"], 100_000 - 32, "{report}");
}

/// Node has OpenSSL linked in: Math.random's seed, crypto.randomUUID and randomBytes all come
/// from its own RAND_bytes_ex, which no preloaded library can stand in for.
const NODE_RANDOM: &str = r#"
const crypto = require("crypto");
console.log(Math.random(), Math.random(), crypto.randomUUID(), crypto.randomBytes(8).toString("hex"));
"#;

#[test]
fn node_started_by_a_shell_gets_the_random_bytes_its_own_openssl_gave() {
    let dir = scratch("sandbox-node-random");
    std::fs::write(dir.join("random.js"), NODE_RANDOM).unwrap();
    // Exec'd by the shell after the recording started: the kernel holds node at exec until its
    // program has the probes, so its first calls (at startup) are recorded too.
    let command = ["sh", "-c", "node random.js"];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&recorded.stdout),
        "the same Math.random, UUID and bytes\n{report}"
    );
    assert_eq!(report["result"], "passed", "{report}");
    assert!(report["library_random_reads"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["library_random_unreplayed"], 0, "{report}");
    // Another run of the program (not replayed) prints other values: the test can tell.
    let again = Command::new("node").arg("random.js").current_dir(&dir).output().unwrap();
    assert_ne!(again.stdout, recorded.stdout);
}

#[test]
fn the_program_gets_the_recorded_random_bytes_unless_the_rules_keep_them_out() {
    let dir = scratch("sandbox-random");
    // os.urandom and the random module's seed both come from getrandom; ssl.RAND_bytes from
    // OpenSSL's generator (which mixes in the CPU's time-stamp counter: recorded by uprobe).
    let script = "import os, random, ssl; print(os.urandom(16).hex(), random.random(), ssl.RAND_bytes(16).hex())";
    let command = [retrace_tests::python(), "-c", script];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(out.stdout, recorded.stdout, "the same random bytes");
    assert!(report["random_reads"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["library_random_reads"], 1, "{report}");
    // The recording holds the bytes RAND_bytes returned, as the program printed them.
    let printed = String::from_utf8_lossy(&recorded.stdout).split_whitespace().last().unwrap().to_owned();
    let timeline = retrace_command().current_dir(&dir).args(["inspect", "rec", "--json"]).output().unwrap();
    let rand: Vec<serde_json::Value> = String::from_utf8_lossy(&timeline.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["type"] == "syscall" && r["name"] == "RAND_bytes")
        .collect();
    assert_eq!(rand.len(), 1, "one RAND_bytes call");
    let bytes: Vec<u8> = rand[0]["random"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, printed);
    // A capture allowlist without `random = true` keeps them out of the recording.
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "[capture]\npipes = true\n").unwrap();
    let out = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec-no-random", "--rules", rules.to_str().unwrap(), "--"])
        .args(command)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, report) = replay(&dir.join("rec-no-random"), &["--lenient"], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(report["random_reads"], 0, "{report}");
    assert!(report["random_unreplayed"].as_u64().unwrap() >= 2, "{report}");
}

/// A program the recorder stopped (`--duration`) with no recorded clients to say when the
/// replay is over: the replayer stops it once it has run as long as it had, as the recorder
/// did, and the replay passes.
#[test]
fn a_program_the_recorder_stopped_is_stopped_after_as_long_in_replay() {
    let dir = scratch("sandbox-stopped");
    let command = ["sh", "-c", "echo started; exec sleep 300"];
    let recorded = retrace_command()
        .current_dir(&dir)
        .args(["record", "-o", "rec", "--duration", "1", "--"])
        .args(command)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&recorded.stdout), "started\n", "{}", stderr(&recorded));
    let began = std::time::Instant::now();
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert!(began.elapsed() < std::time::Duration::from_secs(120), "the replay ended, not the sleep");
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
}

/// A file the program writes in the sandbox has times on its own clock, not the kernel's real
/// one: `make` would call a Makefile it just wrote "in the future" (the recorded clock is
/// earlier), and `ls -l` would show the replay's date.
#[test]
fn what_the_program_writes_has_times_on_its_own_clock() {
    let dir = scratch("sandbox-written-times");
    let script = "import os, time\n\
                  open('made.txt', 'w').write('x')\n\
                  st = os.stat('made.txt')\n\
                  print(int(st.st_mtime), 'future' if st.st_mtime > time.time() + 0.5 else 'past')";
    let command = [retrace_tests::python(), "-c", script];
    let recorded =
        retrace_command().current_dir(&dir).args(["record", "-o", "rec", "--"]).args(command).output().unwrap();
    assert!(recorded.status.success(), "{}", stderr(&recorded));
    assert!(
        String::from_utf8_lossy(&recorded.stdout).contains(" past"),
        "{}",
        String::from_utf8_lossy(&recorded.stdout)
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (out, report) = replay(&dir.join("rec"), &[], &command, &dir);
    assert_eq!(out.status.code(), Some(0), "{}\n{report}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&recorded.stdout), "{report}");
}
