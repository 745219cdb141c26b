//! The proxy-chain fault table: real Squid #1 → Squid #2 → NAT → origins
//! (the chain lab), the real agent with a chain configuration, every fault of
//! seed 003's error flowchart in turn, and the hop and reason the agent gave
//! for each. Used by `cargo xtask lab --faults` and by the integration test.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    Agent, AgentMode,
    agent::free_port,
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, DirectEgress, Hop, LabLink, wait_output},
};

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub fault: &'static str,
    pub expected: String,
    pub got: String,
    /// Seconds from the end of the client's request to the chain record.
    pub lag_s: f64,
    pub ok: bool,
}

enum Request {
    Chain(String),
    Direct(std::net::Ipv4Addr),
}

/// The agent configuration for a lab: hops matched by where clients reach
/// them and by what their processes are (the cgroups the Squids run in).
pub fn agent_config(cfg: &ChainLabConfig, hop1_cgroup: &TestCgroup, hop2: &TestCgroup) -> String {
    format!(
        "version: 1\nchain:\n  name: lab\n  hops:\n    - name: gke-squid\n      match:\n        addresses: [\"{}:{}\", \"{}:{}\"]\n        cgroup: \"{}\"\n    - name: gce-proxy\n      match:\n        address: \"{}:{}\"\n        host_unit: \"{}\"\ndestinations:\n  allow: [\"{}:{}\"]\n",
        cfg.cluster_ip, cfg.proxy_port, cfg.proxy_pod_ip, cfg.proxy_port,
        hop1_cgroup.path().file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        cfg.gce_ip, cfg.proxy_port, hop2.unit, cfg.healthy.name, cfg.origin_port
    )
}

