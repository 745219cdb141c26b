//! Fixtures for root/kernel tests and the lab: network namespaces, veth
//! links, iptables rules, listeners and clients inside namespaces, and the
//! real `egress-agent` binary run as a child process.
//!
//! Everything created here is removed on drop, also when a test fails.
pub mod agent;
pub mod alert_lab;
pub mod alert_scenarios;
pub mod bench;
pub mod cgroups;
pub mod chain_lab;
pub mod demo;
pub mod ecs;
pub mod fake_apiserver;
pub mod faults;
pub mod image;
pub mod kernel_lock;
pub mod lab;
pub mod manifests;
pub mod multinode;
pub mod netns;
pub mod netpol;
pub mod netpol_lab;
pub mod prom;
pub mod prom_server;
pub mod qemu;
pub mod routed_lab;
pub mod scrape;
pub mod sni_lab;
pub mod soak;
pub mod tls_lab;
pub mod traffic;

pub use agent::{Agent, AgentMode};
pub use netns::{Netns, Veth};

use std::process::Command;

use anyhow::{Context as _, bail};

/// Run a command, failing with its stderr if it exits non-zero.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd args…` as a Command.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// True when running as root (the kernel tests need it).
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (return early from) a test when not root, saying why; under CI
/// (CI=true) not being root is an error instead, so nothing is skipped silently.
/// Takes the kernel lock for the rest of the test.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("kernel tests must run as root in CI");
            }
            eprintln!("skipped: needs root (run `cargo xtask test` as root)");
            return;
        }
        // Held until the test function returns: one kernel user at a time,
        // also across checkouts (see kernel_lock).
        let _kernel_lock = $crate::kernel_lock::KernelLock::take().expect("kernel lock");
    };
}
