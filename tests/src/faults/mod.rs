//! The proxy-chain fault table: real Squid #1 → Squid #2 → NAT → origins
//! (the chain lab), the real agent with a chain configuration, every fault of
//! seed 003's error flowchart in turn (DNS included: the proxy's name, the
//! origin's name at the VM proxy, the resolver), and the hop and reason the
//! agent gave for each; then a period without application traffic in which
//! the agent's own probe must find a hop-2 outage within two probe intervals.
//! Used by `cargo xtask lab --faults` and by the integration tests.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

mod evidence;
mod probe;

use evidence::{client_evidence, no_record};
pub(crate) use evidence::{client_view, leg_summary};
use probe::probe_row;

use crate::{
    Agent, AgentMode,
    agent::free_port,
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, DirectEgress, Hop, LabLink, wait_output},
};

/// The client-vantage column where the agent writes ECS lines.
const NOT_READ_ECS: &str = "(not read from ECS lines)";

/// How the agent writes its records on stdout during the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// `--log-flows`: every record in its own JSON.
    Native,
    /// As deployed: `--log-records audit --log-format ecs` (no ok records).
    /// Rows are judged on the ECS lines, read back through [`native_view`].
    Ecs,
}

impl Log {
    /// The agent's flags for this mode.
    pub fn agent_mode(self, metrics: SocketAddr, extra: Vec<String>) -> AgentMode {
        match self {
            Self::Native => AgentMode::Run { metrics, extra },
            Self::Ecs => {
                let mut e = vec![
                    "--log-records".into(),
                    "audit".into(),
                    "--log-format".into(),
                    "ecs".into(),
                    "--api-socket".into(),
                    crate::agent::api_socket_for(&metrics).display().to_string(),
                ];
                e.extend(extra);
                AgentMode::Daemon { metrics, extra: e }
            }
        }
    }
}

/// An ECS line as the native fields the table reads (`record`, `pid`,
/// `target`, `verdict`, `failed_hop`, `reason`, `hop`, `leg`, `name`,
/// `cgroup`, `synthetic`); a native record as it is.
pub fn native_view(v: &Value) -> Value {
    let Some(e) = v.get("egress").filter(|_| v.get("ecs").is_some()) else { return v.clone() };
    let mut n = serde_json::Map::new();
    for k in
        ["record", "target", "verdict", "failed_hop", "reason", "hop", "leg", "cgroup", "synthetic"]
    {
        if let Some(x) = e.get(k) {
            n.insert(k.into(), x.clone());
        }
    }
    if let Some(pid) = v.get("process").and_then(|p| p.get("pid")) {
        n.insert("pid".into(), pid.clone());
    }
    if let Some(name) = v.get("dns").and_then(|d| d.get("question")).and_then(|q| q.get("name")) {
        n.insert("name".into(), name.clone());
    }
    Value::Object(n)
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub fault: &'static str,
    pub expected: String,
    pub got: String,
    /// What the client's node alone can say (`"vantage":"client"` on the
    /// client leg's record), and what it should: the same as the full view
    /// wherever the evidence reaches the client.
    pub client_expected: String,
    pub client_got: String,
    /// Seconds from the end of the client's request to the chain (or DNS)
    /// record; for the probe row, from the outage to its detection.
    pub lag_s: f64,
    /// The bound `lag_s` must keep.
    pub lag_limit_s: f64,
    pub ok: bool,
    /// The client's pid and cgroup, and the agent's stdout lines from the
    /// row's start to the next row's (later lines of this row's request
    /// are in [`Run::lines`]).
    pub client_pid: u64,
    pub client_cgroup: String,
    pub lines: Vec<Value>,
}

/// A run of the table: its rows, and every line the table's agent wrote.
pub struct Run {
    pub rows: Vec<Row>,
    pub lines: Vec<Value>,
}

enum Request {
    /// Through the ClusterIP.
    Chain(String),
    /// Through the proxy given by name (resolved by the client first).
    ViaName(String),
    Direct(std::net::Ipv4Addr),
}

/// Where the verdict of a row is read: the chain record of the client's
/// request, or (when the request never reached a proxy) the DNS record of
/// the client's failed lookup of the proxy's name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Chain,
    Dns,
}

/// Seconds a verdict may trail the client's view of the failure.
const LAG_LIMIT_S: f64 = 2.0;
/// The agent's DNS timeout in the lab: the client's resolver gives up after
/// one try of 1 s (resolv.conf), the agent a little sooner.
const LAB_DNS_TIMEOUT: &str = "1s";

