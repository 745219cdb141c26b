//! Restart without blind spots: a tunnel through the lab chain opened under
//! one agent, the agent restarted, then the tunnel broken by a reset. The
//! new agent adopted the socket at start (the kernel's walk of open files),
//! so the tunnel's close record carries its owner (cgroup and the process
//! found holding it), its hop and its verdict.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::{Agent, AgentMode, free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, wait_output},
    faults::agent_config,
    require_root,
};
use serde_json::Value;

/// The client: CONNECT through the ClusterIP, wait for the go file, send a
/// byte into the tunnel, then report how the tunnel ended.
const CLIENT: &str = r#"
import os, socket, sys, time
host, port, target, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=10)
s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
print(buf.split(b"\r\n")[0].decode(), flush=True)
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
try:
    for _ in range(50):
        s.sendall(b"x")
        time.sleep(0.1)
    print("tunnel still open", flush=True)
except OSError as e:
    print(f"tunnel ended: {e}", flush=True)
"#;

fn start_agent(conf: &std::path::Path) -> (Agent, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec!["--config".into(), conf.display().to_string()],
    })
    .expect("agent");
    (agent, metrics)
}

#[test]
fn a_tunnel_open_across_a_restart_is_adopted_and_its_reset_reported() {
    require_root!();
    let hop1_cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 931).expect("cg");
    let hop2_cg = TestCgroup::new(Layout::Unit, 932).expect("cg");
    let client_cg = TestCgroup::new(Layout::Systemd { qos: None }, 933).expect("cg");
    let cfg = ChainLabConfig {
        hop1_cgroup: Some(hop1_cg.path().to_path_buf()),
        hop2_cgroup: Some(hop2_cg.path().to_path_buf()),
        ..ChainLabConfig::default()
    };
    let lab = ChainLab::new(cfg.clone()).expect("chain lab");
    let dir = std::env::temp_dir().join(format!("eo-adoption-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let conf = dir.join("agent.yaml");
    std::fs::write(&conf, agent_config(&cfg, &hop1_cg, &hop2_cg)).expect("config");
    let go = dir.join("go");
    let _ = std::fs::remove_file(&go);

    let (first, _) = start_agent(&conf);
    let target = lab.target(&cfg.healthy.name);
    let (host, port) = (cfg.cluster_ip.to_string(), cfg.proxy_port.to_string());
    let gated = lab
        .spawn_client_gated(&[
            "python3",
            "-c",
            CLIENT,
            &host,
            &port,
            &target,
            &go.display().to_string(),
        ])
        .expect("client");
    client_cg.enter(gated.pid()).expect("client into its cgroup");
    let pid = gated.pid();
    let mut client = gated.release().expect("release");
    // The tunnel is open once the agent has its record (CONNECT 200).
    let mut first = first;
    first
        .wait_for(Duration::from_secs(10), |v| {
            v["pid"].as_u64() == Some(u64::from(pid)) && v["proxy_status"].as_u64() == Some(200)
        })
        .expect("the tunnel's record under the first agent");
    assert!(first.stop().expect("stop"), "the first agent exits cleanly");

    // A new agent: the tunnel's socket predates it.
    let (mut second, _) = start_agent(&conf);
    let text = second.settled_metrics(Duration::from_secs(3)).expect("metrics");
    assert!(
        metric_sum(&text, "egress_adopted_sockets_total", &[("kind", "egress")]) >= 1.0,
        "the tunnel (and the hops' upstream legs) adopted:\n{text}"
    );
    assert!(
        metric_sum(&text, "egress_adopted_sockets_total", &[("kind", "accepted")]) >= 1.0,
        "the hops' accepted connections adopted:\n{text}"
    );

    // Break the tunnel between the client and hop 1: the next segment the
    // client sends is answered by a reset (after the ClusterIP's DNAT).
    lab.ns
        .node
        .run(&[
            "iptables",
            "-I",
            "FORWARD",
            "-p",
            "tcp",
            "-s",
            &cfg.app_ip.to_string(),
            "-d",
            &cfg.proxy_pod_ip.to_string(),
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
        .expect("reset rule");
    let t0 = Instant::now();
    std::fs::write(&go, b"go").expect("go");
    let out = wait_output(&mut client, Duration::from_secs(20)).expect("client ends");
    assert!(out.stdout.contains("HTTP/1.1 200"), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("tunnel ended"), "{}{}", out.stdout, out.stderr);

    let close = second
        .wait_for(Duration::from_secs(10), |v: &Value| {
            v["phase"] == "close" && v["pid"].as_u64() == Some(u64::from(pid))
        })
        .expect("the adopted tunnel's close record");
    eprintln!("close record after {:?}: {close}", t0.elapsed());
    assert_eq!(close["adopted"], true, "{close}");
    assert_eq!(
        (close["verdict"].as_str(), close["reason"].as_str()),
        (Some("failed"), Some("reset")),
        "{close}"
    );
    assert_eq!(
        (close["hop"].as_str(), close["leg"].as_str()),
        (Some("gke-squid"), Some("client->gke-squid")),
        "{close}"
    );
    assert_eq!(close["pod_uid"].as_str(), Some(client_cg.pod_uid.as_str()), "{close}");
    assert_eq!(close["comm"].as_str(), Some("python3"), "the task found holding it: {close}");
    assert!(second.stop().expect("stop"));
    let _ = std::fs::remove_dir_all(&dir);
}
