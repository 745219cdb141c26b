//! Real kernel, real traffic: the agent binary watches connections made from
//! network namespaces it did not create and must give each the right verdict.
use std::{net::SocketAddr, time::Duration};

use egress_tests::{
    Agent, AgentMode,
    agent::{attachable_program_lines, free_port, metric_sum},
    lab::{ConnectLab, LabAddrs},
    require_root,
};
use serde_json::Value;

fn matches(v: &Value, dst: SocketAddr) -> bool {
    v["dst"].as_str() == Some(dst.to_string().as_str())
}

#[test]
fn every_outcome_gets_its_verdict_in_watch_and_metrics() {
    require_root!();
    // Addresses of our own: not the lab defaults, so nothing depends on them.
    let addrs = LabAddrs {
        client4: "198.19.7.10".parse().expect("ip"),
        server4: "198.19.7.20".parse().expect("ip"),
        client6: "fd00:7::10".parse().expect("ip"),
        server6: "fd00:7::20".parse().expect("ip"),
        base_port: 24000,
        ..LabAddrs::default()
    };
    let lab = ConnectLab::new(addrs).expect("lab");
    let mut watch = Agent::start(AgentMode::Watch(vec![])).expect("watch agent");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    // Proxy ports given so that the payload hooks attach too. `watch` runs
    // with the defaults (SO_ERROR through cgroup/getsockopt, no syscall
    // tracepoint on a host without socket-level load balancing); `run` with
    // the syscall tracepoints forced on instead: both must see every outcome.
    let forced =
        ["--proxy-ports", "3128", "--connect-intent", "true", "--disable-programs", "so_error"];
    let mut run =
        Agent::start(AgentMode::Run { metrics, extra: forced.map(String::from).to_vec() })
            .expect("run agent");

    let scenarios = lab.scenarios();
    // Drive them concurrently: the slow ones (timeout, unreachable) overlap.
    std::thread::scope(|sc| {
        let handles: Vec<_> =
            scenarios.iter().map(|s| sc.spawn(|| lab.drive(s, "eo-client"))).collect();
        for h in handles {
            let r = h.join().expect("client thread").expect("client");
            eprintln!("client: {r:?}");
        }
    });

    let pid = std::process::id() as u64;
    for s in &scenarios {
        let rec = watch
            .wait_for(Duration::from_secs(10), |v| {
                matches(v, s.dst) && v["verdict"] == s.expect_verdict
            })
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
        assert_eq!(rec["reason"].as_str(), s.expect_reason, "{}: {rec}", s.name);
        assert_eq!(rec["pid"].as_u64(), Some(pid), "{}: owner pid", s.name);
        assert_eq!(rec["comm"], "eo-client", "{}: owner comm", s.name);
        assert!(rec["cgroup_id"].as_u64().is_some_and(|c| c > 0), "{}: cgroup id", s.name);
        assert!(rec["latency_ms"].as_f64().is_some(), "{}", s.name);
        if s.expect_verdict == "degraded" {
            assert!(rec["retransmits"].as_u64().is_some_and(|n| n > 0), "{}: {rec}", s.name);
        }
        if s.expect_reason == Some("timeout") {
            assert!(rec["syn_retransmits"].as_u64().is_some_and(|n| n >= 1), "{}: {rec}", s.name);
            assert_eq!(rec["errno"], libc::ETIMEDOUT, "{}: {rec}", s.name);
        }
        // The `run` agent sees the same flows.
        run.wait_for(Duration::from_secs(10), |v| {
            matches(v, s.dst) && v["verdict"] == s.expect_verdict
        })
        .unwrap_or_else(|e| panic!("run agent, {}: {e:#}", s.name));
    }
    // Healthy traffic produced no failure for the healthy destinations.
    watch.poll();
    for s in scenarios.iter().filter(|s| s.expect_verdict == "ok") {
        assert!(
            !watch.records.iter().any(|v| matches(v, s.dst) && v["verdict"] != "ok"),
            "{}: {:?}",
            s.name,
            watch.records
        );
    }

    let text = run.http_get("/metrics").expect("scrape");
    for (result, reason) in
        [("ok", ""), ("failed", "refused"), ("failed", "timeout"), ("failed", "unreachable")]
    {
        let n = metric_sum(
            &text,
            "egress_connections_total",
            &[("result", result), ("reason", reason)],
        );
        assert!(
            n >= 1.0,
            "egress_connections_total{{result={result},reason={reason}}} = {n}\n{text}"
        );
    }
    // The lossy flow degraded after (or while) connecting: counted once as a
    // degraded connect or as a degraded close.
    let degraded = metric_sum(&text, "egress_connections_total", &[("result", "degraded")])
        + metric_sum(&text, "egress_connection_closes_total", &[("result", "degraded")]);
    assert!(degraded >= 1.0, "{text}");
    assert!(
        metric_sum(&text, "egress_connection_closes_total", &[("result", "ok")]) >= 2.0,
        "healthy closes counted\n{text}"
    );
    assert!(metric_sum(&text, "egress_tcp_retransmits_total", &[]) >= 1.0);
    assert!(
        metric_sum(&text, "egress_connect_duration_seconds_count", &[("result", "failed")]) >= 4.0
    );
    let programs: Vec<&str> = attachable_program_lines(&text)
        .into_iter()
        .filter(|l| !l.contains("program=\"so_error\""))
        .collect();
    assert!(programs.len() >= 5, "{text}");
    assert!(
        programs.iter().all(|l| l.ends_with(" 1")),
        "every program this kernel can take attached here\n{text}"
    );
    for p in ["sys_enter_connect", "sys_enter_getsockopt", "sys_exit_getsockopt"] {
        assert_eq!(
            metric_sum(&text, "egress_program_attached", &[("program", p)]),
            1.0,
            "{p} forced on\n{text}"
        );
    }
    assert_eq!(
        metric_sum(&text, "egress_program_attached", &[("program", "so_error")]),
        0.0,
        "so_error disabled\n{text}"
    );
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0);
    assert_eq!(run.http_get("/healthz").expect("healthz").trim(), "ok");
    assert!(run.stop().expect("stop"), "run exits 0 on SIGTERM");
    assert!(watch.stop().expect("stop"), "watch exits 0 on SIGTERM");
}

