//! The agent's Kubernetes metadata index against the fake API server (no
//! root needed). No kube-apiserver can run here, so
//! `egress_tests::fake_apiserver` serves real-shaped Kubernetes JSON (Lists
//! with a resourceVersion, newline-delimited WatchEvent streams, list items
//! without apiVersion/kind, objects as `kubectl get -o json` shows them) over
//! plain HTTP on 127.0.0.1. The kube client talks to it as to a real one
//! (`kube::Config::new(url)`, no auth), through the real kube-runtime watcher.
use std::time::{Duration, Instant};

use egress_agent::attribution::kube::{KubeIndex, KubeOptions, RemoteClass, RemoteMeta, Workload};
mod kube_common;

use egress_tests::fake_apiserver::{
    Kubeconfig,
    objects::{
        self as fixtures, NODE_A, NODE_A_EXTERNAL_IP, NODE_A_IP, NODE_B, NODE_B_IP, cid, uid,
    },
};
use kube_common::{
    config, eventually, ip, metric, on_node, serve, start_on_node_a, synced, tuning,
};
use prometheus::Registry;
use serde_json::json;

#[tokio::test]
async fn pods_on_this_node_resolve_to_containers_and_workloads() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    let (registry, index) = start_on_node_a(&server);
    // Node A runs squid, the agent, redis and the report job; squid_b is on node B.
    synced(&registry, 4.0, 3.0, 3.0, 2.0).await;

    let squid = index.pod(&uid(1)).expect("squid pod");
    assert_eq!(
        (squid.namespace.as_str(), squid.name.as_str()),
        ("intra-proxy", "squid-proxy-6f9c7b8d4-x2x7q")
    );
    assert_eq!(
        squid.workload,
        Some(Workload { kind: "Deployment".into(), name: "squid-proxy".into() })
    );
    assert_eq!(squid.container_name(&cid(1)), Some("squid"));
    assert_eq!(squid.container_name(&cid(2)), Some("exporter"));
    assert_eq!(squid.container_name(&format!("containerd://{}", cid(2))), Some("exporter"));
    assert_eq!(squid.container_name(&cid(3)), None, "another pod's container");
    assert_eq!(squid.container_name(""), None);
    assert_eq!(squid.labels.get("app").map(String::as_str), Some("squid-proxy"));
    assert_eq!(squid.node.as_deref(), Some(NODE_A));
    assert_eq!(squid.ip, vec![ip(fixtures::SQUID_IP)]);
    assert_eq!(squid.phase.as_deref(), Some("Running"));
    assert!(
        squid.containers.iter().all(|c| c.id.len() == 64 && !c.id.contains(':')),
        "{:?}",
        squid.containers
    );

    let agent = index.pod(&uid(3)).expect("daemonset pod");
    assert_eq!(
        agent.workload,
        Some(Workload { kind: "DaemonSet".into(), name: "egress-agent".into() })
    );
    assert!(agent.host_network);
    let redis = index.pod(&uid(4)).expect("statefulset pod");
    assert_eq!(redis.workload, Some(Workload { kind: "StatefulSet".into(), name: "redis".into() }));
    assert_eq!(redis.container_name(&cid(5)), Some("redis"));
    let report = index.pod(&uid(5)).expect("cronjob pod");
    assert_eq!(
        report.workload,
        Some(Workload { kind: "CronJob".into(), name: "nightly-report".into() })
    );
    assert_eq!(report.container_name(&cid(6)), Some("report"));
    assert_eq!(report.container_name(&cid(60)), Some("report"), "the instance before the restart");

    // The systemd cgroup driver spells the UID with underscores.
    assert_eq!(index.pod(&uid(4).replace('-', "_")).map(|p| p.name), Some("redis-0".into()));
    assert!(index.pod(&uid(2)).is_none(), "node B's pod is not watched from node A");
    assert!(index.pod("no-such-uid").is_none());

    // The pod watch asked the apiserver for this node's pods only. The
    // watch follows the list, a moment later on a loaded machine: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = server.requests();
    let pod_requests: Vec<&String> =
        requests.iter().filter(|r| r.starts_with("GET /api/v1/pods?")).collect();
    assert!(pod_requests.iter().any(|r| r.contains("watch=true")), "{pod_requests:?}");
    assert!(
        pod_requests.iter().all(|r| r.contains(&format!("fieldSelector=spec.nodeName={NODE_A}"))),
        "{pod_requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
            && !r.contains("fieldSelector"))
    );

    // What a sink would print.
    let json = serde_json::to_value(&squid).expect("serialize");
    assert_eq!(json["workload"], json!({"kind": "Deployment", "name": "squid-proxy"}));
    assert_eq!(json["containers"][0], json!({"id": cid(1), "name": "squid"}));
    for resource in ["pods", "services", "endpointslices", "nodes"] {
        assert_eq!(
            metric(&registry, "egress_kube_objects_malformed_total", resource),
            0.0,
            "{resource}"
        );
        assert_eq!(
            metric(&registry, "egress_kube_watch_errors_total", resource),
            0.0,
            "{resource}"
        );
    }
}

