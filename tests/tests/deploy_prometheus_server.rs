//! A real Prometheus server scrapes the real agent during a chain-lab run and
//! fires the hop alert of deploy/prometheus/rules.yml for a hop fault,
//! reported through its HTTP API (/api/v1/alerts); healthy traffic before it
//! fires nothing.
//!
//! Prometheus is Debian's `prometheus` (installed by `cargo xtask setup`),
//! started on loopback with a temporary config, TSDB directory and a TEST
//! COPY of the rules in which every `for:` is 5s instead of minutes (the only
//! change; expressions, windows and thresholds are the real ones). Scrape and
//! evaluation every 1 s. Killed by PID at the end.
use std::{
    net::SocketAddr,
    sync::{Mutex, atomic::AtomicBool},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::free_port,
    alert_lab::{JOB, Request, Rig, client_loop},
    chain_lab::Hop,
    manifests::deploy_dir,
    prom_server::{PromServer, rules_with_short_for},
    require_root,
};
use serde_json::Value;

fn firing(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| format!("{}{}", a["labels"]["alertname"].as_str().unwrap_or("?"), a["labels"]))
        .collect()
}

#[test]
fn prometheus_fires_hop_down_for_a_stopped_hop() {
    require_root!();
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/rules.yml")).expect("rules");
    let rig = Rig::new(971).expect("lab");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let agent = Agent::start(AgentMode::Run { metrics, extra: rig.agent_args() }).expect("agent");
    let prom = PromServer::start(metrics, JOB, &rules_with_short_for(&rules, "5s"), "1s")
        .expect("prometheus");
    eprintln!("prometheus on {} (dir {})", prom.addr, prom.dir().display());

    let current = Mutex::new(Some(Request::Chain(rig.cfg.healthy.name.clone())));
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| client_loop(&rig.lab, &rig.client_cg, &rig.cfg, &current, &stop));
        }
        let result = (|| -> anyhow::Result<(Vec<String>, Value, f64)> {
            // Healthy traffic for 20 s: the target is up, nothing fires.
            std::thread::sleep(Duration::from_secs(20));
            let up = prom.query("up{job=\"egress-agent\"}")?;
            anyhow::ensure!(
                up.len() == 1 && up[0]["value"][1] == "1",
                "target up: {up:?}\n{}",
                prom.log()
            );
            let ok =
                prom.query("sum(egress_connections_total{hop=\"gke-squid\",result=\"ok\"})")?;
            eprintln!(
                "healthy: up=1, ok connects to gke-squid so far: {}",
                ok.first().map_or(Value::Null, |v| v["value"][1].clone())
            );
            let healthy_firing = firing(&prom.alerts()?);
            // Fault: hop 2's Squid stopped; clients keep requesting.
            rig.lab.hop_down(Hop::Two)?;
            let t = Instant::now();
            let deadline = t + Duration::from_secs(120);
            loop {
                let alerts = prom.alerts()?;
                if let Some(a) = alerts.iter().find(|a| {
                    a["state"] == "firing"
                        && a["labels"]["alertname"] == "EgressHopDown"
                        && a["labels"]["hop"] == "gce-proxy"
                }) {
                    return Ok((healthy_firing, a.clone(), t.elapsed().as_secs_f64()));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "EgressHopDown{{hop=gce-proxy}} not firing within 120 s; alerts: {alerts:?}\n{}",
                    prom.log()
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        })();
        *current.lock().expect("lock") = None;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    });
    let (healthy_firing, alert, after) = outcome.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("/api/v1/alerts, {after:.0} s after hop 2 went down: {alert}");
    assert!(healthy_firing.is_empty(), "healthy traffic fired alerts: {healthy_firing:?}");
    assert_eq!(alert["labels"]["severity"], "critical");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or("");
    assert!(summary.contains("gce-proxy"), "the summary names the hop: {summary}");
    let others = firing(&prom.alerts().expect("alerts"));
    assert!(
        others.iter().all(|a| !a.contains("gke-squid") && !a.contains("internet")),
        "only the broken hop is blamed: {others:?}"
    );
    drop(prom);
    assert!(agent.stop().expect("stop"));
    rig.lab.restore().expect("restore");
}
