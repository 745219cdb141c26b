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
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{agent_bin, api_socket_for, free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    fake_apiserver::{
        FakeApiServer, Kubeconfig,
        objects::{self, PodSpec},
    },
    netns::Rule,
    netpol::{self, PodRef},
    require_root,
};
use serde_json::{Value, json};

const POD_IP: &str = "198.18.61.2";
const ROUTER_IN: &str = "198.18.61.1";
const ROUTER_OUT: &str = "198.18.62.1";
const ALLOWED: &str = "198.18.62.2";
const EXCEPTED: &str = "198.18.62.3";
const BLACKHOLED: &str = "198.18.62.4";
/// A ClusterIP inside the allowed block whose backend is the excepted address.
const SVC_TO_DENIED: &str = "198.18.62.10";
/// A ClusterIP outside every allowed block whose backend is allowed (and blackholed).
const SVC_TO_ALLOWED: &str = "198.19.61.10";

const NODE: &str = "eo-np-node-a";
const NS: &str = "production";
const POD: &str = "web-6c9f8d7b5-k2m4p";
const DENY_ALL: &str = "production/default-deny-egress";
const ALLOW_WEB: &str = "production/allow-web-egress";

const READY: Duration = Duration::from_secs(30);
const RECORD: Duration = Duration::from_secs(20);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn policies() -> Vec<Value> {
    vec![
        objects::network_policy(
            NS,
            "default-deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
        objects::network_policy(
            NS,
            "allow-web-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "198.18.62.0/24", "except": [format!("{EXCEPTED}/32")]}}],
                    "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8090}]
                }]
            }),
        ),
    ]
}

/// Accepts on `0.0.0.0:port` in `ns` and says "ok"; stopped on drop.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &Netns, port: u16) -> Listener {
        let listener = ns
            .within("eo-np-listen", move || TcpListener::bind(("0.0.0.0", port)))
            .expect("listener thread")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            let deadline = Instant::now() + Duration::from_secs(180);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"ok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Listener { stop, thread: Some(thread) }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the client saw: `ok`, `timeout`, or the error.
struct Outcome {
    pid: u64,
    said: String,
}

