//! `cargo xtask image`: the agent's container image from
//! `deploy/Containerfile`, `FROM scratch` with the static (musl) agent that
//! the kernel matrix builds too. Podman (Debian's) builds it; nothing is
//! pulled. The image carries the hash of its inputs in a label, so a second
//! run with the same binary and Containerfile builds nothing.
use std::process::Command;

use anyhow::{Context as _, bail};
use egress_tests::image::{INPUTS_LABEL, inspect, podman, tag};

/// Build (or find up to date) `egress-observer/egress-agent:<version>`.
pub fn build(force: bool) -> anyhow::Result<()> {
    let bin = super::vm::build_static(&["egress-agent"], true)?.join("egress-agent");
    let containerfile = super::root().join("deploy/Containerfile");
    // The build context holds the binary alone: the repository (with its
    // target/ of several GB) would be sent to the builder whole.
    let context = super::root().join("target/image/context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    let staged = context.join("egress-agent");
    std::fs::copy(&bin, &staged).with_context(|| format!("copying {}", bin.display()))?;
    let hash = sha256(&[&staged, &containerfile])?;
    let tag = tag();
    let before = inspect(&tag);
    let old_id = before.as_ref().and_then(|i| i["Id"].as_str().map(str::to_string));
    let current =
        before.as_ref().and_then(|i| i["Labels"][INPUTS_LABEL].as_str().map(str::to_string));
    if !force && current.as_deref() == Some(hash.as_str()) {
        println!("image: {tag} is up to date (inputs {})", &hash[..12]);
    } else {
        println!("image: building {tag} from {} (inputs {})", containerfile.display(), &hash[..12]);
        let st = podman()
            .args(["build", "--layers=false", "--file"])
            .arg(&containerfile)
            .args(["--tag", &tag, "--label", &format!("{INPUTS_LABEL}={hash}")])
            .arg(&context)
            .status()
            .context("running podman (cargo xtask setup installs it)")?;
        if !st.success() {
            bail!("podman build failed ({st})");
        }
        // The previous build of this tag, now untagged: remove it by id
        // (fails harmlessly while a container still uses it).
        let new_id = inspect(&tag).and_then(|i| i["Id"].as_str().map(str::to_string));
        if let Some(old) = old_id.filter(|o| Some(o) != new_id.as_ref()) {
            let _ = podman().args(["rmi", &old]).output();
        }
    }
    let _ = std::fs::remove_dir_all(&context);
    let info = inspect(&tag).context("the image is not there after the build")?;
    let size = info["Size"].as_u64().unwrap_or(0);
    println!(
        "image: {tag} {} ({size} bytes), id {}",
        mib(size),
        info["Id"].as_str().map_or("?", |i| &i[..12.min(i.len())])
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// sha256 over the files, in order (`sha256sum`, coreutils).
fn sha256(files: &[&std::path::Path]) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").args(files).output().context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The hash of the per-file hashes (names excluded: the staging path is fixed anyway).
    let sums: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect::<Vec<_>>()
        .join("\n");
    let mut c = Command::new("sha256sum");
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().context("running sha256sum")?;
    {
        use std::io::Write as _;
        child.stdin.take().context("stdin")?.write_all(sums.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string())
}