/// Run the fault table on a fresh lab. Ok(rows); every row's `ok` says match.
pub fn run(mut cfg: ChainLabConfig, verbose: bool) -> anyhow::Result<Vec<Row>> {
    let hop1_cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 901)?;
    let hop2_cg = TestCgroup::new(Layout::Unit, 902)?;
    let client_cg = TestCgroup::new(Layout::Systemd { qos: None }, 903)?;
    cfg.hop1_cgroup = Some(hop1_cg.path().to_path_buf());
    cfg.hop2_cgroup = Some(hop2_cg.path().to_path_buf());
    // Every fault is its own failure, not an accumulation that makes Squid
    // mark its parent dead.
    cfg.peer_connect_fail_limit = 1000;
    let lab = ChainLab::new(cfg.clone()).context("chain lab")?;
    let dir = std::env::temp_dir().join(format!("eo-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("agent.yaml");
    std::fs::write(&conf, agent_config(&cfg, &hop1_cg, &hop2_cg))?;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut agent = Agent::start(AgentMode::Run { metrics, extra: vec!["--config".into(), conf.display().to_string()] })?;

    let healthy = cfg.healthy.name.clone();
    type Setup = Box<dyn Fn(&ChainLab) -> anyhow::Result<()>>;
    let none: fn(&ChainLab) -> anyhow::Result<()> = |_| Ok(());
    type Case<'a> = (&'static str, Setup, Request, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("healthy request", Box::new(none), Request::Chain(healthy.clone()), None),
        ("hop1 down (Squid pod stopped)", Box::new(|l: &ChainLab| l.hop1_down()), Request::Chain(healthy.clone()), Some(("gke-squid", "refused"))),
        ("hop1 blackholed", Box::new(|l: &ChainLab| l.hop1_blackhole()), Request::Chain(healthy.clone()), Some(("gke-squid", "timeout"))),
        ("hop1 ACL deny (403)", Box::new(none), Request::Chain(cfg.denied_at_hop1.clone()), Some(("gke-squid", "proxy_denied"))),
        ("hop2 down (VM Squid stopped)", Box::new(|l: &ChainLab| l.hop2_down()), Request::Chain(healthy.clone()), Some(("gce-proxy", "refused"))),
        ("hop2 blackholed", Box::new(|l: &ChainLab| l.hop2_blackhole()), Request::Chain(healthy.clone()), Some(("gce-proxy", "timeout"))),
        ("hop2 ACL deny (403)", Box::new(none), Request::Chain(cfg.denied_at_hop2.clone()), Some(("gce-proxy", "proxy_denied"))),
        ("origin refuses", Box::new(none), Request::Chain(cfg.refused.name.clone()), Some(("internet", "refused"))),
        ("origin blackholed", Box::new(none), Request::Chain(cfg.blackhole.name.clone()), Some(("internet", "timeout"))),
        ("NAT blackholed", Box::new(|l: &ChainLab| l.nat_blackhole()), Request::Chain(healthy.clone()), Some(("internet", "timeout"))),
        ("lossy hop (hop1->hop2 loses a SYN)", Box::new(|l: &ChainLab| l.lossy_syn(LabLink::NodeGce, 2)), Request::Chain(healthy.clone()), Some(("gce-proxy", "retransmits"))),
        ("proxy bypass (direct)", Box::new(|l: &ChainLab| l.set_direct_egress(DirectEgress::Drop)), Request::Direct(cfg.healthy.ip), Some(("direct", "bypass"))),
    ];
    let mut rows = Vec::new();
    for (fault, setup, req, expect) in cases {
        lab.restore()?;
        lab.hop_up(Hop::One)?;
        lab.hop_up(Hop::Two)?;
        setup(&lab)?;
        let args = match &req {
            Request::Chain(host) => lab.curl_via_chain_args(host, "/"),
            Request::Direct(ip) => lab.curl_direct_args(*ip, "/"),
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let gated = lab.spawn_client_gated(&refs)?;
        client_cg.enter(gated.pid())?;
        let mut child = gated.release()?;
        let out = wait_output(&mut child, cfg.client_timeout + Duration::from_secs(5))?;
        let done = Instant::now();
        let pid = u64::from(child.id());
        let want_target = match &req {
            Request::Chain(host) => Some(format!("{host}:{}", cfg.origin_port)),
            Request::Direct(_) => None,
        };
        let rec = agent.wait_for(Duration::from_secs(10), |v| {
            // No target when the first connect failed before any CONNECT line.
            v["record"] == "chain" && v["pid"].as_u64() == Some(pid) && (v["target"].is_null() || want_target.as_deref().is_none_or(|t| v["target"].as_str() == Some(t)))
        });
        let lag = done.elapsed().as_secs_f64();
        let expected = expect.map_or("ok".to_string(), |(h, r)| format!("{} at {h}: {r}", if r == "retransmits" { "degraded" } else { "failed" }));
        let got = match &rec {
            Ok(v) => match (v["verdict"].as_str(), v["failed_hop"].as_str(), v["reason"].as_str()) {
                (Some("ok"), _, _) => "ok".to_string(),
                (Some(verdict), Some(h), Some(r)) => format!("{verdict} at {h}: {r}"),
                (verdict, _, _) => verdict.unwrap_or("?").to_string(),
            },
            Err(_) => "(no chain record)".to_string(),
        };
        if verbose {
            eprintln!("{fault}: client exit {:?}; chain {}", out.exit_code(), rec.as_ref().map(Value::to_string).unwrap_or_else(|e| format!("{e:#}")));
        }
        rows.push(Row { fault, ok: got == expected, expected, got, lag_s: lag });
    }
    lab.restore()?;
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);
    Ok(rows)
}

pub fn print(rows: &[Row]) {
    println!("{:<36} {:<38} {:<38} {:>6}  MATCH", "FAULT INJECTED", "EXPECTED", "AGENT SAID", "LAG");
    for r in rows {
        println!("{:<36} {:<38} {:<38} {:>5.1}s  {}", r.fault, r.expected, r.got, r.lag_s, if r.ok { "yes" } else { "NO" });
    }
}