/// The agent configuration for a lab: hops matched by where clients reach
/// them and by what their processes are (the cgroups the Squids run in).
pub fn agent_config(cfg: &ChainLabConfig, hop1_cgroup: &TestCgroup, hop2: &TestCgroup) -> String {
    format!(
        "version: 1\nchain:\n  name: lab\n  hops:\n    - name: gke-squid\n      via_names: [\"{}\"]\n      match:\n        addresses: [\"{}:{}\", \"{}:{}\"]\n        names: [\"{}\"]\n        cgroup: \"{}\"\n    - name: gce-proxy\n      via_names: [\"{}\"]\n      match:\n        address: \"{}:{}\"\n        host_unit: \"{}\"\ndestinations:\n  allow: [\"{}:{}\"]\ndns:\n  timeout: {LAB_DNS_TIMEOUT}\n  names: [\"{}\", \"{}\"]\n",
        cfg.hop1_hostname,
        cfg.cluster_ip,
        cfg.proxy_port,
        cfg.proxy_pod_ip,
        cfg.proxy_port,
        cfg.proxy_name,
        hop1_cgroup.path().file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        cfg.hop2_hostname,
        cfg.gce_ip,
        cfg.proxy_port,
        hop2.unit,
        cfg.healthy.name,
        cfg.origin_port,
        cfg.proxy_name,
        cfg.healthy.name
    )
}

/// [`agent_config`] plus a probe of the healthy origin through the
/// ClusterIP, from the app pod's network namespace.
pub fn agent_config_with_probe(
    cfg: &ChainLabConfig,
    hop1: &TestCgroup,
    hop2: &TestCgroup,
    app_netns: &std::path::Path,
    interval: Duration,
) -> String {
    format!(
        "{}probes:\n  targets: [\"{}:{}\"]\n  interval: {}ms\n  timeout: {}ms\n  netns: \"{}\"\n",
        agent_config(cfg, hop1, hop2),
        cfg.healthy.name,
        cfg.origin_port,
        interval.as_millis(),
        interval.as_millis(),
        app_netns.display()
    )
}

/// Run the fault table on a fresh lab. Ok(rows); every row's `ok` says match.
pub fn run(cfg: ChainLabConfig, verbose: bool) -> anyhow::Result<Vec<Row>> {
    Ok(run_logging(cfg, verbose, Log::Native, Duration::ZERO)?.rows)
}

