//! DNS on the chain and the active probe, on the real chain lab (dnsmasq,
//! two Squids, NAT) and the real agent: lookups are attributed to the pod
//! and the hop, failed ones are `dns_failed`, a hop's failed lookup explains
//! its 503; without any application traffic the probe alone finds a hop-2
//! outage within two probe intervals.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, Hop, OriginName, netns_path, wait_output},
    faults, require_root,
};
use serde_json::Value;

/// Non-default values, so nothing leans on the lab's defaults.
fn config(n: u8) -> ChainLabConfig {
    ChainLabConfig {
        cluster_ip: Ipv4Addr::new(10, 96, 60 + n, 6),
        proxy_port: 3140 + u16::from(n),
        app_ip: Ipv4Addr::new(10, 0, 61 + 2 * n, 20),
        app_gw: Ipv4Addr::new(10, 0, 61 + 2 * n, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 0, 62 + 2 * n, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 0, 62 + 2 * n, 1),
        dns_ip: Ipv4Addr::new(10, 0, 70 + n, 53),
        dns_gw: Ipv4Addr::new(10, 0, 70 + n, 1),
        proxy_name: format!("squid-{n}.intra.dns-lab.example"),
        healthy: OriginName::new("login.dns-lab.example", Ipv4Addr::new(198, 19, 66, 10)),
        refused: OriginName::new("refused.dns-lab.example", Ipv4Addr::new(198, 19, 66, 11)),
        blackhole: OriginName::new("void.dns-lab.example", Ipv4Addr::new(198, 19, 66, 12)),
        denied_at_hop1: "deny1.dns-lab.example".into(),
        denied_at_hop2: "deny2.dns-lab.example".into(),
        peer_connect_fail_limit: 1000,
        ..ChainLabConfig::default()
    }
}

struct Setup {
    lab: ChainLab,
    agent: Agent,
    client: TestCgroup,
    _hops: (TestCgroup, TestCgroup),
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(n: u8, probe_interval: Option<Duration>) -> Setup {
    let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 910 + u64::from(n) * 3)
        .expect("cgroup");
    let hop2 = TestCgroup::new(Layout::Unit, 911 + u64::from(n) * 3).expect("cgroup");
    let client =
        TestCgroup::new(Layout::Systemd { qos: None }, 912 + u64::from(n) * 3).expect("cgroup");
    let mut cfg = config(n);
    cfg.hop1_cgroup = Some(hop1.path().to_path_buf());
    cfg.hop2_cgroup = Some(hop2.path().to_path_buf());
    let lab = ChainLab::new(cfg.clone()).expect("chain lab");
    let dir =
        TempDir(std::env::temp_dir().join(format!("eo-dns-prober-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("dir");
    let conf = dir.0.join("agent.yaml");
    let text = match probe_interval {
        Some(i) => faults::agent_config_with_probe(&cfg, &hop1, &hop2, &netns_path(&lab.ns.app), i),
        None => faults::agent_config(&cfg, &hop1, &hop2),
    };
    std::fs::write(&conf, text).expect("config");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec!["--config".into(), conf.display().to_string()],
    })
    .expect("agent");
    Setup { lab, agent, client, _hops: (hop1, hop2), _dir: dir }
}

impl Setup {
    /// Run curl in the client cgroup; returns (pid, exit code).
    fn curl(&self, args: &[String]) -> (u64, Option<i32>) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let gated = self.lab.spawn_client_gated(&refs).expect("client");
        self.client.enter(gated.pid()).expect("enter");
        let mut child = gated.release().expect("release");
        let out = wait_output(&mut child, Duration::from_secs(30)).expect("client output");
        (u64::from(child.id()), out.exit_code())
    }

    fn dns_record(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let cg = self.client.path().to_string_lossy().into_owned();
        self.agent
            .wait_for(Duration::from_secs(10), |v| {
                v["record"] == "dns"
                    && v["name"].as_str() == Some(name)
                    && v["cgroup"].as_str().is_some_and(|c| cg.ends_with(c))
                    && pred(v)
            })
            .expect("dns record")
    }

    fn metrics(&self) -> String {
        self.agent.http_get("/metrics").expect("metrics")
    }
}

