//! `cargo xtask …`: everything a fresh machine needs, in the project's own code.
mod bench;
mod fuzz;
mod image;
mod lint;
mod setup;
mod soak;
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
    /// The whole test suite: lint, unit tests, a short fuzz smoke of every
    /// target (`fuzz`, a few seconds each), then the root/kernel integration
    /// tests (network namespaces, real traffic, the real agent binary), then
    /// the kernel matrix (`vm`), then the multi-machine lab's fault table
    /// (`lab --multinode --faults`).
    Test,
    /// Fuzz the agent's decoders of untrusted input with cargo-fuzz
    /// (libFuzzer, nightly, AddressSanitizer): ring records (alone and as
    /// streams through the processor), proxy answers
    /// and their reassembly, DNS wire, ctnetlink, the config file, API
    /// requests, TLS ClientHello. Seeds in egress-agent/fuzz/corpus/ are read,
    /// new inputs kept in target/fuzz/corpus/, crashes in
    /// target/fuzz/artifacts/ (the run fails). Prints executions per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Run this input once through --target (reproduce a crash).
        #[arg(long, requires = "target")]
        replay: Option<PathBuf>,
        /// After fuzzing, fold the inputs that add coverage into the
        /// committed seeds (libFuzzer -merge=1), to be committed.
        #[arg(long, conflicts_with = "replay")]
        merge: bool,
    },
    /// The local lab demo: namespaces, the agent, every connect outcome,
    /// the watch table and a /metrics excerpt, then the routed gateway
    /// table (a `protocol: routed` hop with SNAT), the TLS table (an SNI
    /// gateway hop, a CONNECT tunnel and a TLS port with real TLS) and the
    /// NetworkPolicy table (default-deny with an allow-list, enforced by
    /// iptables); cleans up after itself.
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
        /// With --faults: instead of the single-host labs, the multi-machine
        /// lab: node A (app pod, ClusterIP DNAT), node B (hop-1 Squid pod)
        /// and the GCE VM (hop-2 Squid) on separate kernels (the host and
        /// TCG VMs of the kernel matrix), each with its own agent; NAT,
        /// origins, DNS and the Kubernetes API in host namespaces. Prints
        /// per fault what each agent said alone, what `explain --assemble`
        /// on node A said, and what was expected.
        #[arg(long, requires = "faults")]
        multinode: bool,
        /// Where the machines run, `node-a=K,node-b=K,gce=K`, K = `host` or
        /// a kernel of the matrix; exactly one on the host.
        #[arg(long, default_value = "node-a=host,node-b=6.12,gce=6.1", requires = "multinode")]
        machines: String,
        /// With --multinode: only the rows whose fault contains one of
        /// these (comma-separated, case-insensitive), e.g.
        /// `--rows "healthy request,hop2 down,origin refuses"`; default all.
        #[arg(long, value_delimiter = ',', requires = "multinode")]
        rows: Vec<String>,
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
    /// The soak (not part of `test`, which runs its 100-second form): the
    /// release agent as deployed under a few hundred connections a second
    /// through the chain lab, pod churn on the fake API server, transient
    /// units, API clients, conntrack flushes and restarts; logs RSS, fds,
    /// tracked flows, open sockets, conntrack entries, series and lost
    /// events; then stops the load and waits for the tracked flows to drain;
    /// fails on an RSS slope over 1 MiB / 10 min after warm-up, on fds or
    /// series that keep growing, or on flows that do not drain. Root; holds
    /// /tmp/egress-kernel.lock for its whole run.
    Soak(soak::SoakArgs),
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

