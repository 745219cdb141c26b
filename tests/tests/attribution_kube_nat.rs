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
    fake_apiserver::{FakeApiServer, Kubeconfig},
    agent::{free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
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
// The Kubernetes objects, shaped as the API returns them (managedFields left out).

fn client_pod(uid: &str, container_id: &str) -> Value {
    let container = |name: &str, image: &str| {
        json!({
            "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                              "name": "kube-api-access-9zq4w", "readOnly": true}]
        })
    };
    let status = |name: &str, image: &str, id: &str| {
        json!({
            "containerID": format!("containerd://{id}"),
            "image": format!("docker.io/library/{image}"),
            "imageID": format!("docker.io/library/{}@sha256:{}", image.split(':').next().unwrap_or(image), SIDECAR_CID),
            "lastState": {}, "name": name, "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": "2024-06-01T00:00:05Z"}}
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": "2024-06-01T00:00:03Z",
            "generateName": format!("{DEPLOY}-{TEMPLATE_HASH}-"),
            "labels": {"app": DEPLOY, "pod-template-hash": TEMPLATE_HASH},
            "name": POD,
            "namespace": NS,
            "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "ReplicaSet", "name": format!("{DEPLOY}-{TEMPLATE_HASH}"),
                                 "uid": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}],
            "resourceVersion": "1017",
            "uid": uid
        },
        "spec": {
            "containers": [container(CONTAINER, "python:3.12-slim"), container(SIDECAR, "fluent-bit:3.0")],
            "dnsPolicy": "ClusterFirst", "enableServiceLinks": true, "nodeName": NODE,
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0, "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "securityContext": {}, "serviceAccount": "default",
            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
            ],
            "volumes": [{"name": "kube-api-access-9zq4w", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}}
            ]}}]
        },
        "status": {
            "conditions": [
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:04Z", "status": "True", "type": "PodReadyToStartContainers"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:03Z", "status": "True", "type": "Initialized"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:06Z", "status": "True", "type": "Ready"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:06Z", "status": "True", "type": "ContainersReady"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:03Z", "status": "True", "type": "PodScheduled"}
            ],
            "containerStatuses": [
                status(CONTAINER, "python:3.12-slim", container_id),
                status(SIDECAR, "fluent-bit:3.0", SIDECAR_CID)
            ],
            "hostIP": ROUTER_OUT, "hostIPs": [{"ip": ROUTER_OUT}],
            "phase": "Running",
            "podIP": CLIENT_IP, "podIPs": [{"ip": CLIENT_IP}],
            "qosClass": "Burstable",
            "startTime": "2024-06-01T00:00:03Z"
        }
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"creationTimestamp": "2024-05-30T10:00:00Z", "labels": {"app": SVC}, "name": SVC,
                     "namespace": NS, "resourceVersion": "812", "uid": "6c5d4e3f-2a1b-4c0d-9e8f-7a6b5c4d3e2f"},
        "spec": {
            "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP], "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": SVC_PORT, "protocol": "TCP", "targetPort": BACKEND_PORT}],
            "selector": {"app": SVC}, "sessionAffinity": "None", "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

fn endpoint_slice() -> Value {
    json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": [{
            "addresses": [BACKEND_IP],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": OTHER_NODE,
            "targetRef": {"kind": "Pod", "name": BACKEND_POD, "namespace": NS, "uid": BACKEND_UID}
        }],
        "kind": "EndpointSlice",
        "metadata": {
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-30T10:00:07Z"},
            "creationTimestamp": "2024-05-30T10:00:00Z", "generateName": format!("{SVC}-"), "generation": 2,
            "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "kubernetes.io/service-name": SVC},
            "name": format!("{SVC}-x8k2d"), "namespace": NS,
            "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "Service", "name": SVC, "uid": "6c5d4e3f-2a1b-4c0d-9e8f-7a6b5c4d3e2f"}],
            "resourceVersion": "815",
            "uid": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
        },
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}]
    })
}

