//! The fault table's last row: the agent's own probe, with no application
//! traffic, must name a hop-2 outage within two probe intervals.
use std::time::{Duration, Instant};

use super::{Row, native_view};
use crate::{Agent, chain_lab::ChainLab};

/// `label="value"` of a Prometheus sample line.
fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    line[start..].split('"').next()
}

/// Wait (bounded) for the probe to succeed, stop Squid #2, and time how long
/// the probe metrics take to name the hop that broke.
pub(super) fn probe_row(
    lab: &ChainLab,
    agent: &mut Agent,
    target: &str,
    interval: Duration,
    verbose: bool,
) -> anyhow::Result<Row> {
    let fault = "no app traffic: hop2 down, probe";
    let expected = "failed at gce-proxy: refused".to_string();
    let success =
        |text: &str| crate::agent::metric_sum(text, "egress_probe_success", &[("target", target)]);
    let up_by = Instant::now() + 6 * interval;
    while success(&agent.http_get("/metrics")?) < 1.0 {
        anyhow::ensure!(
            Instant::now() < up_by,
            "the probe never succeeded on the healthy chain:\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.hop2_down()?;
    let t0 = Instant::now();
    let mut got = "(not detected)".to_string();
    while t0.elapsed() < 4 * interval {
        let text = agent.http_get("/metrics")?;
        let failure = text.lines().find(|l| {
            l.starts_with("egress_probe_last_failure_hop{") && label(l, "target") == Some(target)
        });
        if success(&text) == 0.0
            && let Some(l) = failure
        {
            got = format!(
                "failed at {}: {}",
                label(l, "hop").unwrap_or("?"),
                label(l, "reason").unwrap_or("?")
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lag = t0.elapsed().as_secs_f64();
    if verbose {
        eprintln!(
            "{fault}: {got} after {lag:.1}s; probe records: {}",
            agent
                .records
                .iter()
                .map(native_view)
                .filter(|v| v["synthetic"] == true && v["record"] == "chain")
                .count()
        );
    }
    let limit = 2.0 * interval.as_secs_f64();
    // The probe runs on this node: its own client leg is the same view.
    Ok(Row {
        fault,
        ok: got == expected && lag <= limit,
        client_expected: expected.clone(),
        client_got: got.clone(),
        expected,
        got,
        lag_s: lag,
        lag_limit_s: limit,
        client_pid: 0,
        client_cgroup: String::new(),
        lines: Vec::new(),
    })
}
