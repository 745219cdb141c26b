//! The chain lab itself, without the agent: real Squid #1 → Squid #2 → NAT →
//! origin, every fault, and what each hop says about it.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use egress_tests::{
    chain_lab::{
        ChainLab, ChainLabConfig, Cidr, CurlResult, DirectEgress, Hop, LabLink, LogMark,
        OriginName, wait_output,
    },
    require_root,
};

/// Non-default values, so nothing in the fixture can lean on its defaults.
fn config() -> ChainLabConfig {
    ChainLabConfig {
        cluster_ip: Ipv4Addr::new(10, 96, 7, 7),
        proxy_port: 3130,
        app_ip: Ipv4Addr::new(10, 0, 11, 20),
        app_gw: Ipv4Addr::new(10, 0, 11, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 0, 12, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 0, 12, 1),
        healthy: OriginName::new("login.lab-a.test", Ipv4Addr::new(198, 19, 9, 10)),
        refused: OriginName::new("refused.lab-a.test", Ipv4Addr::new(198, 19, 9, 11)),
        blackhole: OriginName::new("blackhole.lab-a.test", Ipv4Addr::new(198, 19, 9, 12)),
        denied_at_hop1: "deny1.lab-a.test".into(),
        denied_at_hop2: "deny2.lab-a.test".into(),
        hop1_hostname: "pod-squid-a".into(),
        hop2_hostname: "vm-squid-a".into(),
        ..ChainLabConfig::default()
    }
}

fn show(what: &str, r: &CurlResult) -> String {
    format!(
        "{what}: exit {:?}, CONNECT {}, HTTP {}, {:?}, headers {:?}\n{}",
        r.exit_code, r.connect_status, r.http_status, r.elapsed, r.proxy_headers, r.stderr
    )
}

fn assert_squid_error(what: &str, r: &CurlResult, status: u16, error: &str) {
    assert_eq!(r.connect_status, status, "{}", show(what, r));
    assert_eq!(r.exit_code, Some(56), "curl: CONNECT tunnel failed; {}", show(what, r));
    assert_eq!(r.header("X-Squid-Error"), Some(error), "{}", show(what, r));
}

