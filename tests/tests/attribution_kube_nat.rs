//! The attribution bar end to end, with the real agent binary and real kernel
//! parts: a process in a kubelet-shaped cgroup connects, from a "pod" network
//! namespace, to a Service ClusterIP that a router namespace DNATs
//! kube-proxy-style to a backend and MASQUERADEs towards the outside. The
//! agent (`watch -o json`, and `run` for the metrics) must name the pod, its
//! container and Deployment, the Service the client meant, the backend it
//! really reached and the address NAT gave it.
//!
//! ```text
//! client 198.18.41.2 ── 198.18.41.1 router 198.18.42.1 ── 198.18.42.2 outside (backend :8080)
//!   (pod shop/web-…)        DNAT 198.19.41.10:80 → 198.18.42.2:8080
//!                           MASQUERADE -o outside (198.18.42.1 = node-a's InternalIP)
//! ```
//!
//! Kubernetes metadata: no kube-apiserver can run on the machines this is
//! built and tested on, so the API server here is a FAKE, a plain-HTTP server
//! on 127.0.0.1 inside this test process. It serves real-shaped Kubernetes
//! JSON (as `kubectl get -o json` / the List and Watch endpoints return it)
//! for the four collections the agent watches: List (`GET /api/v1/pods?…`,
//! `fieldSelector=spec.nodeName=` honoured) and Watch (`?watch=1`: a
//! `BOOKMARK`, then the stream held open with no events for a bounded time).
//! The agent reaches it through a kubeconfig file, as it would a real one.
//!
//! Addresses exist only inside the test's namespaces (RFC 2544 range).
use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    fake_apiserver::{
        FakeApiServer, Kubeconfig,
        objects::{self, PodSpec},
    },
    netns::Rule,
    require_root,
};
use serde_json::{Value, json};

const CLIENT_IP: &str = "198.18.41.2";
const ROUTER_IN: &str = "198.18.41.1";
const ROUTER_OUT: &str = "198.18.42.1";
const BACKEND_IP: &str = "198.18.42.2";
const CLUSTER_IP: &str = "198.19.41.10";
const SVC_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

const NODE: &str = "eo-node-a";
const OTHER_NODE: &str = "eo-node-b";
const NS: &str = "shop";
const DEPLOY: &str = "web";
const TEMPLATE_HASH: &str = "5d8f7c9b6d";
const POD: &str = "web-5d8f7c9b6d-q7x2p";
const CONTAINER: &str = "app";
const SIDECAR: &str = "log-shipper";
const SVC: &str = "payments";
const BACKEND_POD: &str = "payments-7b9d6f5c48-m4kzt";
const BACKEND_UID: &str = "3f1e2d4c-8b7a-4c6d-9e5f-0a1b2c3d4e5f";
/// The sidecar's container id: another container of the same pod.
const SIDECAR_CID: &str = "8e1f0a3b7c2d4e5f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

/// Every wait in this test is bounded by one of these.
const READY: Duration = Duration::from_secs(30);
const RECORD: Duration = Duration::from_secs(15);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

// ---------------------------------------------------------------------------
// The Kubernetes objects (the fake API server's fixture builders).

fn client_pod(uid: &str, container_id: &str) -> Value {
    objects::pod(&PodSpec {
        ns: NS,
        name: POD,
        uid: uid.to_string(),
        node: NODE,
        ip: CLIENT_IP,
        owner: Some(("apps/v1", "ReplicaSet", &format!("{DEPLOY}-{TEMPLATE_HASH}"))),
        labels: json!({"app": DEPLOY, "pod-template-hash": TEMPLATE_HASH}),
        containers: vec![
            (CONTAINER, "python:3.12-slim", container_id.to_string()),
            (SIDECAR, "fluent-bit:3.0", SIDECAR_CID.to_string()),
        ],
        host_ip: Some(ROUTER_OUT),
        ..PodSpec::default()
    })
}

fn service() -> Value {
    objects::service(NS, SVC, CLUSTER_IP, SVC_PORT, Some(json!({"app": SVC})))
}

fn endpoint_slice() -> Value {
    objects::endpoint_slice(
        NS,
        &format!("{SVC}-x8k2d"),
        SVC,
        BACKEND_PORT,
        &[(BACKEND_IP, Some((BACKEND_POD, BACKEND_UID.to_string(), OTHER_NODE)))],
    )
}

// ---------------------------------------------------------------------------
// Traffic.

/// The backend: accepts, says "ok", closes. Stopped and joined on drop.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(outside: &Netns, at: SocketAddr) -> Backend {
        let listener = outside
            .within("eo-kn-backend", move || TcpListener::bind(at))
            .expect("backend thread")
            .expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
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
        Backend { stop, thread: Some(thread) }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A python client in `ns` that waits until it has been moved into `cg`,
