//! The DaemonSet's capability list is exactly what the agent needs, proven
//! on the real agent: run as root with only the capabilities that
//! `deploy/kubernetes/base/daemonset.yaml` adds (setpriv: bounding set =
//! effective set, no_new_privs, as a container with `drop: [ALL]`), inside
//! the network namespace that does the NAT (as `hostNetwork: true` on a
//! node), everything works: all programs attach, the ring delivers flows, the
//! cgroup tree is walked, conntrack over ctnetlink sees the DNAT. With any
//! one of them removed, something the agent needs fails. So the list is
//! sufficient and every entry is necessary; and the VM's unit grants the same.
use std::{net::SocketAddr, time::Duration};

use egress_tests::{
    Agent, AgentMode,
    agent::{attachable_program_lines, free_port, metric_sum},
    cgroups::{Layout, TestCgroup, v2_root},
    chain_lab::{ChainLab, ChainLabConfig, wait_output},
    faults::agent_config,
    manifests::{daemonset_capabilities, setpriv_args, unit_capabilities},
    require_root,
};

struct Run {
    agent: Result<Agent, String>,
    metrics: SocketAddr,
}

/// The agent in the lab's node namespace with exactly `caps`.
fn start(lab: &ChainLab, caps: &[String], conf: &std::path::Path, conntrack: &str) -> Run {
    let mut wrapper = vec![
        "nsenter".to_string(),
        format!("--net={}", lab.node_netns_path().display()),
        "--".into(),
    ];
    wrapper.extend(setpriv_args(caps));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let extra = [
        "--config",
        &conf.display().to_string(),
        "--cgroup-root",
        &v2_root().expect("cgroup2").display().to_string(),
        "--kube",
        "false",
        "--conntrack",
        conntrack,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Run {
        agent: Agent::start_wrapped(&wrapper, AgentMode::Run { metrics, extra })
            .map_err(|e| format!("{e:#}")),
        metrics,
    }
}

/// GET /metrics from inside the node namespace (where the agent listens).
fn scrape(lab: &ChainLab, addr: SocketAddr) -> String {
    lab.ns
        .node
        .run(&["curl", "-sf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .expect("scrape in the node netns")
}

#[test]
fn daemonset_capabilities_are_sufficient_and_each_is_necessary() {
    require_root!();
    let (dropped, add) = daemonset_capabilities().expect("daemonset");
    assert_eq!(dropped, ["ALL"], "the DaemonSet drops every capability first");
    let mut unit = unit_capabilities().expect("unit");
    let mut sorted = add.clone();
    sorted.sort();
    unit.sort();
    assert_eq!(
        unit, sorted,
        "deploy/gce/egress-agent.service grants the same capabilities as the DaemonSet"
    );
    eprintln!("DaemonSet capabilities: {add:?}");

    let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 951).expect("cgroup");
    let hop2 = TestCgroup::new(Layout::Unit, 952).expect("cgroup");
    let client = TestCgroup::new(Layout::Unit, 953).expect("cgroup");
    let cfg = ChainLabConfig {
        hop1_cgroup: Some(hop1.path().to_path_buf()),
        hop2_cgroup: Some(hop2.path().to_path_buf()),
        ..ChainLabConfig::default()
    };
    let lab = ChainLab::new(cfg.clone()).expect("chain lab");
    let dir = std::env::temp_dir().join(format!("eo-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let conf = dir.join("agent.yaml");
    std::fs::write(&conf, agent_config(&cfg, &hop1, &hop2)).expect("config");

    // 1. Exactly the DaemonSet's list: everything works.
    let run = start(&lab, &add, &conf, "true");
    let mut agent = run.agent.unwrap_or_else(|e| panic!("agent with {add:?} did not start: {e}"));
    let text = scrape(&lab, run.metrics);
    let programs = attachable_program_lines(&text);
    let named = |p: &str| programs.iter().any(|l| l.contains(&format!("program=\"{p}\"")));
    let core = [
        "inet_sock_set_state",
        "tcp_retransmit_skb",
        "so_error",
        "payload_egress",
        "payload_ingress",
    ];
    assert!(
        core.iter().all(|p| named(p)) && programs.iter().all(|l| l.ends_with(" 1")),
        "every program (but those on standby) attached with {add:?}:\n{}",
        programs.join("\n")
    );
    let args = lab.curl_via_chain_args(&cfg.healthy.name, "/");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let gated = lab.spawn_client_gated(&refs).expect("client");
    client.enter(gated.pid()).expect("enter cgroup");
    let mut child = gated.release().expect("release");
    let out = wait_output(&mut child, Duration::from_secs(25)).expect("client");
    assert_eq!(out.exit_code(), Some(0), "healthy request through the chain: {}", out.stderr);
    let pid = u64::from(child.id());
    let leaf = client.path().file_name().and_then(|n| n.to_str()).expect("leaf").to_string();
    let proxy = SocketAddr::new(cfg.proxy_pod_ip.into(), cfg.proxy_port).to_string();
    let rec = agent
        .wait_for(Duration::from_secs(10), |v| {
            v["pid"].as_u64() == Some(pid)
                && v["record"] != "chain"
                && v["verdict"] == "ok"
                && v["dst_actual"].as_str() == Some(proxy.as_str())
        })
        .expect("ring: a flow record of the client, DNAT resolved by conntrack");
    eprintln!("flow with {add:?}: {rec}");
    assert!(
        rec["cgroup"].as_str().is_some_and(|c| c.ends_with(&leaf)),
        "cgroup walk names the client's cgroup: {rec}"
    );
    assert_eq!(rec["hop"], "gke-squid", "{rec}");
    assert_eq!(rec["proxy_status"], 200, "payload program read the proxy's status line: {rec}");
    let text = scrape(&lab, run.metrics);
    assert!(
        metric_sum(&text, "egress_conntrack_events_total", &[]) > 0.0,
        "ctnetlink events arrive:\n{text}"
    );
    assert!(agent.stop().expect("stop"), "clean stop");

    // 2. Each capability removed in turn: the agent fails, or loses a part.
    for cap in &add {
        let fewer: Vec<String> = add.iter().filter(|c| *c != cap).cloned().collect();
        let run = start(&lab, &fewer, &conf, "true");
        let why = match run.agent {
            Err(e) => e,
            Ok(a) => {
                let text = scrape(&lab, run.metrics);
                let detached: Vec<&str> = attachable_program_lines(&text)
                    .into_iter()
                    .filter(|l| l.ends_with(" 0"))
                    .collect();
                let stderr = a.stderr_text();
                let _ = a.stop();
                assert!(
                    !detached.is_empty(),
                    "without {cap} the agent still runs with every program attached: {cap} is not needed"
                );
                format!("programs not attached: {detached:?}\n{stderr}")
            }
        };
        eprintln!("without {cap}: {}", why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(""));
        let named = match cap.as_str() {
            "BPF" => why.contains("CAP_BPF"),
            "PERFMON" => why.contains("CAP_PERFMON"),
            "NET_ADMIN" => why.contains("CAP_NET_ADMIN") || why.contains("Operation not permitted"),
            _ => true,
        };
        assert!(named, "without {cap} the failure names it:\n{why}");
    }
    // And without NET_ADMIN, conntrack off: the cgroup_skb (payload) programs still cannot attach.
    let fewer: Vec<String> = add.iter().filter(|c| c.as_str() != "NET_ADMIN").cloned().collect();
    if fewer.len() < add.len() {
        let run = start(&lab, &fewer, &conf, "false");
        let a = run.agent.expect("agent without NET_ADMIN and conntrack off starts");
        let text = scrape(&lab, run.metrics);
        assert_eq!(
            metric_sum(&text, "egress_program_attached", &[("program", "payload_egress")]),
            0.0,
            "cgroup_skb attach needs CAP_NET_ADMIN:\n{text}"
        );
        let _ = a.stop();
    }
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
