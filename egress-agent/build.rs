//! Builds the kernel programs (`egress-ebpf`, nightly + bpf-linker) and leaves
//! the object in OUT_DIR for `include_bytes!`. With AYA_BUILD_SKIP=1 (host-only
//! unit tests) an empty object is written and the agent refuses to load it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let object = out.join("egress");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, b"")?;
        }
        return aya_build::build_ebpf([], aya_build::Toolchain::default());
    }
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec()?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "egress-ebpf")
        .ok_or_else(|| anyhow::anyhow!("egress-ebpf package not found in the workspace"))?;
    let root =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow::anyhow!("manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
