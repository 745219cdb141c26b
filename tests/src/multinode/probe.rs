//! The table's last row: no application traffic, node A's agent probing
//! through the chain every interval (from the app pod's namespace), and a
//! hop-2 outage, which node A's probe metrics must name within two probe
//! intervals; node B's agent sees the probe's connections fail upstream;
//! the VM is not reached; the assembled view joins them.
use std::time::{Duration, Instant};

use super::{
    FaultModel, Vantage,
    lab::Lab,
    table::Row,
    views::{assembled, hop_view},
};
use crate::{agent::metric_sum, chain_lab::Hop};

/// `label="value"` of a Prometheus sample line.
fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    line[start..].split('"').next()
}

/// The row's fault.
pub const PROBE_ROW: &str = "no app traffic: hop2 down, probe";

pub fn probe_row(lab: &mut Lab) -> anyhow::Result<Row> {
    let fault = PROBE_ROW;
    let model = FaultModel::new("failed at gce-proxy: refused", Vantage::Hop1);
    let c = lab.cfg.chain.clone();
    let interval = lab.cfg.probe_interval;
    let target = format!("{}:{}", c.healthy.name, c.origin_port);
    let success = |t: &str| metric_sum(t, "egress_probe_success", &[("target", &target)]);
    let up_by = Instant::now() + 6 * interval;
    while success(&lab.agents[0].metrics(lab.a())?) < 1.0 {
        anyhow::ensure!(
            Instant::now() < up_by,
            "node A's probe never succeeded on the healthy chain:\n{}",
            lab.agents[0].stderr(lab.a())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.poll()?;
    let mark = [0, 1, 2].map(|i| lab.agents[i].records.len());
    lab.hop_down(Hop::Two)?;
    let t0 = Instant::now();
    let mut a_said = "(not detected)".to_string();
    while t0.elapsed() < 4 * interval {
        let text = lab.agents[0].metrics(lab.a())?;
        let failure = text.lines().find(|l| {
            l.starts_with("egress_probe_last_failure_hop{")
                && label(l, "target") == Some(target.as_str())
        });
        if success(&text) == 0.0
            && let Some(l) = failure
        {
            a_said = format!(
                "failed at {}: {}",
                label(l, "hop").unwrap_or("?"),
                label(l, "reason").unwrap_or("?")
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let lag = t0.elapsed();
    // Let a failing probe's records reach every agent.
    std::thread::sleep(interval);
    lab.poll()?;
    let links: Vec<(String, String)> = lab.agents[0].records[mark[0]..]
        .iter()
        .filter(|v| {
            v["record"] == "flow"
                && v["synthetic"] == true
                && v["verdict"] == "failed"
                && v["leg"].as_str().is_some_and(|l| l.starts_with("client->"))
        })
        .filter_map(super::views::connect_link)
        .collect();
    let mut notes = vec![format!(
        "node A's probe metric named the outage {:.1} s after it (bound {:.1} s)",
        lag.as_secs_f64(),
        2.0 * interval.as_secs_f64()
    )];
    let b_said = hop_view(lab, 1, mark[1], links, model.expect(Vantage::Hop1), &mut notes)?;
    let g_said = hop_view(lab, 2, mark[2], Vec::new(), model.expect(Vantage::Hop2), &mut notes)?;
    // The newest attempt is a probe's (nothing else runs).
    let (asm, note) = assembled(lab, &target, t0.elapsed() + interval, &|_| true)?;
    notes.extend(note);
    let alone = [
        (model.expect(Vantage::Client), a_said),
        (model.expect(Vantage::Hop1), b_said),
        (model.expect(Vantage::Hop2), g_said),
    ];
    let ok = alone.iter().all(|(e, s)| super::table::matches(e, s))
        && asm == model.full
        && lag <= 2 * interval;
    Ok(Row {
        fault,
        alone,
        assembled: (model.full, asm),
        notes,
        seconds: t0.elapsed().as_secs_f64(),
        ok,
    })
}
