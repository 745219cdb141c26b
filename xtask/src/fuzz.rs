//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets of
//! `egress-agent/fuzz/`, each for `--seconds`, on nightly with
//! AddressSanitizer. The crate is its own workspace (not a member of ours), built
//! into `target/fuzz` with `AYA_BUILD_SKIP=1` (the decoders need no kernel
//! programs). New inputs go to `target/fuzz/corpus/<target>` and the
//! committed seeds (`egress-agent/fuzz/corpus/<target>`) are only read;
//! a crash is kept in `target/fuzz/artifacts/<target>/` and fails the run,
//! naming the file to replay (`cargo xtask fuzz --target T --replay FILE`).
//! `--merge` folds the new inputs that add coverage into the committed seeds.
//! `cargo xtask test` runs every target for [`SMOKE_SECONDS`].
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{root, setup};

/// The targets, as `[[bin]]`s of egress-agent/fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "ring_decode",
    "ring_sequence",
    "proxy_answer",
    "proxy_reassembly",
    "dns_wire",
    "ctnetlink",
    "config",
    "api_request",
    "tls_client_hello",
];

/// Seconds per target in `cargo xtask test` (9 targets: about 1.5 minutes).
pub const SMOKE_SECONDS: u64 = 8;

pub struct FuzzOptions {
    pub seconds: u64,
    pub target: Option<String>,
    /// Run this input once (a crash to reproduce) instead of fuzzing.
    pub replay: Option<PathBuf>,
    /// Fold new inputs that add coverage into the committed seeds.
    pub merge: bool,
}

fn fuzz_dir() -> PathBuf {
    root().join("egress-agent/fuzz")
}

fn target_dir() -> PathBuf {
    root().join("target/fuzz")
}

/// `rustup run nightly cargo fuzz <sub> --fuzz-dir … --target-dir …`.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz", sub, "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(target_dir())
        .env("AYA_BUILD_SKIP", "1")
        .env("PATH", setup::tool_path())
        // The nightly toolchain's own rustc, not the caller's (as for the eBPF lint).
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(root());
    c
}

/// What one run of a target did.
struct Outcome {
    target: String,
    seconds: f64,
    execs: Option<u64>,
    corpus: usize,
    crash: Option<String>,
}

/// libFuzzer's final stats (`-print_final_stats=1`): executed units.
fn executions(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The artifact libFuzzer wrote for a crash, if it says so.
fn artifact(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_string()))
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).count()).unwrap_or(0)
}

fn run_target(t: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let scratch = target_dir().join("corpus").join(t);
    let artifacts = target_dir().join("artifacts").join(t);
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = fuzz_dir().join("corpus").join(t);
    let started = Instant::now();
    let out = cargo_fuzz("run")
        .arg(t)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-max_len=4096")
        .output()
        .with_context(|| format!("running cargo fuzz run {t}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let crash = (!out.status.success()).then(|| {
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let file = artifact(&stderr).unwrap_or_else(|| "(no artifact written)".into());
        format!("{file}\n{tail}")
    });
    Ok(Outcome {
        target: t.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        execs: executions(&stderr),
        corpus: files_in(&scratch) + files_in(&seeds),
        crash,
    })
}

/// libFuzzer's `-merge=1`: inputs of `target/fuzz/corpus/<t>` that reach
/// new edges are copied into the committed seeds `egress-agent/fuzz/corpus/<t>`
/// (edges only, `-use_counters=0`: hit counts would keep several times more
/// files for little more coverage).
fn merge(t: &str) -> anyhow::Result<()> {
    let seeds = fuzz_dir().join("corpus").join(t);
    let before = files_in(&seeds);
    let out = cargo_fuzz("run")
        .arg(t)
        .arg(&seeds)
        .arg(target_dir().join("corpus").join(t))
        .args(["--", "-merge=1", "-use_counters=0", "-max_len=4096"])
        .output()
        .with_context(|| format!("merging the corpus of {t}"))?;
    if !out.status.success() {
        bail!("merging the corpus of {t} failed ({})", out.status);
    }
    println!("{t}: {before} → {} committed seeds", files_in(&seeds));
    Ok(())
}

pub fn run(opts: &FuzzOptions) -> anyhow::Result<()> {
    setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match &opts.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    println!("+ cargo fuzz build (nightly, AddressSanitizer) into {}", target_dir().display());
    let st = cargo_fuzz("build").status().context("cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed ({st})");
    }
    if let Some(input) = &opts.replay {
        let [t] = targets[..] else { bail!("--replay needs --target") };
        let st = cargo_fuzz("run").arg(t).arg(input).status().context("replay")?;
        if !st.success() {
            bail!("{t} fails on {} ({st})", input.display());
        }
        println!("{t}: {} passes", input.display());
        return Ok(());
    }
    let mut outcomes = Vec::new();
    for t in targets {
        println!("+ fuzz {t} for {} s", opts.seconds);
        outcomes.push(run_target(t, opts.seconds)?);
    }
    println!("\n{:<18} {:>8} {:>12} {:>8}  RESULT", "TARGET", "SECONDS", "EXECUTIONS", "CORPUS");
    for o in &outcomes {
        println!(
            "{:<18} {:>8.1} {:>12} {:>8}  {}",
            o.target,
            o.seconds,
            o.execs.map_or_else(|| "?".into(), |n| n.to_string()),
            o.corpus,
            if o.crash.is_some() { "CRASH" } else { "ok" }
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if opts.merge && crashed.is_empty() {
        for o in &outcomes {
            merge(&o.target)?;
        }
    }
    for o in &crashed {
        println!("\n== {} crashed: {}", o.target, o.crash.as_deref().unwrap_or_default());
    }
    if !crashed.is_empty() {
        bail!(
            "{} fuzz target(s) crashed; reproduce with `cargo xtask fuzz --target T --replay FILE`",
            crashed.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_crates_bins_and_have_seeds() {
        let manifest =
            std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz Cargo.toml");
        let bins: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "egress-agent-fuzz")
            .collect();
        assert_eq!(bins, TARGETS);
        for t in TARGETS {
            assert!(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")).exists(), "{t}");
            assert!(files_in(&fuzz_dir().join("corpus").join(t)) > 0, "no seeds for {t}");
        }
    }

    #[test]
    fn reads_libfuzzer_stats_and_artifacts() {
        let err = "#123 DONE\nstat::number_of_executed_units: 98765\nstat::peak_rss_mb: 40\n";
        assert_eq!(executions(err), Some(98765));
        let crash = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='a/'; Test unit written to a/crash-abc\n";
        assert_eq!(artifact(crash).as_deref(), Some("a/crash-abc"));
    }
}