#[tokio::test]
async fn remote_addresses_resolve_to_services_backends_and_nodes() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    let registry = Registry::new();
    let all_pods = KubeOptions::default();
    let index = KubeIndex::start_with(
        config(&server),
        &all_pods,
        tuning(Duration::from_secs(60)),
        &registry,
    )
    .expect("start");
    synced(&registry, 5.0, 3.0, 3.0, 2.0).await;

    let svc = |ns: &str, name: &str| RemoteMeta {
        class: RemoteClass::Service,
        namespace: Some(ns.into()),
        name: name.into(),
        service: Some(name.into()),
    };
    let pod = |ns: &str, name: &str, service: Option<&str>| RemoteMeta {
        class: RemoteClass::Pod,
        namespace: Some(ns.into()),
        name: name.into(),
        service: service.map(Into::into),
    };
    let node = |name: &str| RemoteMeta {
        class: RemoteClass::Node,
        namespace: None,
        name: name.into(),
        service: None,
    };

    // The ClusterIP a client meant, on its port and on any other.
    assert_eq!(
        index.remote(ip(fixtures::SQUID_SVC_IP), 3128),
        Some(svc("intra-proxy", "squid-proxy-service"))
    );
    assert_eq!(
        index.remote(ip(fixtures::SQUID_SVC_IP), 80),
        Some(svc("intra-proxy", "squid-proxy-service"))
    );
    assert_eq!(index.remote(ip(fixtures::REDIS_SVC_IP), 6379), Some(svc("data", "redis")));
    // The backend it reached, with its Service: on this node and on the other.
    let squid_b = pod("intra-proxy", "squid-proxy-6f9c7b8d4-z9k2m", Some("squid-proxy-service"));
    assert_eq!(index.remote(ip(fixtures::SQUID_B_IP), 3128), Some(squid_b));
    assert_eq!(
        index.remote(ip(fixtures::REDIS_IP), 6379),
        Some(pod("data", "redis-0", Some("redis")))
    );
    // A pod behind no Service, known from the pod watch.
    assert_eq!(
        index.remote(ip(fixtures::REPORT_IP), 8080),
        Some(pod("batch", "nightly-report-28620000-hx4tq", None))
    );
    // A selector-less Service's endpoint (the proxy VM) is that Service.
    assert_eq!(index.remote(ip(fixtures::VM_SVC_IP), 3128), Some(svc("intra-proxy", "vm-squid")));
    assert_eq!(index.remote(ip(fixtures::VM_IP), 3128), Some(svc("intra-proxy", "vm-squid")));
    // Nodes by InternalIP and ExternalIP; the hostNetwork pod on node A's IP
    // does not shadow the node.
    assert_eq!(index.remote(ip(NODE_A_IP), 10250), Some(node(NODE_A)));
    assert_eq!(index.remote(ip(NODE_A_EXTERNAL_IP), 22), Some(node(NODE_A)));
    assert_eq!(index.remote(ip(NODE_B_IP), 10250), Some(node(NODE_B)));
    // Outside the cluster.
    assert_eq!(index.remote(ip("1.1.1.1"), 443), None);
    assert_eq!(index.remote(ip("10.128.2.101"), 3128), None);

    let json = serde_json::to_value(index.remote(ip(fixtures::REDIS_IP), 6379)).expect("serialize");
    assert_eq!(
        json,
        json!({"class": "pod", "namespace": "data", "name": "redis-0", "service": "redis"})
    );

    // Live changes: a new Service appears, a slice loses a backend, a node goes.
    server.apply(fixtures::service("default", "kubernetes", "10.12.0.1", 443, None));
    server.apply(fixtures::endpoint_slice("data", "redis-q7f5w", "redis", 6379, &[]));
    server.delete("Node", NODE_B);
    eventually("services, slices and nodes watched live", Duration::from_secs(5), || {
        index.remote(ip("10.12.0.1"), 443).is_some()
            && index.remote(ip(fixtures::REDIS_IP), 6379) == Some(pod("data", "redis-0", None))
            && index.remote(ip(NODE_B_IP), 10250).is_none()
    })
    .await;
    assert_eq!(metric(&registry, "egress_kube_objects", "nodes"), 1.0);
    assert_eq!(metric(&registry, "egress_kube_objects", "services"), 4.0);
}