/// A python client in the pod: waits until moved into the pod cgroup,
/// connects with a 2.5 s timeout and says what happened.
fn connect_from_pod(ns: &Netns, cg: &TestCgroup, to: SocketAddr) -> Outcome {
    let script = format!(
        "import socket,sys,time\nfor _ in range(200):\n  if '{}' in open('/proc/self/cgroup').read(): break\n  time.sleep(0.01)\nelse:\n  sys.exit('never moved into the cgroup')\ntry:\n  s=socket.create_connection(('{}',{}),timeout=2.5)\n  s.settimeout(5)\n  print('ok' if s.recv(10)==b'ok\\n' else 'bad greeting')\n  s.close()\nexcept socket.timeout:\n  print('timeout')\nexcept OSError as e:\n  print('error', e.errno)\n",
        cg.path().file_name().and_then(|n| n.to_str()).expect("leaf name"),
        to.ip(),
        to.port()
    );
    let child = ns
        .command(&["python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let pid = u64::from(child.id());
    cg.enter(child.id()).expect("move the client into the pod cgroup");
    let out = child.wait_with_output().expect("client output");
    assert!(out.status.success(), "client to {to}: {}", out.status);
    Outcome { pid, said: String::from_utf8_lossy(&out.stdout).trim().to_string() }
}

#[test]
fn policy_verdicts_agree_with_the_enforcing_datapath() {
    require_root!();
    let started = Instant::now();

    // Network.
    let client = Netns::new("npc").expect("pod ns");
    let router = Netns::new("npr").expect("router ns");
    let outside = Netns::new("npo").expect("outside ns");
    Veth::link(&client, &[&format!("{POD_IP}/24")], &router, &[&format!("{ROUTER_IN}/24")])
        .expect("pod veth");
    Veth::link(
        &router,
        &[&format!("{ROUTER_OUT}/24")],
        &outside,
        &[&format!("{ALLOWED}/24"), &format!("{EXCEPTED}/24"), &format!("{BLACKHOLED}/24")],
    )
    .expect("outside veth");
    client.run(&["ip", "route", "add", "default", "via", ROUTER_IN]).expect("pod route");
    outside.run(&["ip", "route", "add", "default", "via", ROUTER_OUT]).expect("outside route");
    router.sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
    let _listeners = [Listener::start(&outside, 8080), Listener::start(&outside, 9090)];
    // Beyond the policy engine: a destination that never answers.
    let _blackhole = Rule::add(
        &outside,
        false,
        "filter",
        &["INPUT", "-d", &format!("{BLACKHOLED}/32"), "-j", "DROP"],
    )
    .expect("blackhole");
    // kube-proxy-style ClusterIPs.
    let dnat = |cluster_ip: &str, backend: &str| {
        Rule::add(
            &router,
            false,
            "nat",
            &[
                "PREROUTING",
                "-d",
                &format!("{cluster_ip}/32"),
                "-p",
                "tcp",
                "--dport",
                "8080",
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{backend}:8080"),
            ],
        )
        .expect("DNAT rule")
    };
    let _dnat_denied = dnat(SVC_TO_DENIED, EXCEPTED);
    let _dnat_allowed = dnat(SVC_TO_ALLOWED, BLACKHOLED);

    // The pod and the policies, once for the engine and once for the API.
    let cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 61).expect("pod cgroup");
    let labels: BTreeMap<String, String> = [("app", "web"), ("pod-template-hash", "6c9f8d7b5")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let policies = policies();
    let rules =
        netpol::egress_rules(&policies, &PodRef { namespace: NS, labels: &labels, ip: POD_IP })
            .expect("engine rules")
            .expect("the pod is isolated");
    eprintln!("policy engine rules (router filter table):\n{rules}");
    netpol::load(&router, &rules).expect("load the engine's rules");

    let pod = objects::pod(&PodSpec {
        ns: NS,
        name: POD,
        uid: cg.pod_uid.clone(),
        node: NODE,
        ip: POD_IP,
        owner: Some(("apps/v1", "ReplicaSet", "web-6c9f8d7b5")),
        labels: json!(labels),
        containers: vec![("app", "python:3.12-slim", cg.container_id.clone())],
        host_ip: Some(ROUTER_OUT),
        ..PodSpec::default()
    });
    let mut objs = vec![
        pod,
        objects::namespace(NS, json!({"team": "shop"})),
        objects::node(NODE, ROUTER_OUT, None),
        objects::service(NS, "ledger", SVC_TO_DENIED, 8080, None),
        objects::endpoint_slice(NS, "ledger-x7k2p", "ledger", 8080, &[(EXCEPTED, None)]),
        objects::service(NS, "archive", SVC_TO_ALLOWED, 8080, None),
        objects::endpoint_slice(NS, "archive-m3q9z", "archive", 8080, &[(BLACKHOLED, None)]),
    ];
    objs.extend(policies.iter().cloned());
    let api = FakeApiServer::with(objs);
    let kubeconfig = Kubeconfig::write(api.addr);
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
    let mut agent = Agent::start(AgentMode::Run {
        metrics: metrics_addr,
        extra: vec![
            "--kube".into(),
            "true".into(),
            "--kubeconfig".into(),
            kubeconfig.0.display().to_string(),
            "--node-name".into(),
            NODE.into(),
            "--conntrack-netns".into(),
            format!("/run/netns/{}", router.name),
        ],
    })
    .expect("agent");
    api.wait_watched(
        &["/api/v1/pods", "/api/v1/namespaces", "/apis/networking.k8s.io/v1/networkpolicies"],
        1,
        READY,
        &agent,
    );
    let ready_at = started.elapsed();

    // (target, what the datapath must do, the agent's reason, its policy verdict, policies)
    let both = format!("{ALLOW_WEB},{DENY_ALL}");
    let cases: [(SocketAddr, &str, &str, &str, &str); 6] = [
        (sa(ALLOWED, 8080), "ok", "", "", ""),
        (sa(EXCEPTED, 8080), "timeout", "policy_denied", "denied", &both),
        (sa(ALLOWED, 9090), "timeout", "policy_denied", "denied", &both),
        (sa(BLACKHOLED, 8080), "timeout", "timeout", "allowed", ALLOW_WEB),
        (sa(SVC_TO_DENIED, 8080), "timeout", "policy_denied", "denied", &both),
        (sa(SVC_TO_ALLOWED, 8080), "timeout", "timeout", "allowed", ALLOW_WEB),
    ];
    for (to, datapath, reason, verdict, named) in cases {
        let out = connect_from_pod(&client, &cg, to);
        assert_eq!(out.said, datapath, "the datapath's answer to {to}");
        let rec = agent
            .wait_for(RECORD, |v| v["pid"].as_u64() == Some(out.pid))
            .unwrap_or_else(|e| panic!("record of {to}: {e:#}\n{}", agent.stderr_text()));
        eprintln!("{to}: client said {datapath}; agent: {rec}");
        assert_eq!(rec["namespace"], NS, "{rec}");
        assert_eq!(rec["pod"], POD, "{rec}");
        if datapath == "ok" {
            assert_eq!(rec["verdict"], "ok", "{rec}");
            assert!(
                rec.get("policy_verdict").is_none(),
                "an open connect is not asked about: {rec}"
            );
            continue;
        }
        assert_eq!(rec["verdict"], "failed", "{rec}");
        assert_eq!(rec["reason"], reason, "{to}: {rec}");
        assert_eq!(rec["policy_verdict"], verdict, "{to}: {rec}");
        assert_eq!(rec["policy"], named, "{to}: {rec}");
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
    let sock = api_socket_for(&metrics_addr);
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
