//! deploy/ is validated against a real scrape of the real agent: manifests
//! against the Kubernetes OpenAPI schemas, rules with promtool, and every
//! metric name the rules and the dashboard use against the exposition.
use std::{net::SocketAddr, process::Command, time::Duration};

use egress_tests::{
    Agent, AgentMode,
    agent::{agent_bin, free_port},
    require_root,
};

#[test]
fn deploy_validates_against_a_real_scrape() {
    require_root!();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let agent = Agent::start(AgentMode::Run { metrics, extra: vec![] }).expect("agent");
    // Some real traffic so that traffic-driven series exist.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect"));
    drop(l);
    let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    let scrape = agent.http_get("/metrics").expect("scrape");
    let dir = std::env::temp_dir().join(format!("eo-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &scrape).expect("write scrape");
    assert!(agent.stop().expect("stop"));

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("deploy/validate.py"))
        .arg("--metrics-file")
        .arg(&file)
        .arg("--agent-bin")
        .arg(agent_bin())
        .current_dir(&root)
        .output()
        .expect("python3 deploy/validate.py");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "deploy/validate.py failed:\n{text}");
}