#[tokio::test]
async fn deleted_pod_stays_resolvable_for_the_retention_then_goes() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    let registry = Registry::new();
    let retention = Duration::from_millis(1500);
    let index =
        KubeIndex::start_with(config(&server), &on_node(NODE_A), tuning(retention), &registry)
            .expect("start");
    synced(&registry, 4.0, 3.0, 3.0, 2.0).await;

    // The index stamps the deletion when it applies the event, after this.
    let deleted_at = Instant::now();
    server.delete("Pod", "data/redis-0");
    eventually("the DELETED event is applied", Duration::from_secs(5), || {
        metric(&registry, "egress_kube_objects", "pods") == 3.0
    })
    .await;
    let redis = index.pod(&uid(4)).expect("a deleted pod is kept for late events");
    assert_eq!(redis.container_name(&cid(5)), Some("redis"));

    // Meanwhile: a container restarts (MODIFIED with a new id), a pod is
    // ADDED, and a watch ends and is resumed from its resourceVersion.
    let mut restarted = cluster.squid.clone();
    restarted["status"]["containerStatuses"][0]["containerID"] =
        json!(format!("containerd://{}", cid(11)));
    restarted["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {"containerID": format!("containerd://{}", cid(1)), "exitCode": 1, "reason": "Error",
                              "startedAt": "2024-06-01T00:00:05Z", "finishedAt": "2024-06-01T00:09:00Z"}});
    server.apply(restarted);
    server.close_watches();
    let added = fixtures::pod(&fixtures::PodSpec {
        ns: "data",
        name: "redis-1",
        uid: uid(6),
        node: NODE_A,
        ip: "10.8.1.13",
        owner: Some(("apps/v1", "StatefulSet", "redis")),
        labels: json!({"app": "redis"}),
        containers: vec![("redis", "redis:7.2", cid(12))],
        host_network: false,
        restarted: None,
        host_ip: None,
    });
    server.apply(added);
    eventually(
        "MODIFIED and ADDED applied after the watch resumed",
        Duration::from_secs(5),
        || {
            index.pod(&uid(6)).is_some()
                && index.pod(&uid(1)).is_some_and(|p| p.container_name(&cid(11)) == Some("squid"))
        },
    )
    .await;
    let squid = index.pod(&uid(1)).expect("squid");
    assert_eq!(
        squid.container_name(&cid(1)),
        Some("squid"),
        "late events of the previous instance"
    );
    assert_eq!(index.remote(ip("10.8.1.13"), 6379).map(|r| r.name), Some("redis-1".into()));

    assert!(
        index.pod(&uid(4)).is_some() || deleted_at.elapsed() >= retention,
        "still within the retention"
    );
    eventually("the deleted pod is forgotten after the retention", retention * 3, || {
        index.pod(&uid(4)).is_none()
    })
    .await;
    assert!(deleted_at.elapsed() >= retention, "forgotten too early: {:?}", deleted_at.elapsed());
    assert!(
        index.pod(&uid(1)).is_some() && index.pod(&uid(6)).is_some(),
        "live pods are not pruned"
    );
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
            .count()
            >= 2
    );
}

#[tokio::test]
async fn unreachable_api_leaves_the_index_empty_and_keeps_retrying() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    let url = format!("http://{addr}");
    drop(closed);
    let registry = Registry::new();
    let started = Instant::now();
    let config = kube::Config::new(url.parse().expect("url"));
    let index =
        KubeIndex::start_with(config, &on_node(NODE_A), tuning(Duration::from_secs(60)), &registry)
            .expect("start");
    assert!(started.elapsed() < Duration::from_secs(1), "start must not wait for the API");

    eventually("every watch failed at least twice (retrying)", Duration::from_secs(10), || {
        ["pods", "services", "endpointslices", "nodes"]
            .iter()
            .all(|r| metric(&registry, "egress_kube_watch_errors_total", r) >= 2.0)
    })
    .await;
    for resource in ["pods", "services", "endpointslices", "nodes"] {
        assert_eq!(metric(&registry, "egress_kube_watch_up", resource), 0.0, "{resource}");
        assert_eq!(metric(&registry, "egress_kube_objects", resource), 0.0, "{resource}");
    }
    assert!(index.pod(&uid(1)).is_none());
    assert_eq!(index.remote(ip(fixtures::SQUID_SVC_IP), 3128), None);

    // The same through a kubeconfig file: `start` returns, nothing resolves.
    let kubeconfig = Kubeconfig::write(addr);
    let registry = Registry::new();
    let opts = KubeOptions { node_name: None, kubeconfig: Some(kubeconfig.0.clone()) };
    let index = tokio::time::timeout(Duration::from_secs(5), KubeIndex::start(opts, &registry))
        .await
        .expect("start returns at once")
        .expect("a kubeconfig is enough to start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&registry, "egress_kube_watch_up", "pods"), 0.0);
    assert!(index.pod(&uid(1)).is_none());
    drop(kubeconfig);

    let missing =
        KubeOptions { node_name: None, kubeconfig: Some("/nonexistent/kubeconfig".into()) };
    assert!(
        KubeIndex::start(missing, &Registry::new()).await.is_err(),
        "an unreadable kubeconfig is a config error"
    );
}

#[tokio::test]
async fn kubeconfig_points_start_at_the_server() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    let kubeconfig = Kubeconfig::write(server.addr);
    let registry = Registry::new();
    let opts =
        KubeOptions { node_name: Some(NODE_A.into()), kubeconfig: Some(kubeconfig.0.clone()) };
    let index = KubeIndex::start(opts, &registry).await.expect("start");
    synced(&registry, 4.0, 3.0, 3.0, 2.0).await;
    drop(kubeconfig);
    assert_eq!(index.pod(&uid(1)).map(|p| p.name), Some("squid-proxy-6f9c7b8d4-x2x7q".into()));
    let clone = index.clone();
    drop(index);
    assert!(clone.pod(&uid(1)).is_some(), "clones share the index");
}