fn node(name: &str, ip: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "creationTimestamp": "2024-05-20T08:00:00Z",
            "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            "name": name, "resourceVersion": "990", "uid": uid
        },
        "spec": {"podCIDR": "198.18.41.0/24", "podCIDRs": ["198.18.41.0/24"]},
        "status": {
            "addresses": [{"address": ip, "type": "InternalIP"}, {"address": name, "type": "Hostname"}],
            "allocatable": {"cpu": "1930m", "memory": "5758392Ki", "pods": "110"},
            "capacity": {"cpu": "2", "memory": "8140216Ki", "pods": "110"},
            "conditions": [{"lastHeartbeatTime": "2024-06-01T00:00:00Z", "lastTransitionTime": "2024-05-20T08:01:00Z",
                            "message": "kubelet is posting ready status", "reason": "KubeletReady",
                            "status": "True", "type": "Ready"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": "0b4a0a58-3c1e-4d52-8a8e-0e1f5b5a1c11",
                         "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.6.56",
                         "kubeProxyVersion": "v1.33.1", "kubeletVersion": "v1.33.1",
                         "machineID": "5f0c2a8e1b9d4c7f8e6a3b2c1d0e9f8a", "operatingSystem": "linux",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": "5f0c2a8e-1b9d-4c7f-8e6a-3b2c1d0e9f8a"}
        }
    })
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
        let listener = outside.within("eo-kn-backend", move || TcpListener::bind(at)).expect("backend thread").expect("bind backend");
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
    rec[field].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{field} is no ip:port: {rec}"))
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
    Veth::link(&client, &[&format!("{CLIENT_IP}/24")], &router, &[&format!("{ROUTER_IN}/24")]).expect("client veth");
    let out = Veth::link(&router, &[&format!("{ROUTER_OUT}/24")], &outside, &[&format!("{BACKEND_IP}/24")]).expect("outside veth");
    client.run(&["ip", "route", "add", "default", "via", ROUTER_IN]).expect("client route");
    router.sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
    let dport = SVC_PORT.to_string();
    let backend = sa(BACKEND_IP, BACKEND_PORT).to_string();
    let _dnat = Rule::add(
        &router,
        false,
        "nat",
        &["PREROUTING", "-d", &format!("{CLUSTER_IP}/32"), "-p", "tcp", "--dport", &dport, "-j", "DNAT", "--to-destination", &backend],
    )
    .expect("DNAT rule");
    let _masq = Rule::add(&router, false, "nat", &["POSTROUTING", "-o", &out.a_if, "-j", "MASQUERADE"]).expect("MASQUERADE rule");
    let _backend = Backend::start(&outside, sa(BACKEND_IP, BACKEND_PORT));

    // The pod: a kubelet-shaped cgroup (systemd driver, burstable QoS).
    let cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 41).expect("pod cgroup");

    // The fake API server and a kubeconfig pointing at it.
    let api = FakeApiServer::start(vec![
        ("/api/v1/pods", "v1", "Pod", vec![client_pod(&cg.pod_uid, &cg.container_id)]),
        ("/api/v1/services", "v1", "Service", vec![service()]),
        ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice", vec![endpoint_slice()]),
        (
            "/api/v1/nodes",
            "v1",
            "Node",
            vec![node(NODE, ROUTER_OUT, "2e3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b"), node(OTHER_NODE, "198.18.42.3", "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d")],
        ),
    ]);
    let collections = ["/api/v1/pods", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes"];
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
    let mut run = Agent::start(AgentMode::Run { metrics: metrics_addr, extra: agent_args }).expect("run agent");
    api.wait_watched(&collections, 2, READY, &run);
    let ready_at = started.elapsed();

    // The pods were listed for this node only.
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /api/v1/pods?") && r.contains(&format!("fieldSelector=spec.nodeName={NODE}")) && !r.contains("watch=")),
        "pods listed with the node's field selector:\n{}",
        reqs.join("\n")
    );

    // The bar: pod → ClusterIP, DNAT'ed to the backend and masqueraded.
    let cluster = sa(CLUSTER_IP, SVC_PORT);
    let pid = connect_from_pod(&client, &cg, cluster);
    let rec = watch.wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid)).expect("watch record of the ClusterIP flow");
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
    assert_eq!(field_addr(&rec, "dst_actual"), sa(BACKEND_IP, BACKEND_PORT), "the backend behind the DNAT: {rec}");
    let snat = field_addr(&rec, "snat");
    assert_eq!(snat.ip(), ip(ROUTER_OUT), "MASQUERADE'd to the router's outside address: {rec}");
    assert_ne!(snat.port(), 0, "{rec}");

    // Same pod straight to the backend pod: no DNAT, still masqueraded; the
    // remote is the pod behind the Service.
    let direct = sa(BACKEND_IP, BACKEND_PORT);
    let pid2 = connect_from_pod(&client, &cg, direct);
    let rec2 = watch.wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid2)).expect("watch record of the direct flow");
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
    let via_run = run.wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid)).expect("run --log-flows record (ClusterIP flow)");
    assert_eq!(via_run["dst_name"], rec["dst_name"], "{via_run}");
    assert_eq!(field_addr(&via_run, "snat").ip(), ip(ROUTER_OUT), "{via_run}");
    run.wait_for(RECORD, |v| v["pid"].as_u64() == Some(pid2)).expect("run --log-flows record (direct flow)");
    // A record is counted before it is printed: both are in by now.
    let text = run.http_get("/metrics").expect("GET /metrics");
    let workload = format!("Deployment/{DEPLOY}");
    let who = [("namespace", NS), ("workload", workload.as_str())];
    let count = |class: &str| {
        metric_sum(&text, "egress_connections_total", &[who[0], who[1], ("dst_class", class), ("result", "ok"), ("reason", "")])
    };
    let series: Vec<&str> = text.lines().filter(|l| l.starts_with("egress_connections_total{")).collect();
    assert_eq!(count("service"), 1.0, "the ClusterIP flow, once:\n{}", series.join("\n"));
    assert_eq!(count("pod"), 1.0, "the direct flow, once:\n{}", series.join("\n"));
    assert_eq!(metric_sum(&text, "egress_connections_total", &who), 2.0, "nothing else from this pod:\n{}", series.join("\n"));
    for unbounded in [POD, CLIENT_IP, CLUSTER_IP, BACKEND_IP, BACKEND_POD, cg.pod_uid.as_str()] {
        assert!(!series.iter().any(|l| l.contains(unbounded)), "no per-pod/per-IP label ({unbounded}) by default:\n{}", series.join("\n"));
    }
    for resource in ["pods", "services", "endpointslices", "nodes"] {
        assert_eq!(metric_sum(&text, "egress_kube_watch_up", &[("resource", resource)]), 1.0, "{resource} watch up\n{text}");
        assert_eq!(metric_sum(&text, "egress_kube_objects_malformed_total", &[("resource", resource)]), 0.0, "{resource}: real-shaped JSON decodes\n{text}");
    }
    assert_eq!(metric_sum(&text, "egress_kube_objects", &[("resource", "pods")]), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_kube_objects", &[("resource", "nodes")]), 2.0, "{text}");

    assert!(run.stop().expect("stop run agent"), "run agent exits 0 on SIGTERM");
    assert!(watch.stop().expect("stop watch agent"), "watch agent exits 0 on SIGTERM");
    eprintln!("agents ready after {ready_at:?}; test done after {:?}", started.elapsed());
}