#[test]
fn dns_lookups_are_judged_and_named_at_their_hop() {
    require_root!();
    let mut s = setup(0, None);
    let cfg = s.lab.config().clone();
    let name = cfg.proxy_name.clone();

    // Healthy: the pod resolves the proxy's name (A and AAAA), then tunnels.
    let (pid, code) = s.curl(&s.lab.curl_via_name_args(&cfg.healthy.name, "/"));
    assert_eq!(code, Some(0));
    let a = s.dns_record(&name, |v| v["qtype"] == "A");
    assert_eq!(
        (a["rcode"].as_str(), a["verdict"].as_str(), a["hop"].as_str()),
        (Some("NOERROR"), Some("ok"), Some("gke-squid")),
        "{a}"
    );
    assert_eq!(a["server"].as_str(), Some(format!("{}:53", cfg.dns_ip).as_str()), "{a}");
    assert!(a["asked_by"].is_null() && a["latency_ms"].as_f64().is_some_and(|l| l < 1000.0), "{a}");
    let chain = s
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["record"] == "chain" && v["pid"].as_u64() == Some(pid)
        })
        .expect("chain");
    assert_eq!(chain["verdict"], "ok", "{chain}");
    // Squid #2 resolved the origin itself: its lookups name gce-proxy as asker.
    let origin = s
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["record"] == "dns"
                && v["name"].as_str() == Some(cfg.healthy.name.as_str())
                && v["qtype"] == "A"
        })
        .expect("origin lookup");
    assert_eq!(
        (origin["asked_by"].as_str(), origin["rcode"].as_str()),
        (Some("gce-proxy"), Some("NOERROR")),
        "{origin}"
    );

    // The proxy's name does not resolve: dns_failed at gke-squid, for this pod.
    s.lab.dns_remove(&name).expect("remove");
    let (_, code) = s.curl(&s.lab.curl_via_name_args(&cfg.healthy.name, "/"));
    assert_eq!(code, Some(5), "curl: could not resolve proxy");
    let nx = s.dns_record(&name, |v| v["rcode"] == "NXDOMAIN");
    assert_eq!(
        (nx["verdict"].as_str(), nx["reason"].as_str(), nx["hop"].as_str()),
        (Some("failed"), Some("dns_failed"), Some("gke-squid")),
        "{nx}"
    );

    // The origin's name does not resolve at the VM proxy: its 503 is dns_failed at gce-proxy.
    s.lab.restore().expect("restore");
    s.lab.dns_remove(&cfg.healthy.name).expect("remove");
    let (pid, code) = s.curl(&s.lab.curl_via_chain_args(&cfg.healthy.name, "/"));
    assert_eq!(code, Some(56), "CONNECT answered 503");
    let chain = s
        .agent
        .wait_for(Duration::from_secs(10), |v| {
            v["record"] == "chain" && v["pid"].as_u64() == Some(pid)
        })
        .expect("chain");
    // Squid 5.7 answers ERR_DNS_FAIL with 500 (relayed by Squid #1).
    assert_eq!(
        (chain["failed_hop"].as_str(), chain["reason"].as_str(), chain["proxy_status"].as_u64()),
        (Some("gce-proxy"), Some("dns_failed"), Some(500)),
        "{chain}"
    );

    // The resolver is down: the pod's lookup times out (the agent's DNS timeout).
    s.lab.restore().expect("restore");
    s.lab.resolver_down().expect("down");
    let t0 = Instant::now();
    let (_, code) = s.curl(&s.lab.curl_via_name_args(&cfg.healthy.name, "/"));
    assert_eq!(code, Some(5));
    let to = s.dns_record(&name, |v| v["rcode"] == "timeout");
    assert!(t0.elapsed() < Duration::from_secs(5), "timeout record after {:?}", t0.elapsed());
    assert_eq!(
        (to["reason"].as_str(), to["hop"].as_str()),
        (Some("dns_failed"), Some("gke-squid")),
        "{to}"
    );
    s.lab.restore().expect("restore");

    let m = s.agent.settled_metrics(Duration::from_secs(5)).expect("metrics");
    assert!(
        metric_sum(&m, "egress_dns_responses_total", &[("rcode", "NOERROR"), ("hop", "gke-squid")])
            >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "egress_dns_responses_total",
            &[("rcode", "NXDOMAIN"), ("hop", "gke-squid")]
        ) >= 1.0
    );
    assert!(
        metric_sum(&m, "egress_dns_responses_total", &[("rcode", "timeout"), ("hop", "gke-squid")])
            >= 1.0
    );
    assert!(
        metric_sum(&m, "egress_dns_lookups_total", &[("name", name.as_str())]) >= 3.0,
        "allow-listed name kept as a label"
    );
    assert!(metric_sum(&m, "egress_dns_duration_seconds_count", &[]) >= 2.0);
    // Client lookups of the proxy's name (A+AAAA, twice) plus the 503 chain.
    assert!(
        metric_sum(
            &m,
            "egress_hop_failures_total",
            &[("hop", "gke-squid"), ("reason", "dns_failed")]
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "egress_hop_failures_total",
            &[("hop", "gce-proxy"), ("reason", "dns_failed")]
        ),
        1.0,
        "one failed request, not one per lookup"
    );
    // Nothing lost silently: every DNS event the kernel produced was decoded.
    assert_eq!(metric_sum(&m, "egress_dns_decode_errors_total", &[]), 0.0, "{m}");
    assert_eq!(
        metric_sum(&m, "egress_events_produced_total", &[("kind", "dns")]),
        metric_sum(&m, "egress_events_delivered_total", &[("kind", "dns")])
    );
    assert_eq!(metric_sum(&m, "egress_events_lost_total", &[("kind", "dns")]), 0.0);
    s.agent.stop().expect("stop");
}

