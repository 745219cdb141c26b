//! `cargo xtask vm`: the kernel matrix. Pinned Debian kernels boot under
//! QEMU/TCG with a busybox initramfs that runs the kernel-facing suite
//! (tests/src/bin/egress-kernel-suite); the host kernel runs the same suite
//! in a network namespace of its own. Prints kernel × test and the
//! verifier instruction counts; fails on any failure.
mod boot;
mod initramfs;
pub mod kernels;
pub mod lab;
mod matrix;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// Wall-clock limit per VM (TCG; a healthy run takes well under a minute).
const VM_LIMIT: Duration = Duration::from_secs(300);
/// VMs at once: each is one TCG thread; the machines we run on have two cores.
const PARALLEL: usize = 2;
/// The host run waits for the shared kernel lock; bounded all the same.
const HOST_LIMIT: Duration = Duration::from_secs(900);

pub struct VmOptions {
    pub kernels: Vec<String>,
    pub host: bool,
}

pub fn run(opts: &VmOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let wanted: Vec<kernels::Kernel> =
        opts.kernels.iter().map(|k| kernels::find(k.trim())).collect::<anyhow::Result<_>>()?;
    let bin_dir = build_static(&["egress-agent", "egress-tests"], false)?;
    let (agent, suite) = (bin_dir.join("egress-agent"), bin_dir.join("egress-kernel-suite"));
    let work = super::root().join("target/vm");
    std::fs::create_dir_all(&work)?;
    let base = initramfs::Base::new(&agent, &suite).context("collecting the initramfs contents")?;
    let mut jobs = Vec::new();
    for k in &wanted {
        let deb = kernels::fetch(k)?;
        let x = kernels::extract(k, &deb)?;
        let mods = kernels::load_order(&x.modules, kernels::MODULES)?;
        let img = work.join(format!("initramfs-{}.cpio", k.name));
        base.pack(&mods, &img)?;
        println!("vm: {} ({}) packed with {} modules", k.name, x.release, mods.len());
        jobs.push((
            k.name.to_string(),
            x.vmlinuz,
            img,
            work.join(format!("console-{}.log", k.name)),
        ));
    }
    let mut cols = boot_all(jobs);
    if opts.host {
        cols.push(host_column(&suite, &agent, &work.join("console-host.log")));
    }
    let text = matrix::render(&cols);
    println!("\n== kernel matrix ({:.0} s)\n{text}", started.elapsed().as_secs_f64());
    std::fs::write(work.join("matrix.txt"), &text)?;
    let failed: Vec<&str> = cols.iter().filter(|c| c.failed()).map(|c| c.kernel.as_str()).collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed on {} (consoles in {})", failed.join(", "), work.display());
    }
    Ok(())
}

/// Build the binaries of `packages` static, against musl (the kernel
/// matrix's initramfs and the container image `FROM scratch` both need a
/// binary without a dynamic loader); returns the directory they are in.
pub fn build_static(packages: &[&str], release: bool) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build", "--target", MUSL];
    for p in packages {
        args.extend(["--package", p]);
    }
    args.push("--bins");
    if release {
        args.push("--release");
    }
    super::cargo(&args)?;
    Ok(super::root().join("target").join(MUSL).join(if release { "release" } else { "debug" }))
}

type Job = (String, PathBuf, PathBuf, PathBuf);

/// Boot every job, PARALLEL at a time; columns in job order.
fn boot_all(jobs: Vec<Job>) -> Vec<matrix::Column> {
    let n = jobs.len();
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(vec![None; n]));
    let workers: Vec<_> = (0..PARALLEL.min(n))
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || {
                while let Some((i, (name, kernel, img, log))) =
                    queue.lock().ok().and_then(|mut q| q.pop())
                {
                    let col = match boot::boot(&kernel, &img, &log, VM_LIMIT) {
                        Ok(c) => {
                            println!(
                                "vm: {name} finished in {:.0} s{}",
                                c.seconds,
                                if c.timed_out { " (TIMEOUT)" } else { "" }
                            );
                            matrix::parse(
                                &name,
                                &c.text,
                                c.timed_out
                                    .then(|| format!("timed out after {} s", VM_LIMIT.as_secs())),
                            )
                        }
                        Err(e) => matrix::parse(&name, "", Some(format!("{e:#}"))),
                    };
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(col);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let r = results.lock().map(|r| r.clone()).unwrap_or_default();
    r.into_iter().flatten().collect()
}

/// The same suite on this machine's kernel, in its own network namespace.
fn host_column(suite: &Path, agent: &Path, log: &Path) -> matrix::Column {
    let res = (|| -> anyhow::Result<(String, Option<String>)> {
        let out = std::fs::File::create(log)?;
        let mut child = Command::new(suite)
            .arg("--own-netns")
            .env("EGRESS_AGENT_BIN", agent)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("running the suite on the host")?;
        let start = Instant::now();
        let mut problem = None;
        while child.try_wait()?.is_none() {
            if start.elapsed() > HOST_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                problem = Some(format!("timed out after {} s", HOST_LIMIT.as_secs()));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok((std::fs::read_to_string(log)?, problem))
    })();
    match res {
        Ok((text, problem)) => matrix::parse("host", &text, problem),
        Err(e) => matrix::parse("host", "", Some(format!("{e:#}"))),
    }
}
