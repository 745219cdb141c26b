//! `probes.tls` on the real chain lab (two Squids, NAT, dnsmasq) and the
//! real agent: the probe completes the TLS handshake with an origin that
//! speaks TLS (OpenSSL's `s_server`, a certificate of a CA made here with
//! `openssl req`, trusted through `probes.tls_ca`), reports `tls_failed`
//! at `internet` with the error as `detail` for an origin that answers the
//! ClientHello with plain bytes, and keeps a hop's 403 `proxy_denied`.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, OriginName, netns_path},
    faults, require_root,
};

fn config() -> ChainLabConfig {
    ChainLabConfig {
        cluster_ip: Ipv4Addr::new(10, 96, 80, 6),
        proxy_port: 3160,
        app_ip: Ipv4Addr::new(10, 0, 81, 20),
        app_gw: Ipv4Addr::new(10, 0, 81, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 0, 82, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 0, 82, 1),
        dns_ip: Ipv4Addr::new(10, 0, 83, 53),
        dns_gw: Ipv4Addr::new(10, 0, 83, 1),
        proxy_name: "squid.intra.tls-lab.example".into(),
        // A banner server: it answers a ClientHello with plain text.
        healthy: OriginName::new("plain.tls-lab.example", Ipv4Addr::new(198, 19, 68, 10)),
        // Nothing listens there until the test starts s_server on it.
        refused: OriginName::new("secure.tls-lab.example", Ipv4Addr::new(198, 19, 68, 11)),
        blackhole: OriginName::new("void.tls-lab.example", Ipv4Addr::new(198, 19, 68, 12)),
        denied_at_hop1: "deny1.tls-lab.example".into(),
        denied_at_hop2: "deny2.tls-lab.example".into(),
        peer_connect_fail_limit: 1000,
        ..ChainLabConfig::default()
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child, killed and reaped on drop (by its own handle).
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh").arg("-ec").arg(script).current_dir(dir).output().expect("sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for `name` it signed, in `dir`.
fn certificates(dir: &Path, name: &str) {
    sh(
        &format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tls-lab-ca \
               -keyout ca.key -out ca.crt 2>/dev/null
             openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout srv.key -out srv.csr 2>/dev/null
             printf 'subjectAltName=DNS:{name}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > srv.ext
             openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
               -extfile srv.ext -out srv.crt 2>/dev/null"
        ),
        dir,
    );
}

/// The last-failure series of `target`, as exported.
fn last_failure(m: &str, target: &str) -> Option<String> {
    m.lines()
        .find(|l| {
            l.starts_with("egress_probe_last_failure_hop{")
                && l.contains(&format!("target=\"{target}\""))
        })
        .map(str::to_string)
}

#[test]
fn the_probe_completes_tls_and_tells_a_tls_failure_from_a_proxy_denial() {
    require_root!();
    let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 971).expect("cgroup");
    let hop2 = TestCgroup::new(Layout::Unit, 972).expect("cgroup");
    let mut cfg = config();
    cfg.hop1_cgroup = Some(hop1.path().to_path_buf());
    cfg.hop2_cgroup = Some(hop2.path().to_path_buf());
    let lab = ChainLab::new(cfg.clone()).expect("chain lab");
    let dir = TempDir(std::env::temp_dir().join(format!("eo-probe-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    certificates(&dir.0, &cfg.refused.name);

    // The TLS origin, in the internet namespace on the address nothing else serves.
    let tls_origin = SocketAddr::new(cfg.refused.ip.into(), cfg.origin_port);
    let accept = tls_origin.to_string();
    let (crt, key) = (dir.0.join("srv.crt"), dir.0.join("srv.key"));
    let server = Killed(
        lab.ns
            .internet
            .command(&["openssl", "s_server", "-quiet", "-accept", &accept])
            .arg("-cert")
            .arg(&crt)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let t0 = Instant::now();
    while !lab
        .ns
        .internet
        .within("eo-tls-wait", move || TcpStream::connect(tls_origin).is_ok())
        .expect("netns")
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "s_server did not listen on {tls_origin}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let secure = lab.target(&cfg.refused.name);
    let plain = lab.target(&cfg.healthy.name);
    let denied = lab.target(&cfg.denied_at_hop1);
    let interval = Duration::from_secs(2);
    let conf = dir.0.join("agent.yaml");
    std::fs::write(
        &conf,
        format!(
            "{}probes:\n  targets: [\"{secure}\", \"{plain}\", \"{denied}\"]\n  interval: {}ms\n  timeout: {}ms\n  netns: \"{}\"\n  tls: true\n  tls_ca: \"{}\"\n",
            faults::agent_config(&cfg, &hop1, &hop2),
            interval.as_millis(),
            interval.as_millis(),
            netns_path(&lab.ns.app).display(),
            dir.0.join("ca.crt").display(),
        ),
    )
    .expect("config");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec!["--config".into(), conf.display().to_string()],
    })
    .expect("agent");

    let success = |m: &str, t: &str| metric_sum(m, "egress_probe_success", &[("target", t)]);
    let deadline = Instant::now() + Duration::from_secs(40);
    let m = loop {
        let m = agent.http_get("/metrics").expect("metrics");
        let done = success(&m, &secure) == 1.0
            && last_failure(&m, &plain).is_some()
            && last_failure(&m, &denied).is_some();
        if done {
            break m;
        }
        assert!(Instant::now() < deadline, "probes not all judged:\n{m}\n{}", agent.stderr_text());
        std::thread::sleep(Duration::from_millis(200));
    };

    for l in m.lines().filter(|l| l.starts_with("egress_probe")) {
        eprintln!("{l}");
    }
    // The TLS origin: the handshake done, no failure.
    assert!(last_failure(&m, &secure).is_none(), "{m}");
    assert!(
        metric_sum(&m, "egress_probes_total", &[("target", &secure), ("result", "success")]) >= 1.0
    );
    // Plain bytes after the ClientHello: tls_failed past the last hop, with rustls's error.
    let plain_failure = last_failure(&m, &plain).expect("plain");
    assert!(
        plain_failure.contains("hop=\"internet\"")
            && plain_failure.contains("reason=\"tls_failed\"")
            && plain_failure.contains("detail=\"received corrupt message"),
        "{plain_failure}"
    );
    assert_eq!(success(&m, &plain), 0.0);
    // The hop's 403: the proxy's failure, never a TLS one.
    let denied_failure = last_failure(&m, &denied).expect("denied");
    assert!(
        denied_failure.contains("hop=\"gke-squid\"")
            && denied_failure.contains("reason=\"proxy_denied\"")
            && denied_failure.contains("detail=\"\""),
        "{denied_failure}"
    );
    assert_eq!(metric_sum(&m, "egress_probe_records_dropped_total", &[]), 0.0);
    // The probe's ClientHello went through the real Squids: the agent saw
    // the probe's chains.
    assert!(
        agent
            .wait_for(Duration::from_secs(5), |v| v["record"] == "chain" && v["synthetic"] == true)
            .is_ok(),
        "no synthetic chain record"
    );
    agent.stop().expect("stop");
    drop(server);
}
