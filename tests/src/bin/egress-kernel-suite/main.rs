//! The kernel-facing suite `cargo xtask vm` runs inside each VM (and on the
//! host, in a network namespace of its own): `egress-agent check`, every
//! program's load and verifier instruction count, connect outcomes, the
//! error path without `inet_sk_error_report`, NAT via ctnetlink.
//!
//! It prints one marker line per result on stdout, parsed by xtask/src/vm:
//! `EGRESS-KT result <test> pass|fail|skip <detail>`,
//! `EGRESS-KT insns <program> <verified|-> <xlated|-> <status>`,
//! `EGRESS-KT kernel <release>` and finally `EGRESS-KT done`.
//! Traffic goes to loopback and to addresses on a veth link it creates.
mod cases;
mod net;

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};

pub const MARK: &str = "EGRESS-KT";

/// Outcome of one test.
pub enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

pub fn report(test: &str, o: &Outcome) {
    let (word, detail) = match o {
        Outcome::Pass(d) => ("pass", d),
        Outcome::Fail(d) => ("fail", d),
        Outcome::Skip(d) => ("skip", d),
    };
    println!("{MARK} result {test} {word} {}", detail.replace('\n', " | "));
}

fn main() {
    let own_netns = std::env::args().any(|a| a == "--own-netns");
    let _lock = match prepare(own_netns) {
        Ok(l) => l,
        Err(e) => {
            report("setup", &Outcome::Fail(format!("{e:#}")));
            println!("{MARK} done");
            std::process::exit(1);
        }
    };
    println!("{MARK} kernel {}", cases::kernel_release());
    let failed = cases::run_all();
    println!("{MARK} done");
    std::process::exit(i32::from(failed));
}

/// On the host: take the shared kernel lock (other agents must not steal the
/// cgroup hook meanwhile) and move into a fresh network namespace, so the
/// dummy link, netem and iptables rules touch nothing of the machine.
fn prepare(own_netns: bool) -> anyhow::Result<Option<File>> {
    if !egress_tests::is_root() {
        bail!("needs root (loads eBPF programs, creates links)");
    }
    let lock = if own_netns {
        let f =
            File::create("/tmp/egress-kernel.lock").context("opening /tmp/egress-kernel.lock")?;
        // SAFETY: valid fd owned by `f`.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock /tmp/egress-kernel.lock: {}", std::io::Error::last_os_error());
        }
        // SAFETY: single-threaded here; the namespace applies to this process and its children.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        Some(f)
    } else {
        None
    };
    net::setup()?;
    Ok(lock)
}