/// then connects to `to`, reads the greeting and closes. Returns its pid.
fn connect_from_pod(ns: &Netns, cg: &TestCgroup, to: SocketAddr) -> u64 {
    let script = format!(
        "import socket,sys,time\nfor _ in range(200):\n  if '{}' in open('/proc/self/cgroup').read(): break\n  time.sleep(0.01)\nelse:\n  sys.exit('never moved into the cgroup')\ns=socket.create_connection(('{}',{}),timeout=5)\ns.settimeout(5)\nassert s.recv(10)==b'ok\\n'\ns.close()",
        cg.path().file_name().and_then(|n| n.to_str()).expect("leaf name"),
        to.ip(),
        to.port()
    );
    let child: Child = ns.command(&["python3", "-c", &script]).spawn().expect("spawn python3");
    let mut child = KillOnDrop(child);
    cg.enter(child.0.id()).expect("move the client into the pod cgroup");
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "client to {to} still running after 15 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "client to {to} failed: {st}");
    u64::from(child.0.id())
}

/// Kills and reaps a child still running when dropped (a failed assertion).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn field_addr(rec: &Value, field: &str) -> SocketAddr {
    rec[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} is no ip:port: {rec}"))
}

// ---------------------------------------------------------------------------

#[test]
fn pod_flow_to_dnat_clusterip_is_attributed_end_to_end() {
    require_root!();
    let started = Instant::now();

    // Network: pod namespace ↔ router (kube-proxy-style NAT) ↔ outside.
    let client = Netns::new("knc").expect("client ns");
    let router = Netns::new("knr").expect("router ns");
    let outside = Netns::new("kno").expect("outside ns");
    Veth::link(&client, &[&format!("{CLIENT_IP}/24")], &router, &[&format!("{ROUTER_IN}/24")])
        .expect("client veth");
    let out = Veth::link(
        &router,
        &[&format!("{ROUTER_OUT}/24")],
        &outside,
        &[&format!("{BACKEND_IP}/24")],
    )
    .expect("outside veth");
    client.run(&["ip", "route", "add", "default", "via", ROUTER_IN]).expect("client route");
    router.sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
    let dport = SVC_PORT.to_string();
    let backend = sa(BACKEND_IP, BACKEND_PORT).to_string();
    let _dnat = Rule::add(
        &router,
        false,
        "nat",
        &[
            "PREROUTING",
            "-d",
            &format!("{CLUSTER_IP}/32"),
            "-p",
            "tcp",
            "--dport",
            &dport,
            "-j",
            "DNAT",
            "--to-destination",
            &backend,
        ],
    )
    .expect("DNAT rule");
    let _masq =
        Rule::add(&router, false, "nat", &["POSTROUTING", "-o", &out.a_if, "-j", "MASQUERADE"])
            .expect("MASQUERADE rule");
    let _backend = Backend::start(&outside, sa(BACKEND_IP, BACKEND_PORT));

    // The pod: a kubelet-shaped cgroup (systemd driver, burstable QoS).
    let cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 41).expect("pod cgroup");

    // The fake API server and a kubeconfig pointing at it.
    let api = FakeApiServer::with([
        client_pod(&cg.pod_uid, &cg.container_id),
        service(),
        endpoint_slice(),
        objects::node(NODE, ROUTER_OUT, None),
        objects::node(OTHER_NODE, "198.18.42.3", None),
    ]);
    let collections = [
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/nodes",
    ];
    let kubeconfig = Kubeconfig::write(api.addr);

    let agent_args = vec![
        "--kube".to_string(),
        "true".into(),
        "--kubeconfig".into(),
        kubeconfig.0.display().to_string(),
        "--node-name".into(),
        NODE.into(),
        "--conntrack-netns".into(),
        format!("/run/netns/{}", router.name),
    ];
    let mut watch = Agent::start(AgentMode::Watch(agent_args.clone())).expect("watch agent");
    api.wait_watched(&collections, 1, READY, &watch);
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
    let mut run = Agent::start(AgentMode::Run { metrics: metrics_addr, extra: agent_args })
        .expect("run agent");
    api.wait_watched(&collections, 2, READY, &run);
    let ready_at = started.elapsed();

    // The pods were listed for this node only.
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /api/v1/pods?")
            && r.contains(&format!("fieldSelector=spec.nodeName={NODE}"))
            && !r.contains("watch=")),
        "pods listed with the node's field selector:\n{}",
        reqs.join("\n")
    );

    // The bar: pod → ClusterIP, DNAT'ed to the backend and masqueraded.
    let cluster = sa(CLUSTER_IP, SVC_PORT);
    let pid = connect_from_pod(&client, &cg, cluster);
    let rec = watch
        .wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid))
        .expect("watch record of the ClusterIP flow");
    eprintln!("watch -o json: {rec}");
    assert_eq!(rec["phase"], "connect", "{rec}");
    assert_eq!(rec["verdict"], "ok", "{rec}");
    assert_eq!(rec["pod_uid"].as_str(), Some(cg.pod_uid.as_str()), "{rec}");
    assert_eq!(rec["container_id"].as_str(), Some(cg.container_id.as_str()), "{rec}");
    assert_eq!(rec["namespace"], NS, "{rec}");
    assert_eq!(rec["pod"], POD, "{rec}");
    assert_eq!(rec["container"], CONTAINER, "the container id's name, not the sidecar's: {rec}");
    assert_eq!(rec["workload"], format!("Deployment/{DEPLOY}"), "{rec}");
    assert_eq!(field_addr(&rec, "src").ip(), ip(CLIENT_IP), "{rec}");
    assert_eq!(field_addr(&rec, "dst"), cluster, "dst is what connect() asked for: {rec}");
    assert_eq!(rec["dst_name"], format!("{NS}/{SVC}:{SVC_PORT}"), "{rec}");
    assert_eq!(rec["dst_class"], "service", "{rec}");
    assert_eq!(
        field_addr(&rec, "dst_actual"),
        sa(BACKEND_IP, BACKEND_PORT),
        "the backend behind the DNAT: {rec}"
    );
    let snat = field_addr(&rec, "snat");
    assert_eq!(snat.ip(), ip(ROUTER_OUT), "MASQUERADE'd to the router's outside address: {rec}");
    assert_ne!(snat.port(), 0, "{rec}");

    // Same pod straight to the backend pod: no DNAT, still masqueraded; the
    // remote is the pod behind the Service.
    let direct = sa(BACKEND_IP, BACKEND_PORT);
    let pid2 = connect_from_pod(&client, &cg, direct);
    let rec2 = watch
        .wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid2))
        .expect("watch record of the direct flow");
    eprintln!("watch -o json: {rec2}");
    assert_eq!(rec2["verdict"], "ok", "{rec2}");
    assert_eq!(rec2["namespace"], NS, "{rec2}");
    assert_eq!(rec2["workload"], format!("Deployment/{DEPLOY}"), "{rec2}");
    assert_eq!(field_addr(&rec2, "dst"), direct, "{rec2}");
    assert_eq!(rec2["dst_class"], "pod", "{rec2}");
    assert_eq!(rec2["dst_name"], format!("{NS}/{BACKEND_POD}"), "{rec2}");
    assert_eq!(field_addr(&rec2, "dst_actual"), direct, "{rec2}");
    assert_eq!(field_addr(&rec2, "snat").ip(), ip(ROUTER_OUT), "{rec2}");

    // The same flows in egress_connections_total, with bounded labels only.
    let via_run = run
        .wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid))
        .expect("run --log-flows record (ClusterIP flow)");
    assert_eq!(via_run["dst_name"], rec["dst_name"], "{via_run}");
    assert_eq!(field_addr(&via_run, "snat").ip(), ip(ROUTER_OUT), "{via_run}");
    run.wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid2))
        .expect("run --log-flows record (direct flow)");
    // A record is counted before it is printed: both are in by now.
    let text = run.http_get("/metrics").expect("GET /metrics");
    let workload = format!("Deployment/{DEPLOY}");
    let who = [("namespace", NS), ("workload", workload.as_str())];
    let count = |class: &str| {
        metric_sum(
            &text,
            "egress_connections_total",
            &[who[0], who[1], ("dst_class", class), ("result", "ok"), ("reason", "")],
        )
    };
    let series: Vec<&str> =
        text.lines().filter(|l| l.starts_with("egress_connections_total{")).collect();
    assert_eq!(count("service"), 1.0, "the ClusterIP flow, once:\n{}", series.join("\n"));
    assert_eq!(count("pod"), 1.0, "the direct flow, once:\n{}", series.join("\n"));
    assert_eq!(
        metric_sum(&text, "egress_connections_total", &who),
        2.0,
        "nothing else from this pod:\n{}",
        series.join("\n")
    );
    for unbounded in [POD, CLIENT_IP, CLUSTER_IP, BACKEND_IP, BACKEND_POD, cg.pod_uid.as_str()] {
        assert!(
            !series.iter().any(|l| l.contains(unbounded)),
            "no per-pod/per-IP label ({unbounded}) by default:\n{}",
            series.join("\n")
        );
    }
    for resource in ["pods", "services", "endpointslices", "nodes"] {
        assert_eq!(
            metric_sum(&text, "egress_kube_watch_up", &[("resource", resource)]),
            1.0,
            "{resource} watch up\n{text}"
        );
        assert_eq!(
            metric_sum(&text, "egress_kube_objects_malformed_total", &[("resource", resource)]),
            0.0,
            "{resource}: real-shaped JSON decodes\n{text}"
        );
    }
    assert_eq!(metric_sum(&text, "egress_kube_objects", &[("resource", "pods")]), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_kube_objects", &[("resource", "nodes")]), 2.0, "{text}");

    assert!(run.stop().expect("stop run agent"), "run agent exits 0 on SIGTERM");
    assert!(watch.stop().expect("stop watch agent"), "watch agent exits 0 on SIGTERM");
    eprintln!("agents ready after {ready_at:?}; test done after {:?}", started.elapsed());
}
