//! `cargo xtask …`: everything a fresh machine needs, in the project's own code.
mod bench;
mod image;
mod lint;
mod setup;
mod vm;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Project tasks for egress-observer. Every task first makes sure the
/// toolchain is present (see `setup`).
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (LLVM 22, iproute2, iptables,
    /// …), nightly rust-src, bpf-linker 0.13 built against LLVM 22. Idempotent.
    Setup,
    /// Build the agent (kernel programs embedded).
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// The container image `egress-observer/egress-agent:<version>` from
    /// deploy/Containerfile: `FROM scratch` with the static (musl, release)
    /// agent, built with podman (vfs storage; nothing is pulled). Skips the
    /// build when the image already carries the hash of the same binary and
    /// Containerfile; prints the image size.
    Image {
        /// Build even if the image is up to date.
        #[arg(long)]
        force: bool,
    },
    /// Formatting and clippy, warnings denied: `cargo fmt --check`, clippy
    /// on the host crates, and clippy on the eBPF crate for its own target.
    Lint,
    /// The whole test suite: lint, unit tests, then the root/kernel
    /// integration tests (network namespaces, real traffic, the real agent
    /// binary), then the kernel matrix (`vm`).
    Test,
    /// The local lab demo: namespaces, the agent, every connect outcome,
    /// the watch table and a /metrics excerpt; cleans up after itself.
    Lab {
        /// Keep healthy traffic flowing for at least this many seconds.
        #[arg(long, default_value_t = 0)]
        duration: u64,
        /// Also run the proxy-chain lab (real Squid → Squid → NAT → origins)
        /// through every fault and print fault / expected / agent verdict.
        #[arg(long)]
        faults: bool,
        /// Run the table(s) this many times on fresh labs and print, per
        /// row, how many runs matched (fails unless every run matched).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: u32,
    },
    /// The kernel matrix: boot pinned Debian kernels (5.10, 6.1, 6.12) under
    /// QEMU/TCG with a busybox initramfs running the kernel-facing suite,
    /// plus the same suite on the host kernel; prints kernel × test and the
    /// verifier instruction counts per program; fails on any failure.
    Vm {
        /// Comma-separated kernels of the matrix.
        #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12")]
        kernels: Vec<String>,
        /// Skip the host kernel's column.
        #[arg(long)]
        no_host: bool,
    },
    /// Benchmarks (not part of `test`): loopback connect storm with no
    /// tracing / the agent / a bpftrace counter alternated, agent CPU and
    /// peak RSS, events lost at saturation, RSS with 100k tracked sockets,
    /// the pipeline's events/s per core. Prints the table and appends a row
    /// to BENCHMARKS.md. Root; holds /tmp/egress-kernel.lock per trial.
    Bench(bench::BenchArgs),
    /// Internal to `bench`: hold N connections to the given addresses
    /// until stdin closes (at most 5 minutes).
    #[command(hide = true)]
    BenchHoldWorker { n: usize, addrs: Vec<std::net::SocketAddr> },
    /// Internal to `bench`: one worker of the realistic node load (index,
    /// connects per second, seconds); starts on a `go` line on stdin.
    #[command(hide = true)]
    BenchLoadWorker { index: usize, rate: f64, seconds: f64 },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run cargo with the toolchain environment (bpf-linker on PATH).
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    println!("+ cargo {}", args.join(" "));
    let st = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .env("PATH", setup::tool_path())
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup::ensure(),
        Task::Build { release } => {
            setup::ensure()?;
            let mut args = vec!["build", "--package", "egress-agent"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Task::Lint => {
            setup::ensure()?;
            lint::run()
        }
        Task::Image { force } => {
            setup::ensure()?;
            if !is_root() {
                bail!("podman's storage here is root's (vfs): run as root");
            }
            image::build(force)
        }
        Task::Test => {
            setup::ensure()?;
            if !is_root() {
                bail!(
                    "the kernel tests load eBPF programs and create network namespaces: run as root"
                );
            }
            lint::run()?;
            cargo(&[
                "test",
                "--package",
                "egress-common",
                "--package",
                "egress-agent",
                "--package",
                "xtask",
            ])?;
            cargo(&["build", "--package", "egress-agent"])?;
            // One test at a time: every root test runs an agent, whose
            // cgroup_skb programs sit on the cgroup root in Single mode (a
            // second agent replaces the first's) and which sees the whole
            // host's traffic (two labs at once would see each other's).
            cargo(&["test", "--package", "egress-tests", "--", "--test-threads=1"])?;
            vm::run(&vm::VmOptions {
                kernels: vm::kernels::KERNELS.iter().map(|k| k.name.to_string()).collect(),
                host: true,
            })?;
            println!("xtask test: all suites passed");
            Ok(())
        }
        Task::Vm { kernels, no_host } => {
            setup::ensure()?;
            if !no_host && !is_root() {
                bail!("the host column loads eBPF programs: run as root (or pass --no-host)");
            }
            vm::run(&vm::VmOptions { kernels, host: !no_host })
        }
        Task::Bench(args) => {
            setup::ensure()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs and bpftrace: run as root");
            }
            bench::run(args)
        }
        Task::BenchHoldWorker { n, addrs } => {
            egress_tests::bench::storm::hold_worker(&addrs, n, Duration::from_secs(300))
        }
        Task::BenchLoadWorker { index, rate, seconds } => {
            egress_tests::bench::load::worker(index, rate, seconds)
        }
        Task::Lab { duration, faults, repeat } => {
            setup::ensure()?;
            if !is_root() {
                bail!("the lab creates network namespaces and loads eBPF programs: run as root");
            }
            cargo(&["build", "--package", "egress-agent"])?;
            // SAFETY: single-threaded at this point.
            unsafe {
                std::env::set_var("EGRESS_AGENT_BIN", root().join("target/debug/egress-agent"))
            };
            // (table, row) → runs matched, in first-seen order.
            let mut tally: Vec<(&str, String, u32)> = Vec::new();
            let mut count = |table: &'static str, row: &str, ok: bool| match tally
                .iter_mut()
                .find(|(t, r, _)| *t == table && r == row)
            {
                Some(e) => e.2 += u32::from(ok),
                None => tally.push((table, row.to_string(), u32::from(ok))),
            };
            let mut clean_runs = 0;
            for i in 1..=repeat {
                let mut run_ok = true;
                if repeat > 1 {
                    println!("\n######## run {i} of {repeat}");
                }
                for r in egress_tests::demo::run(&egress_tests::demo::DemoOptions {
                    duration: Duration::from_secs(duration),
                })? {
                    count("connect outcomes", r.name, r.ok);
                    run_ok &= r.ok;
                }
                if faults {
                    println!();
                    println!(
                        "== proxy chain lab: app pod -> Squid pod (ClusterIP, DNAT) -> Squid on the 'VM' -> NAT -> origins"
                    );
                    let rows = egress_tests::faults::run(
                        egress_tests::chain_lab::ChainLabConfig::default(),
                        false,
                    )?;
                    egress_tests::faults::print(&rows);
                    for r in &rows {
                        count("proxy chain faults", r.fault, r.ok);
                        run_ok &= r.ok;
                    }
                }
                clean_runs += u32::from(run_ok);
            }
            let ok = tally.iter().all(|(_, _, n)| *n == repeat);
            if repeat > 1 {
                println!("\n== stability: runs matched per row, of {repeat}");
                for (table, row, n) in &tally {
                    println!(
                        "{table:<20} {row:<38} {n:>4}/{repeat}{}",
                        if *n == repeat { "" } else { "  <-- NOT STABLE" }
                    );
                }
                println!("all rows matched in {clean_runs}/{repeat} runs");
            }
            if !ok {
                bail!("some verdicts did not match");
            }
            Ok(())
        }
    }
}