/// The multi-machine lab's table once: the VM images its placement needs,
/// a fresh lab, the table printed with its wall time.
fn multinode(
    cfg: &egress_tests::multinode::MultiNodeConfig,
) -> anyhow::Result<Vec<egress_tests::multinode::Row>> {
    let t = std::time::Instant::now();
    let images: Vec<egress_tests::multinode::VmImage> = vm::lab::images(&cfg.vm_kernels())?
        .into_iter()
        .map(|i| egress_tests::multinode::VmImage {
            kernel: i.kernel,
            vmlinuz: i.vmlinuz,
            initramfs: i.initramfs,
        })
        .collect();
    println!();
    println!(
        "== multi-machine lab: node A ({}) -> node B ({}, hop-1 Squid pod) -> GCE VM ({}, hop-2 Squid) -> NAT -> origins; one agent per machine",
        cfg.node_a, cfg.node_b, cfg.gce
    );
    let rows = egress_tests::multinode::run(cfg.clone(), &images, false)?;
    egress_tests::multinode::print(&rows);
    println!(
        "multinode: {} of {} rows matched; wall time {:.0} s (images included)",
        rows.iter().filter(|r| r.ok).count(),
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(rows)
}

/// One single-host lab of `cargo xtask lab`: its table's rows.
type LabRun = fn() -> anyhow::Result<Vec<egress_tests::demo::DemoRow>>;

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
            if std::env::var_os("CI").is_some() {
                // A fresh clone never rebuilds: incremental state would only
                // cost disk (about 3 GiB), which CI machines are short of.
                // SAFETY: single-threaded at this point.
                unsafe { std::env::set_var("CARGO_INCREMENTAL", "0") };
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
            fuzz::run(&fuzz::FuzzOptions {
                seconds: fuzz::SMOKE_SECONDS,
                target: None,
                replay: None,
                merge: false,
            })?;
            cargo(&["build", "--package", "egress-agent"])?;
            // One test at a time: every root test runs an agent, which sees
            // the whole host's traffic (two labs at once would see each
            // other's). The soak's 100-second form (tests/soak.rs) is one of them.
            cargo(&["test", "--package", "egress-tests", "--", "--test-threads=1"])?;
            vm::run(&vm::VmOptions {
                kernels: vm::kernels::KERNELS.iter().map(|k| k.name.to_string()).collect(),
                host: true,
            })?;
            // SAFETY: single-threaded at this point.
            unsafe {
                std::env::set_var("EGRESS_AGENT_BIN", root().join("target/debug/egress-agent"))
            };
            let t = std::time::Instant::now();
            let rows = multinode(&egress_tests::multinode::MultiNodeConfig::default())?;
            println!("multinode lab: {:.0} s", t.elapsed().as_secs_f64());
            if rows.iter().any(|r| !r.passes()) {
                bail!("the multi-machine lab's table did not match");
            }
            println!("xtask test: all suites passed");
            Ok(())
        }
        Task::Fuzz { seconds, target, replay, merge } => {
            setup::ensure()?;
            fuzz::run(&fuzz::FuzzOptions { seconds, target, replay, merge })
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
        Task::Soak(args) => {
            setup::ensure()?;
            if !is_root() {
                bail!("the soak creates network namespaces and loads eBPF programs: run as root");
            }
            soak::run(args)
        }
        Task::BenchHoldWorker { n, addrs } => {
            egress_tests::bench::storm::hold_worker(&addrs, n, Duration::from_secs(300))
        }
        Task::BenchLoadWorker { index, rate, seconds } => {
            egress_tests::bench::load::worker(index, rate, seconds)
        }
        Task::Lab { duration, faults, repeat, multinode: true, machines, rows } => {
            setup::ensure()?;
            if !is_root() {
                bail!("the lab creates network namespaces, taps and VMs: run as root");
            }
            cargo(&["build", "--package", "egress-agent"])?;
            // SAFETY: single-threaded at this point.
            unsafe {
                std::env::set_var("EGRESS_AGENT_BIN", root().join("target/debug/egress-agent"))
            };
            let _ = (duration, faults);
            let mut cfg = egress_tests::multinode::MultiNodeConfig::default();
            cfg.place(&machines)?;
            cfg.rows = rows;
            let mut matched = vec![0u32; 0];
            let mut names = Vec::new();
            for i in 1..=repeat {
                if repeat > 1 {
                    println!("\n######## run {i} of {repeat}");
                }
                let rows = multinode(&cfg)?;
                matched.resize(rows.len(), 0);
                names = rows.iter().map(|r| r.fault).collect();
                for (m, r) in matched.iter_mut().zip(&rows) {
                    *m += u32::from(r.passes());
                }
            }
            if repeat > 1 {
                println!("\n== stability: runs matched per row, of {repeat}");
                for (n, m) in names.iter().zip(&matched) {
                    println!("{n:<38} {m:>4}/{repeat}");
                }
            }
            if matched.iter().any(|m| *m != repeat) {
                bail!("some rows of the multi-machine table did not match");
            }
            Ok(())
        }
        Task::Lab { duration, faults, repeat, .. } => {
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
                // The single-host labs after the demo: header, table, tally name.
                let labs: [(&str, &'static str, LabRun); 3] = [
                    (
                        "routed gateway lab: client -> gateway (SNAT to an egress IP) -> origin; client | gateway vantage",
                        "routed gateway",
                        egress_tests::routed_lab::run,
                    ),
                    (
                        "TLS lab: openssl s_client -> SNI gateway (HAProxy passthrough) / Squid CONNECT tunnel / TLS port -> s_server; handshake | client record | chain",
                        "tls",
                        egress_tests::sni_lab::run,
                    ),
                    (
                        "NetworkPolicy lab: pod -> router (default-deny + allow-list as iptables) -> outside; datapath | agent record",
                        "network policy",
                        egress_tests::netpol_lab::run,
                    ),
                ];
                for (header, table, lab) in labs {
                    println!("\n== {header}");
                    let rows = lab()?;
                    egress_tests::demo::print(&rows);
                    for r in &rows {
                        count(table, r.name, r.ok);
                        run_ok &= r.ok;
                    }
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