#[test]
fn chain_lab_every_fault_end_to_end() {
    require_root!();
    let t0 = Instant::now();
    let cfg = config();
    let lab = ChainLab::new(cfg.clone()).expect("chain lab");
    eprintln!("lab up in {:?}", t0.elapsed());
    let (h1, h2) = (cfg.hop1_hostname.as_str(), cfg.hop2_hostname.as_str());
    let timeout_bound = cfg.connect_timeout + Duration::from_secs(2);
    let log = |hop, m: &LogMark, target: &str| {
        lab.wait_access_log(hop, m, &format!(" {target} "), Duration::from_secs(3))
            .expect("access log line")
    };
    assert!(lab.node_netns_path().exists());

    // Healthy: CONNECT 200 at both hops, the origin's answer through the tunnel.
    let m = lab.log_mark();
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert_eq!(
        (r.exit_code, r.connect_status, r.http_status),
        (Some(0), 200, 200),
        "{}",
        show("healthy", &r)
    );
    assert!(r.body.starts_with(&cfg.banner), "{}", show("healthy", &r));
    let target = lab.target(&cfg.healthy.name);
    let l1 = log(Hop::One, &m, &target);
    assert!(
        l1.contains("TCP_TUNNEL/200 ") && l1.contains(&format!("FIRSTUP_PARENT/{}", cfg.gce_ip)),
        "{l1}"
    );
    assert!(
        l1.contains(&format!(" {} ", cfg.app_ip)),
        "hop 1 sees the client pod IP through the DNAT: {l1}"
    );
    let l2 = log(Hop::Two, &m, &target);
    assert!(l2.contains(&format!("HIER_DIRECT/{}", cfg.healthy.ip)), "{l2}");
    assert!(
        l2.contains(&format!(" {} ", cfg.proxy_pod_ip)),
        "hop 2 sees the proxy pod IP (no SNAT on the node): {l2}"
    );

    // Direct (bypass) egress: allowed → through the NAT; rejected → at once.
    let r = lab.curl_direct(cfg.healthy.ip).expect("curl");
    assert_eq!((r.exit_code, r.http_status), (Some(0), 200), "{}", show("direct allowed", &r));
    lab.set_direct_egress(DirectEgress::Reject).expect("reject");
    let r = lab.curl_direct(cfg.healthy.ip).expect("curl");
    assert_eq!(r.exit_code, Some(7), "{}", show("direct rejected", &r));
    assert!(r.elapsed < Duration::from_secs(2), "{}", show("direct rejected", &r));
    lab.set_direct_egress(DirectEgress::Drop).expect("drop");

    // ACL denies, origin faults and a dropped bypass, concurrently (independent paths).
    let t = Instant::now();
    let m = lab.log_mark();
    let (d1, d2, refused, blackhole, direct) = std::thread::scope(|s| {
        let d1 = s.spawn(|| lab.curl_via_chain(&cfg.denied_at_hop1));
        let d2 = s.spawn(|| lab.curl_via_chain(&cfg.denied_at_hop2));
        let rf = s.spawn(|| lab.curl_via_chain(&cfg.refused.name));
        let bh = s.spawn(|| lab.curl_via_chain(&cfg.blackhole.name));
        let di = s.spawn(|| lab.curl_direct(cfg.healthy.ip));
        let j = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<CurlResult>>| {
            h.join().expect("thread").expect("curl")
        };
        (j(d1), j(d2), j(rf), j(bh), j(di))
    });
    eprintln!("ACL/origin/direct round in {:?}", t.elapsed());
    // Hop 1 denies itself: its own Via, and it never opens a connection upstream.
    assert_squid_error("denied at hop1", &d1, 403, "ERR_ACCESS_DENIED 0");
    assert_eq!(
        d1.header("Via"),
        Some(format!("1.1 {h1} (squid/5.7)").as_str()),
        "{}",
        show("deny1", &d1)
    );
    assert!(log(Hop::One, &m, &lab.target(&cfg.denied_at_hop1)).contains("TCP_DENIED/403"));
    assert!(!lab.access_log(Hop::Two).contains(&cfg.denied_at_hop1), "hop 2 never saw it");
    // Hop 2 denies: hop 1 relays hop 2's answer unchanged (hop 2's Via only).
    assert_squid_error("denied at hop2", &d2, 403, "ERR_ACCESS_DENIED 0");
    assert_eq!(
        d2.header("Via"),
        Some(format!("1.1 {h2} (squid/5.7)").as_str()),
        "{}",
        show("deny2", &d2)
    );
    assert!(log(Hop::One, &m, &lab.target(&cfg.denied_at_hop2)).contains("TCP_TUNNEL/403"));
    assert!(log(Hop::Two, &m, &lab.target(&cfg.denied_at_hop2)).contains("TCP_DENIED/403"));
    // Origin refused / blackholed behind the NAT: hop 2's 503, relayed.
    assert_squid_error("origin refused", &refused, 503, "ERR_CONNECT_FAIL 111");
    assert!(
        log(Hop::Two, &m, &lab.target(&cfg.refused.name))
            .contains(&format!("/503 0 CONNECT {}", lab.target(&cfg.refused.name)))
    );
    assert_squid_error("origin blackholed", &blackhole, 503, "ERR_CONNECT_FAIL 110");
    assert!(blackhole.elapsed < timeout_bound, "{}", show("origin blackholed", &blackhole));
    assert!(
        log(Hop::One, &m, &lab.target(&cfg.blackhole.name)).contains("TCP_TUNNEL/503"),
        "relayed from the parent"
    );
    // Direct egress dropped at the node: the kernel gives up (SYN timeout).
    assert!(
        matches!(direct.exit_code, Some(7 | 28)) && direct.http_status == 0,
        "{}",
        show("direct dropped", &direct)
    );
    lab.restore().expect("restore");

    // Hop 2 down: hop 1 answers 503 itself (its log: NONE_NONE, not TCP_TUNNEL).
    lab.hop2_down().expect("hop2 down");
    let m = lab.log_mark();
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert_squid_error("hop2 down", &r, 503, "ERR_CONNECT_FAIL 111");
    assert!(log(Hop::One, &m, &target).contains("NONE_NONE/503"), "{}", lab.access_log(Hop::One));
    assert!(lab.access_log_since(Hop::Two, &m).is_empty());
    lab.restore().expect("restore");

    // Hop 2 blackholed: hop 1's connect to its parent times out → 503 (110).
    lab.hop2_blackhole().expect("hop2 blackhole");
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert_squid_error("hop2 blackholed", &r, 503, "ERR_CONNECT_FAIL 110");
    assert!(r.elapsed < timeout_bound, "{}", show("hop2 blackholed", &r));
    assert!(lab.fault_packets().expect("counters") >= 2, "SYN and its retransmit dropped");
    lab.restore().expect("restore");

    // NAT blackholed: hop 2's origin connect times out → its 503 (110), relayed.
    lab.nat_blackhole().expect("nat blackhole");
    let m = lab.log_mark();
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert_squid_error("nat blackholed", &r, 503, "ERR_CONNECT_FAIL 110");
    assert!(log(Hop::One, &m, &target).contains("TCP_TUNNEL/503"));
    assert!(log(Hop::Two, &m, &target).contains("/503 0 CONNECT"));
    lab.restore().expect("restore");

    // Hop 1 down: the client's connect to the ClusterIP is refused.
    lab.hop1_down().expect("hop1 down");
    assert_eq!(lab.squid_pid(Hop::One), None);
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert_eq!((r.exit_code, r.connect_status), (Some(7), 0), "{}", show("hop1 down", &r));
    assert!(r.stderr.contains("Connection refused"), "{}", show("hop1 down", &r));
    lab.restore().expect("restore");

    // Hop 1 blackholed: the client's SYNs go unanswered; the kernel gives up.
    lab.hop1_blackhole().expect("hop1 blackhole");
    let r = lab.curl_via_chain(&cfg.healthy.name).expect("curl");
    assert!(
        matches!(r.exit_code, Some(7 | 28)) && r.connect_status == 0,
        "{}",
        show("hop1 blackholed", &r)
    );
    assert!(r.elapsed < timeout_bound, "{}", show("hop1 blackholed", &r));
    lab.restore().expect("restore");

    // Lossy hop1→hop2 link: packets dropped, requests still get through.
    lab.lossy_link(LabLink::NodeGce, 0.1).expect("lossy");
    let mut ok = 0;
    for _ in 0..3 {
        let r = lab
            .run_client(
                &lab.curl_via_chain_args(&cfg.healthy.name, "/bytes/100000")
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                Duration::from_secs(30),
            )
            .expect("curl");
        let r = CurlResult::parse(&r);
        ok += usize::from(r.http_status == 200 && r.body.len() > 100_000);
    }
    let dropped = lab.fault_packets().expect("counters");
    assert!(dropped > 0 && ok >= 1, "lossy link: {dropped} dropped, {ok}/3 ok");
    eprintln!("lossy link: {dropped} packets dropped, {ok}/3 requests ok");
    lab.restore().expect("restore");

    // A gated client keeps its PID from the gate to the program (for cgroups).
    let args = lab.curl_via_chain_args(&cfg.healthy.name, "/");
    let gated = lab
        .spawn_client_gated(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("gated");
    let pid = gated.pid();
    // Parked at the gate: the shell, not curl yet.
    let comm = || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while comm() != "sh" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(comm(), "sh", "client must wait at the gate");
    let mut child = gated.release().expect("release");
    assert_eq!(child.id(), pid);
    let r = CurlResult::parse(&wait_output(&mut child, Duration::from_secs(25)).expect("wait"));
    assert_eq!((r.connect_status, r.http_status), (200, 200), "{}", show("gated", &r));

    // Teardown leaves nothing behind.
    let names: Vec<String> = lab.ns.all().iter().map(|n| n.name.clone()).collect();
    let squids: Vec<u32> =
        [Hop::One, Hop::Two].into_iter().filter_map(|h| lab.squid_pid(h)).collect();
    drop(lab);
    let list =
        egress_tests::sh(&mut egress_tests::cmd("ip", &["netns", "list"])).expect("ip netns list");
    for n in &names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(n)), "{n} left behind");
    }
    for p in squids {
        assert!(!std::path::Path::new(&format!("/proc/{p}")).exists(), "squid {p} still running");
    }
    eprintln!("whole run {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[test]
#[allow(
    clippy::zombie_processes,
    reason = "the panic is the point: the lab's teardown kills the client, and a zombie until reaped is accepted below"
)]
fn chain_lab_is_removed_on_panic() {
    require_root!();
    let cfg = ChainLabConfig {
        pod_range: Cidr::new(Ipv4Addr::new(10, 1, 0, 0), 16),
        app_ip: Ipv4Addr::new(10, 1, 1, 10),
        app_gw: Ipv4Addr::new(10, 1, 1, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 1, 2, 10),
        proxy_pod_gw: Ipv4Addr::new(10, 1, 2, 1),
        ..ChainLabConfig::default()
    };
    let seen = std::sync::Mutex::new((Vec::<String>::new(), Vec::<u32>::new()));
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = ChainLab::new(cfg).expect("chain lab");
        // A client left running when the test dies: killed by the lab's teardown.
        let _sleeper = lab.spawn_client(&["sleep", "30"]).expect("client");
        let mut s = seen.lock().expect("seen");
        s.0 = lab.ns.all().iter().map(|n| n.name.clone()).collect();
        s.1 = [Hop::One, Hop::Two].into_iter().filter_map(|h| lab.squid_pid(h)).collect();
        s.1.push(_sleeper.id());
        drop(s);
        panic!("deliberate");
    }));
    assert!(res.is_err());
    let (names, pids) = seen.into_inner().expect("seen");
    assert_eq!(names.len(), 7, "app, node, proxy-pod, gce, nat, internet, dns");
    let list =
        egress_tests::sh(&mut egress_tests::cmd("ip", &["netns", "list"])).expect("ip netns list");
    for n in &names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(n)), "{n} left behind");
    }
    for p in pids {
        // Killed; at most a zombie until reaped.
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.split_whitespace().nth(2) == Some("Z"),
            "{p} still alive: {state}"
        );
    }
}
