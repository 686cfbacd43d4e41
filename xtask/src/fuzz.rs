//! `cargo xtask fuzz`: the fuzz targets in `fuzz/` (recording reader, redactor) through
//! cargo-fuzz, installed here when missing. libFuzzer's instrumentation needs `-Z` flags: the
//! stable toolchain takes them with RUSTC_BOOTSTRAP=1, as for the eBPF build.

use std::path::Path;

use anyhow::Result;

pub const TARGETS: &[&str] = &["reader", "redactor"];

pub fn run(root: &Path, seconds: u32) -> Result<()> {
    install()?;
    for target in TARGETS {
        eprintln!("fuzz: {target} for {seconds} s");
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        crate::run(
            crate::cargo()
                .current_dir(root.join("fuzz"))
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "run", "--release", "--sanitizer", "none", target])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048"),
        )?;
    }
    Ok(())
}

fn install() -> Result<()> {
    let present = crate::cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("setup: cargo install cargo-fuzz");
        crate::run(crate::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
