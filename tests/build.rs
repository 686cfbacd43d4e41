//! Compiles the C helpers the capture tests trace.

use std::{path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    const HELPERS: &[&str] = &["sockets"];
    for name in HELPERS {
        let src = format!("helpers/{name}.c");
        println!("cargo:rerun-if-changed={src}");
        let bin = out.join(name);
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-O1", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("a C compiler (cc) is needed for the test helpers: run `cargo xtask setup`");
        assert!(status.success(), "failed to compile {src}");
        println!("cargo:rustc-env=HELPER_{}={}", name.to_uppercase(), bin.display());
    }
}