/// [`run`] with the agent writing `log`; after the last row the agent keeps
/// running `settle` longer (for lines it holds), then its lines are returned.
pub fn run_logging(
    mut cfg: ChainLabConfig,
    verbose: bool,
    log: Log,
    settle: Duration,
) -> anyhow::Result<Run> {
    let _kernel = crate::kernel_lock::KernelLock::take()?;
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
    let mut agent =
        Agent::start(log.agent_mode(metrics, vec!["--config".into(), conf.display().to_string()]))?;

    let healthy = cfg.healthy.name.clone();
    type Setup = Box<dyn Fn(&ChainLab) -> anyhow::Result<()>>;
    let none: fn(&ChainLab) -> anyhow::Result<()> = |_| Ok(());
    let proxy_name = cfg.proxy_name.clone();
    use Source::{Chain as C, Dns as D};
    type Case<'a> = (&'static str, Setup, Request, Option<(&'a str, &'a str)>, Source);
    let cases: Vec<Case<'_>> = vec![
        ("healthy request", Box::new(none), Request::Chain(healthy.clone()), None, C),
        (
            "healthy, proxy by name (DNS)",
            Box::new(none),
            Request::ViaName(healthy.clone()),
            None,
            C,
        ),
        (
            "hop1 down (Squid pod stopped)",
            Box::new(|l: &ChainLab| l.hop1_down()),
            Request::Chain(healthy.clone()),
            Some(("gke-squid", "refused")),
            C,
        ),
        (
            "hop1 blackholed",
            Box::new(|l: &ChainLab| l.hop1_blackhole()),
            Request::Chain(healthy.clone()),
            Some(("gke-squid", "timeout")),
            C,
        ),
        (
            "hop1 ACL deny (403)",
            Box::new(none),
            Request::Chain(cfg.denied_at_hop1.clone()),
            Some(("gke-squid", "proxy_denied")),
            C,
        ),
        (
            "hop2 down (VM Squid stopped)",
            Box::new(|l: &ChainLab| l.hop2_down()),
            Request::Chain(healthy.clone()),
            Some(("gce-proxy", "refused")),
            C,
        ),
        (
            "hop2 blackholed",
            Box::new(|l: &ChainLab| l.hop2_blackhole()),
            Request::Chain(healthy.clone()),
            Some(("gce-proxy", "timeout")),
            C,
        ),
        (
            "hop2 ACL deny (403)",
            Box::new(none),
            Request::Chain(cfg.denied_at_hop2.clone()),
            Some(("gce-proxy", "proxy_denied")),
            C,
        ),
        (
            "origin refuses",
            Box::new(none),
            Request::Chain(cfg.refused.name.clone()),
            Some(("internet", "refused")),
            C,
        ),
        (
            "origin blackholed",
            Box::new(none),
            Request::Chain(cfg.blackhole.name.clone()),
            Some(("internet", "timeout")),
            C,
        ),
        (
            "NAT blackholed",
            Box::new(|l: &ChainLab| l.nat_blackhole()),
            Request::Chain(healthy.clone()),
            Some(("internet", "timeout")),
            C,
        ),
        (
            "lossy hop (hop1->hop2 loses a SYN)",
            Box::new(|l: &ChainLab| l.lossy_syn(LabLink::NodeGce, 2)),
            Request::Chain(healthy.clone()),
            Some(("gce-proxy", "retransmits")),
            C,
        ),
        (
            "proxy bypass (direct)",
            Box::new(|l: &ChainLab| l.set_direct_egress(DirectEgress::Drop)),
            Request::Direct(cfg.healthy.ip),
            Some(("direct", "bypass")),
            C,
        ),
        (
            "proxy name does not resolve",
            Box::new(move |l: &ChainLab| l.dns_remove(&proxy_name)),
            Request::ViaName(healthy.clone()),
            Some(("gke-squid", "dns_failed")),
            D,
        ),
        (
            "origin name NXDOMAIN at hop2",
            Box::new({
                let h = healthy.clone();
                move |l: &ChainLab| l.dns_remove(&h)
            }),
            Request::Chain(healthy.clone()),
            Some(("gce-proxy", "dns_failed")),
            C,
        ),
        (
            "resolver down",
            Box::new(|l: &ChainLab| l.resolver_down()),
            Request::ViaName(healthy),
            Some(("gke-squid", "dns_failed")),
            D,
        ),
    ];
    let mut rows = Vec::new();
    for (fault, setup, req, expect, source) in cases {
        lab.restore()?;
        lab.hop_up(Hop::One)?;
        lab.hop_up(Hop::Two)?;
        setup(&lab)?;
        let args = match &req {
            Request::Chain(host) => lab.curl_via_chain_args(host, "/"),
            Request::ViaName(host) => lab.curl_via_name_args(host, "/"),
            Request::Direct(ip) => lab.curl_direct_args(*ip, "/"),
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        agent.poll();
        let first_line = agent.records.len();
        let gated = lab.spawn_client_gated(&refs)?;
        client_cg.enter(gated.pid())?;
        let mut child = gated.release()?;
        let out = wait_output(&mut child, cfg.client_timeout + Duration::from_secs(5))?;
        let done = Instant::now();
        let pid = u64::from(child.id());
        let want_target = match &req {
            Request::Chain(host) | Request::ViaName(host) => {
                Some(format!("{host}:{}", cfg.origin_port))
            }
            Request::Direct(_) => None,
        };
        let client_cgroup = client_cg.path().to_string_lossy().into_owned();
        // As deployed (ECS, audit), a healthy request writes nothing: none
        // of the client's lines within the bound is its `ok`.
        let silent_ok = log == Log::Ecs && expect.is_none();
        let waited =
            if silent_ok { Duration::from_secs_f64(LAG_LIMIT_S) } else { Duration::from_secs(10) };
        // Only what came after the request started: two rows fail the same
        // lookup from the same cgroup (the proxy's name), and the second
        // must not be judged on the first one's record.
        let rec = agent.wait_for_after(first_line, waited, |v| {
            let v = &native_view(v);
            match source {
                // No target when the first connect failed before any CONNECT line.
                Source::Chain => {
                    v["record"] == "chain"
                        && v["pid"].as_u64() == Some(pid)
                        && (v["target"].is_null()
                            || want_target
                                .as_deref()
                                .is_none_or(|t| v["target"].as_str() == Some(t)))
                }
                // DNS records carry the asking socket's cgroup, not a pid.
                Source::Dns => {
                    v["record"] == "dns"
                        && v["verdict"] == "failed"
                        && v["name"].as_str() == Some(cfg.proxy_name.as_str())
                        && v["cgroup"].as_str().is_some_and(|c| client_cgroup.ends_with(c))
                }
            }
        });
        let rec = rec.map(|v| native_view(&v));
        let lag = if silent_ok { 0.0 } else { done.elapsed().as_secs_f64() };
        let expected = expect.map_or_else(
            || "ok".to_string(),
            |(h, r)| {
                format!("{} at {h}: {r}", if r == "retransmits" { "degraded" } else { "failed" })
            },
        );
        let got = match &rec {
            Ok(v) if source == Source::Dns => format!(
                "{} at {}: {}",
                v["verdict"].as_str().unwrap_or("?"),
                v["hop"].as_str().unwrap_or("-"),
                v["reason"].as_str().unwrap_or("-")
            ),
            Ok(v) => {
                match (v["verdict"].as_str(), v["failed_hop"].as_str(), v["reason"].as_str()) {
                    (Some("ok"), _, _) => "ok".to_string(),
                    (Some(verdict), Some(h), Some(r)) => format!("{verdict} at {h}: {r}"),
                    (verdict, _, _) => verdict.unwrap_or("?").to_string(),
                }
            }
            Err(_) if silent_ok => "ok".to_string(),
            Err(_) => format!(
                "{}; {}",
                no_record(&agent.records[first_line..], source, pid, out.exit_code()),
                agent.health()
            ),
        };
        if verbose {
            eprintln!(
                "{fault}: client exit {:?}; chain {}; client leg evidence: {}",
                out.exit_code(),
                rec.as_ref().map(Value::to_string).unwrap_or_else(|e| format!("{e:#}")),
                client_evidence(&agent.records, pid)
            );
        }
        agent.poll();
        // The client's node alone: the client leg's own record (its
        // vantage), or for a lookup that failed before any flow, the lookup.
        let client_got = match source {
            _ if log == Log::Ecs => NOT_READ_ECS.to_string(),
            Source::Dns => got.clone(),
            Source::Chain => client_view(&agent.records, pid),
        };
        // A lossy link past the first proxy does not reach the client: the
        // tunnel opened, and that is all its node can say. The ECS log
        // (the export test) carries the requests, not the client legs'
        // own records: that column is the native log's.
        let client_expected = if log == Log::Ecs {
            NOT_READ_ECS.to_string()
        } else if fault.starts_with("lossy hop") {
            "ok".to_string()
        } else {
            expected.clone()
        };
        rows.push(Row {
            fault,
            ok: got == expected && client_got == client_expected && lag <= LAG_LIMIT_S,
            expected,
            got,
            client_expected,
            client_got,
            lag_s: lag,
            lag_limit_s: LAG_LIMIT_S,
            client_pid: pid,
            client_cgroup,
            lines: agent.records[first_line..].to_vec(),
        });
    }
    lab.restore()?;
    std::thread::sleep(settle);
    agent.poll();
    let lines = std::mem::take(&mut agent.records);
    agent.stop()?;
    // No application traffic: a fresh agent that probes, and a hop-2 outage.
    lab.hop_up(Hop::One)?;
    let interval = Duration::from_secs(2);
    std::fs::write(
        &conf,
        agent_config_with_probe(
            &cfg,
            &hop1_cg,
            &hop2_cg,
            &crate::chain_lab::netns_path(&lab.ns.app),
            interval,
        ),
    )?;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut agent =
        Agent::start(log.agent_mode(metrics, vec!["--config".into(), conf.display().to_string()]))?;
    rows.push(probe_row(&lab, &mut agent, &lab.target(&cfg.healthy.name), interval, verbose)?);
    lab.restore()?;
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);
    Ok(Run { rows, lines })
}

/// The table: the full view (every leg this agent saw: the chain record),
/// the client's node alone (the client leg's vantage), the lag, and MATCH
/// when both are as expected in time.
pub fn print(rows: &[Row]) {
    println!(
        "{:<36} {:<38} {:<38} {:<38} {:>6} {:>6}  MATCH",
        "FAULT INJECTED", "EXPECTED", "AGENT SAID (ALL LEGS)", "CLIENT NODE ALONE", "LAG", "BOUND"
    );
    for r in rows {
        let client = if r.client_got == r.client_expected || r.client_expected == r.expected {
            r.client_got.clone()
        } else {
            format!("{} (cannot see past hop 1)", r.client_got)
        };
        println!(
            "{:<36} {:<38} {:<38} {:<38} {:>5.1}s {:>5.1}s  {}",
            r.fault,
            r.expected,
            r.got,
            client,
            r.lag_s,
            r.lag_limit_s,
            if r.ok { "yes" } else { "NO" }
        );
    }
}
