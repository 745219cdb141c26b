//! `cargo xtask lint`: formatting and clippy, warnings denied. The host
//! crates on the stable toolchain; the eBPF crate on its own target (nightly,
//! `bpf{el,eb}-unknown-none`, `-Z build-std=core`), the way aya-build builds
//! it for `egress-agent/build.rs`. The fuzz crate (`egress-agent/fuzz`, its
//! own workspace) is formatted and linted too, into `target/fuzz-lint` with
//! `AYA_BUILD_SKIP=1`. `cargo xtask test` runs it first.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, root, setup};

pub fn run() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "egress-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    fuzz_crate()?;
    ebpf()
}

/// fmt and clippy of the fuzz targets (a separate workspace, stable is
/// enough to check them; the kernel programs are not built).
fn fuzz_crate() -> anyhow::Result<()> {
    let manifest = root().join("egress-agent/fuzz/Cargo.toml");
    let manifest = manifest.to_string_lossy();
    cargo(&["fmt", "--manifest-path", &manifest, "--check"])?;
    let target_dir = root().join("target/fuzz-lint");
    let target_dir = target_dir.to_string_lossy();
    println!("+ AYA_BUILD_SKIP=1 cargo clippy --manifest-path {manifest} …");
    let st = Command::new(env!("CARGO"))
        .args(["clippy", "--manifest-path", &manifest, "--target-dir", &target_dir])
        .args(["--bins", "--", "-D", "warnings"])
        .env("AYA_BUILD_SKIP", "1")
        .current_dir(root())
        .env("PATH", setup::tool_path())
        .status()
        .context("running cargo clippy on the fuzz crate")?;
    if !st.success() {
        bail!("clippy of the fuzz crate failed ({st})");
    }
    Ok(())
}

/// Clippy for the kernel programs, with the flags aya-build gives them
/// (only `bpf_target_arch` matters to a check; nothing is linked).
fn ebpf() -> anyhow::Result<()> {
    let target =
        if cfg!(target_endian = "big") { "bpfeb-unknown-none" } else { "bpfel-unknown-none" };
    let target_dir = root().join("target/lint-ebpf");
    let args = [
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "egress-ebpf",
        "--lib",
        "--bins",
        "--release",
        "--target",
        target,
        "-Z",
        "build-std=core",
        "--target-dir",
    ];
    println!("+ rustup {} {} -- -D warnings", args.join(" "), target_dir.display());
    let st = Command::new("rustup")
        .args(args)
        .arg(&target_dir)
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        // As aya-build does: the nightly toolchain's own rustc, not the caller's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root())
        .env("PATH", setup::tool_path())
        .status()
        .context("running rustup (the eBPF crate needs the nightly toolchain)")?;
    if !st.success() {
        bail!("clippy of the eBPF crate failed ({st})");
    }
    Ok(())
}
