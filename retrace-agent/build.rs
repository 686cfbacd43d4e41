use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context("no vendored protoc for this host")?;
    prost_build::Config::new()
        .protoc_executable(protoc)
        .type_attribute(".", "#[derive(serde::Serialize)]")
        // Payloads travel from the ring buffer to the segment without another copy; syscall
        // names are static.
        .bytes([
            ".retrace.v1.Data.payload",
            ".retrace.v1.Data.syscall",
            ".retrace.v1.Gap.syscall",
            ".retrace.v1.Syscall.name",
        ])
        .field_attribute(".retrace.v1.Syscall.name", "#[serde(serialize_with = \"super::proto_text::serialize\")]")
        .compile_protos(&["proto/retrace.proto"], &["proto"])
        .context("failed to compile proto/retrace.proto")?;
    println!("cargo:rerun-if-changed=proto/retrace.proto");

    shim()?;

    // Fuzz builds (`cargo fuzz`, cfg fuzzing) exercise the reader and the redactor only: no
    // eBPF object, and none of the sanitizer flags leak into the eBPF build.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("retrace");
        std::fs::write(out, b"")?;
        return Ok(());
    }
    let metadata = cargo_metadata_root()?;
    let ebpf_dir = format!("{metadata}/retrace-ebpf");
    // -Z build-std=core on the stable toolchain.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package { name: "retrace-ebpf", root_dir: &ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom("stable"),
    )
    .map_err(|e| anyhow!("failed to build the eBPF programs (run `cargo xtask setup`): {e:#}"))
}

/// The library replay preloads to give OpenSSL's random functions the recorded bytes, built
/// with the C compiler Rust links with.
fn shim() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("libretrace_openssl_rand.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg("shim/openssl_rand.c")
        .arg("-ldl")
        .status()
        .with_context(|| {
            format!("cannot run the C compiler `{cc}` (the one Rust links with) for shim/openssl_rand.c")
        })?;
    if !status.success() {
        return Err(anyhow!("building shim/openssl_rand.c failed: {status}"));
    }
    println!("cargo:rerun-if-changed=shim/openssl_rand.c");
    Ok(())
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).parent().context("no workspace root")?;
    Ok(root.display().to_string())
}
