//! NetworkPolicy-aware diagnosis end to end, against real enforcement: the
//! real agent (`run`) judges real connects of a "pod" (a kubelet-shaped
//! cgroup in its own network namespace) whose egress a policy engine
//! enforces, and its verdicts must agree with what the datapath did.
//!
//! ```text
//! pod 198.18.61.2 ── 198.18.61.1 router 198.18.62.1 ── outside .2 .3 .4 (listeners :8080 :9090)
//!  production/web      FORWARD: policy engine rules      INPUT -d .4 DROP (a blackhole)
//!                      PREROUTING DNAT (ClusterIPs)
//! ```
//!
//! The lab is [`egress_tests::netpol_lab`] (also a `cargo xtask lab` table).
//!
//! - **Kubernetes API:** no kube-apiserver can run on the machines this is
//!   built and tested on, so the API server is a FAKE (`egress_tests::
//!   fake_apiserver`): a plain-HTTP server inside this test process that
//!   serves genuine Kubernetes JSON (Lists and Watch streams, objects as
//!   `kubectl get -o json` shows them) for the pods, Services,
//!   EndpointSlices, Nodes, Namespaces and NetworkPolicies the agent
//!   watches, reached through a kubeconfig as a real one would be.
//! - **Enforcement:** the policy engine is `egress_tests::netpol`, iptables
//!   rules generated from the SAME NetworkPolicy objects the fake API server
//!   serves (a separate small implementation, not the agent's evaluator),
//!   loaded into the router the pod's packets are forwarded through: egress
//!   from the pod's address is dropped unless a rule allows it.
//! - **Policies:** `production/default-deny-egress` (every pod, no rule) and
//!   `production/allow-web-egress` (app=web: 198.18.62.0/24 except
//!   198.18.62.3/32, TCP 8000–8090 with `endPort`).
//!
//! | connect to | datapath | agent |
//! |---|---|---|
//! | 198.18.62.2:8080 | allowed, answered | ok |
//! | 198.18.62.3:8080 (except) | dropped by the engine | `policy_denied`, both policies |
//! | 198.18.62.2:9090 (past endPort) | dropped by the engine | `policy_denied` |
//! | 198.18.62.4:8080 | allowed, blackholed beyond | `timeout`, policy `allowed` |
//! | ClusterIP 198.18.62.10:8080 → DNAT 198.18.62.3:8080 | dropped (the backend) | `policy_denied` |
//! | ClusterIP 198.19.61.10:8080 → DNAT 198.18.62.4:8080 | allowed (the backend), blackholed | `timeout` |
//!
//! The last two show that the policies are judged against the backend after
//! DNAT, not the address the application asked for. Addresses exist only
//! inside the test's namespaces (RFC 2544 ranges).
use std::{process::Command, time::Instant};

use egress_tests::{
    agent::{agent_bin, api_socket_for, metric_sum},
    demo,
    netpol_lab::{
        ALLOW_WEB, BLACKHOLED, DENY_ALL, EXCEPTED, NS, NetpolLab, SVC_TO_ALLOWED, SVC_TO_DENIED,
        rows, sa,
    },
    require_root,
};

#[test]
fn policy_verdicts_agree_with_the_enforcing_datapath() {
    require_root!();
    let started = Instant::now();
    let lab = NetpolLab::new().expect("netpol lab");
    eprintln!("policy engine rules (router filter table):\n{}", lab.rules);
    let mut agent = lab.agent().expect("agent");
    let ready_at = started.elapsed();

    // Per target: what the datapath did (the client's answer), and the
    // agent's record of that client's connect: the pod it names, verdict,
    // reason, policy verdict and the policies.
    let rows = rows(&lab, &mut agent).expect("rows");
    demo::print(&rows);
    for r in &rows {
        assert!(r.ok, "{} ({}): expected {:?}, got {:?}", r.name, r.dst, r.expected, r.got);
    }
    // The ClusterIP flows were judged on their Services' backends, as the
    // datapath did: the denied one's SYN was dropped in FORWARD, before
    // conntrack confirmed its entry, so no NAT entry joins it and
    // `dst_actual` is the socket's own address; the EndpointSlices name the
    // backends instead.
    for svc in [SVC_TO_DENIED, SVC_TO_ALLOWED] {
        let rec = agent
            .records
            .iter()
            .find(|r| r["dst"] == sa(svc, 8080).to_string())
            .unwrap_or_else(|| panic!("record to {svc}"))
            .clone();
        assert_eq!(rec["dst_class"], "service", "{rec}");
        // A failed connect keeps its source port (the kernel reads the
        // released port from `inet_sport`).
        assert_eq!(rec["src"].as_str().map(|s| s.ends_with(":0")), Some(false), "{rec}");
    }

    // The metric: three denied attempts of the Deployment, bounded labels.
    let text = agent.http_get("/metrics").expect("GET /metrics");
    let who = [("namespace", NS), ("workload", "Deployment/web")];
    assert_eq!(metric_sum(&text, "egress_policy_denied_total", &who), 3.0, "{text}");
    let series: Vec<&str> =
        text.lines().filter(|l| l.starts_with("egress_policy_denied_total{")).collect();
    assert_eq!(series.len(), 1, "{series:?}");
    for resource in ["namespaces", "networkpolicies"] {
        assert_eq!(
            metric_sum(&text, "egress_kube_watch_up", &[("resource", resource)]),
            1.0,
            "{resource}\n{text}"
        );
        assert_eq!(
            metric_sum(&text, "egress_kube_objects_malformed_total", &[("resource", resource)]),
            0.0,
            "{resource}\n{text}"
        );
    }
    assert_eq!(
        metric_sum(&text, "egress_kube_objects", &[("resource", "networkpolicies")]),
        2.0,
        "{text}"
    );

    // `explain` prints the policy verdict line.
    let sock = api_socket_for(&agent.metrics_addr.expect("a run agent serves metrics"));
    let explain = |target: &str| {
        let out = Command::new(agent_bin())
            .args(["explain", target, "--api-socket"])
            .arg(&sock)
            .output()
            .expect("explain");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("explain {target}:\n{text}");
        assert!(out.status.success(), "explain {target}: {}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let denied = explain(&format!("{EXCEPTED}:8080"));
    assert!(
        denied.contains(&format!(
            "policy: DENIED by NetworkPolicy {ALLOW_WEB}, {DENY_ALL}: no egress rule allows this flow (judged on the backend after DNAT)"
        )),
        "{denied}"
    );
    let allowed = explain(&format!("{BLACKHOLED}:8080"));
    assert!(
        allowed.contains(&format!(
            "policy: allowed by NetworkPolicy {ALLOW_WEB}: the failure is not the policies'"
        )),
        "{allowed}"
    );

    assert!(agent.stop().expect("stop agent"), "agent exits 0 on SIGTERM");
    eprintln!("agent ready after {ready_at:?}; test done after {:?}", started.elapsed());
}
