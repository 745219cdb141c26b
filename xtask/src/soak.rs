//! `cargo xtask soak --duration D` (or `--minutes N`): the soak
//! (tests/src/soak) against the release agent; prints the per-sample table,
//! the fit after warm-up, the tracked flows draining after the load stops,
//! the series that appeared, the drivers' tallies; writes it to
//! target/soak/; with `--record` appends it to BENCHMARKS.md. Fails when the
//! soak does.
use std::time::Duration;

use anyhow::{Context as _, bail};
use egress_tests::soak::{self, SoakOptions};

use crate::{
    bench::{machine, sh},
    cargo, root,
};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the load runs, e.g. `12m`, `90s`, `1h30m` (a bare number
    /// is minutes); the drain (up to 2 min, 45 s below 5 min) comes after.
    #[arg(long, value_parser = parse_duration, conflicts_with = "minutes")]
    duration: Option<Duration>,
    /// The same in minutes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: Option<u64>,
    /// Traffic multiplier: 1 is ≈240 connections/s and 20 lookups/s.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Restart the agent at these minutes (comma-separated; default 10 % and
    /// 20 % of the run). Samples are fitted from 5 minutes after the last.
    #[arg(long, value_delimiter = ',')]
    restart_at: Vec<f64>,
    /// Use the debug build (target/debug) instead of building release.
    #[arg(long)]
    debug: bool,
    /// Use the agent already built in target/<profile> (no cargo build).
    #[arg(long)]
    no_build: bool,
    /// Append the result to BENCHMARKS.md.
    #[arg(long)]
    record: bool,
}

pub fn run(a: SoakArgs) -> anyhow::Result<()> {
    let profile = if a.debug { "debug" } else { "release" };
    if a.no_build {
    } else if a.debug {
        cargo(&["build", "--package", "egress-agent"])?;
    } else {
        cargo(&["build", "--release", "--package", "egress-agent"])?;
    }
    let bin = root().join("target").join(profile).join("egress-agent");
    if !bin.exists() {
        bail!("{} does not exist (drop --no-build)", bin.display());
    }
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("EGRESS_AGENT_BIN", &bin) };
    let duration = match (a.duration, a.minutes) {
        (Some(d), _) => d,
        (None, Some(m)) => Duration::from_secs(m * 60),
        (None, None) => Duration::from_secs(30 * 60),
    };
    let mut opts = SoakOptions::new(duration);
    opts.rate = a.rate;
    if !a.restart_at.is_empty() {
        opts.restarts = a.restart_at.iter().map(|m| Duration::from_secs_f64(m * 60.0)).collect();
    }
    let commit = sh("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"]);
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M"]);
    let report = soak::run(&opts)?;
    let text = report.render();
    println!("{text}");
    let file =
        root().join("target/soak").join(format!("soak-{}.md", date.replace([' ', ':'], "-")));
    report.write(&file)?;
    println!("written to {}", file.display());
    if a.record {
        let path = root().join("BENCHMARKS.md");
        let mut md = std::fs::read_to_string(&path).context("BENCHMARKS.md")?;
        md.push_str(&format!(
            "\n### Soak {date} UTC, {commit}, {}, {} agent, {}, kernel {}\n\n`cargo xtask soak --duration {} --rate {}`\n\n{text}",
            human(duration),
            profile,
            machine(),
            sh("uname", &["-r"]),
            human(duration),
            a.rate
        ));
        std::fs::write(&path, md).context("BENCHMARKS.md")?;
        println!("appended to BENCHMARKS.md");
    }
    if !report.failures.is_empty() {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// `12m`, `90s`, `1h30m`, `1.5h`; a bare number is minutes.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(m) = s.parse::<f64>() {
        return (m > 0.0 && m <= 1440.0)
            .then(|| Duration::from_secs_f64(m * 60.0))
            .ok_or_else(|| format!("{s}: 0 < minutes <= 1440"));
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(end);
        let v: f64 = num.parse().map_err(|_| format!("{s}: expected e.g. 12m, 90s, 1h30m"))?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        total += v * match unit {
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s}: unit {u:?} (s, m, h)")),
        };
        rest = tail;
    }
    (10.0..=86_400.0)
        .contains(&total)
        .then(|| Duration::from_secs_f64(total))
        .ok_or_else(|| format!("{s}: between 10 s and a day"))
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (m, 0) => format!("{m}m"),
        (0, s) => format!("{s}s"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12m"), Ok(Duration::from_secs(720)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(720)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5x").is_err() && parse_duration("1s").is_err());
        assert_eq!(human(Duration::from_secs(5400)), "90m");
        assert_eq!(human(Duration::from_secs(150)), "2m30s");
    }
}