#[test]
fn the_probe_alone_finds_a_hop2_outage() {
    require_root!();
    let interval = Duration::from_secs(2);
    let mut s = setup(1, Some(interval));
    let cfg = s.lab.config().clone();
    let target = s.lab.target(&cfg.healthy.name);
    let t = [("target", target.as_str())];
    // No application traffic at all: only the probe runs.
    let deadline = Instant::now() + 6 * interval;
    while metric_sum(&s.metrics(), "egress_probe_success", &t) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "probe never succeeded:\n{}\n{}",
            s.metrics(),
            s.agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let probe = s
        .agent
        .wait_for(Duration::from_secs(5), |v| v["record"] == "chain" && v["synthetic"] == true)
        .expect("synthetic chain record");
    let all: Vec<String> = s
        .agent
        .records
        .iter()
        .filter(|v| v["synthetic"] == true || v["record"] == "chain")
        .map(Value::to_string)
        .collect();
    assert_eq!(
        (probe["verdict"].as_str(), probe["legs"].as_array().map(Vec::len)),
        (Some("ok"), Some(3)),
        "{probe}\n{}",
        all.join("\n")
    );
    let m = s.metrics();
    for hop in ["total", "gke-squid", "gce-proxy", "internet"] {
        let d = metric_sum(
            &m,
            "egress_probe_duration_seconds",
            &[("target", target.as_str()), ("hop", hop)],
        );
        assert!(d > 0.0 && d < 2.0, "duration of {hop}: {d}\n{m}");
    }

    s.lab.hop2_down().expect("hop2 down");
    let t0 = Instant::now();
    let detected = loop {
        let m = s.metrics();
        if metric_sum(&m, "egress_probe_success", &t) == 0.0
            && metric_sum(
                &m,
                "egress_probe_last_failure_hop",
                &[("target", target.as_str()), ("hop", "gce-proxy"), ("reason", "refused")],
            ) == 1.0
        {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < 4 * interval, "not detected:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(detected <= 2 * interval, "detected after {detected:?}, more than two probe intervals");
    let m = s.metrics();
    assert_eq!(
        metric_sum(&m, "egress_hop_failures_total", &[]),
        0.0,
        "probe failures are the probe's metrics, not the traffic's"
    );
    assert!(
        metric_sum(
            &m,
            "egress_probes_total",
            &[("target", target.as_str()), ("result", "failure")]
        ) >= 1.0
    );
    assert_eq!(metric_sum(&m, "egress_probe_records_dropped_total", &[]), 0.0);

    // Back up: the probe sees it within two intervals too.
    s.lab.hop_up(Hop::Two).expect("hop2 up");
    let t1 = Instant::now();
    while metric_sum(&s.metrics(), "egress_probe_success", &t) < 1.0 {
        assert!(t1.elapsed() <= 2 * interval + Duration::from_secs(1), "recovery not seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.agent.stop().expect("stop");
}