#[test]
fn owner_is_the_connecting_process_in_another_namespace() {
    require_root!();
    let lab = ConnectLab::new(LabAddrs {
        client4: "198.19.9.10".parse().expect("ip"),
        server4: "198.19.9.20".parse().expect("ip"),
        client6: "fd00:9::10".parse().expect("ip"),
        server6: "fd00:9::20".parse().expect("ip"),
        base_port: 25000,
        ..LabAddrs::default()
    })
    .expect("lab");
    let mut watch =
        Agent::start(AgentMode::Watch(vec!["--verdict".into(), "failed".into()])).expect("agent");
    // A separate process (not a thread of ours) inside the client namespace.
    let dst = SocketAddr::new(lab.addrs.server4, 25001);
    let child = lab
        .client
        .command(&["python3", "-c", &format!("import socket,sys\ns=socket.socket()\ntry: s.connect(('{}', {}))\nexcept OSError as e: sys.exit(0)", dst.ip(), dst.port())])
        .spawn()
        .expect("spawn python3");
    let child_pid = child.id() as u64;
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let rec = watch.wait_for(Duration::from_secs(10), |v| matches(v, dst)).expect("record");
    // `ip netns exec` execs the program in place: same pid.
    assert_eq!(rec["pid"].as_u64(), Some(child_pid), "{rec}");
    assert!(rec["comm"].as_str().is_some_and(|c| c.starts_with("python")), "{rec}");
    assert_eq!(rec["reason"], "refused");
    let netns_inode = std::fs::metadata(format!("/run/netns/{}", lab.client.name))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("netns");
    assert_eq!(
        rec["netns"].as_u64(),
        Some(netns_inode),
        "netns inode of the client namespace: {rec}"
    );
    // --verdict failed filtered out everything else.
    watch.poll();
    assert!(watch.records.iter().all(|v| v["verdict"] == "failed"), "{:?}", watch.records);
    drop(watch);
}
