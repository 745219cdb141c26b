//! The Kubernetes metadata index under hostile answers from the fake API
//! server (no root needed): malformed objects, errors and garbage, and the
//! NetworkPolicy/Namespace watches changing a verdict live. As in
//! `kube_index.rs`, no kube-apiserver can run here: the fake serves
//! real-shaped Kubernetes JSON over plain HTTP to the real kube client.
use std::time::Duration;

mod kube_common;

use egress_tests::fake_apiserver::{
    FakeApiServer, Mode,
    objects::{self as fixtures, NODE_A, cid, uid},
};
use kube_common::{eventually, ip, metric, serve, start_on_node_a, synced};
use serde_json::json;

#[tokio::test]
async fn malformed_objects_are_counted_and_the_rest_indexed() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    // List items that are not pods, or are pods the schema rejects, or lack identity.
    server.add_junk("Pod", json!("garbage"));
    server.add_junk(
        "Pod",
        json!({"metadata": {"name": "bad-spec", "namespace": "x", "uid": uid(70)},
                                   "spec": {"containers": "not-a-list", "nodeName": NODE_A}}),
    );
    server.add_junk(
        "Pod",
        json!({"metadata": {"name": "bad-labels", "namespace": "x", "uid": uid(71),
                                   "labels": ["a", "b"]}, "spec": {"containers": [], "nodeName": NODE_A}}),
    );
    server.add_junk(
        "Pod",
        json!({"metadata": {"name": "no-uid", "namespace": "x"}, "spec": {"containers": []}}),
    );
    // A valid pod with an IP that does not parse: indexed without it, counted.
    let mut odd_ip = fixtures::pod(&fixtures::PodSpec {
        ns: "x",
        name: "odd-ip",
        uid: uid(72),
        node: NODE_A,
        ip: "10.8.1.300",
        owner: None,
        labels: json!({}),
        containers: vec![("main", "busybox:1.36", cid(72))],
        host_network: false,
        restarted: None,
        host_ip: None,
    });
    odd_ip.as_object_mut().map(|o| o.remove("kind"));
    server.add_junk("Pod", odd_ip);
    server.add_junk(
        "Service",
        json!({"metadata": {"name": "bad", "namespace": "x", "uid": uid(73)},
                                       "spec": {"clusterIPs": 5}}),
    );
    server.add_junk("EndpointSlice", json!([1, 2, 3]));
    server.add_junk(
        "Node",
        json!({"metadata": {"name": "bad-node"}, "status": {"addresses": "10.0.0.1"}}),
    );

    let (registry, index) = start_on_node_a(&server);
    synced(&registry, 5.0, 3.0, 3.0, 2.0).await;
    assert_eq!(metric(&registry, "egress_kube_objects_malformed_total", "pods"), 5.0);
    assert_eq!(metric(&registry, "egress_kube_objects_malformed_total", "services"), 1.0);
    assert_eq!(metric(&registry, "egress_kube_objects_malformed_total", "endpointslices"), 1.0);
    assert_eq!(metric(&registry, "egress_kube_objects_malformed_total", "nodes"), 1.0);
    assert!(index.pod(&uid(1)).is_some() && index.pod(&uid(5)).is_some());
    let odd = index.pod(&uid(72)).expect("indexed without the bad address");
    assert!(odd.ip.is_empty());
    assert!(index.pod(&uid(70)).is_none() && index.pod(&uid(71)).is_none());
    assert!(index.remote(ip(fixtures::SQUID_SVC_IP), 3128).is_some());

    // A MODIFIED event carrying a malformed object: counted, the last good state kept.
    let mut broken = cluster.redis.clone();
    broken["status"]["podIPs"] = json!("10.8.1.11");
    server.apply(broken);
    eventually("the malformed MODIFIED event is counted", Duration::from_secs(5), || {
        metric(&registry, "egress_kube_objects_malformed_total", "pods") == 6.0
    })
    .await;
    assert_eq!(index.pod(&uid(4)).map(|p| p.name), Some("redis-0".into()));

    // A line that is not JSON at all breaks the watch: up goes to 0 ...
    server.raw_watch_line("Service", "<html><body>502 Bad Gateway</body></html>");
    eventually("the broken watch line is an error", Duration::from_secs(5), || {
        metric(&registry, "egress_kube_watch_errors_total", "services") >= 1.0
    })
    .await;
    assert_eq!(metric(&registry, "egress_kube_watch_up", "services"), 0.0);
    // ... and the next good event brings it back.
    server.apply(fixtures::service("default", "kubernetes", "10.12.0.1", 443, None));
    eventually("the watch recovers", Duration::from_secs(5), || {
        metric(&registry, "egress_kube_watch_up", "services") == 1.0
            && index.remote(ip("10.12.0.1"), 443).is_some()
    })
    .await;
    assert!(
        index.remote(ip(fixtures::SQUID_SVC_IP), 3128).is_some(),
        "the index survived the error"
    );
}

#[tokio::test]
async fn api_answering_errors_or_garbage_backs_off_then_recovers() {
    let cluster = fixtures::cluster();
    let server = serve(&cluster);
    server.set_mode(Mode::Garbage);
    let (registry, index) = start_on_node_a(&server);
    let resources = ["pods", "services", "endpointslices", "nodes"];
    let mut floor = 0.0;
    for mode in [Mode::Garbage, Mode::Fail] {
        server.set_mode(mode);
        eventually(
            &format!("{mode:?}: more errors counted, watches down"),
            Duration::from_secs(10),
            || {
                resources.iter().all(|r| {
                    metric(&registry, "egress_kube_watch_errors_total", r) >= floor + 2.0
                        && metric(&registry, "egress_kube_watch_up", r) == 0.0
                })
            },
        )
        .await;
        floor = resources
            .iter()
            .map(|r| metric(&registry, "egress_kube_watch_errors_total", r))
            .fold(f64::MAX, f64::min);
        assert_eq!(metric(&registry, "egress_kube_objects", "pods"), 0.0);
        assert!(index.pod(&uid(1)).is_none());
    }
    server.set_mode(Mode::Healthy);
    synced(&registry, 4.0, 3.0, 3.0, 2.0).await;
    assert!(index.pod(&uid(1)).is_some());
}

/// NetworkPolicies and Namespaces are watched like the rest, and a change
/// of either changes the verdict: named port resolved on the destination
/// pod, namespace labels from the namespace watch.
#[tokio::test]
async fn network_policies_and_namespace_labels_are_watched_live() {
    use egress_agent::records::PolicyVerdict;
    use egress_tests::fake_apiserver::objects::{PodSpec, namespace, network_policy, pod};
    let web = pod(&PodSpec {
        ns: "shop",
        name: "web-0",
        uid: uid(90),
        ip: "10.8.1.50",
        labels: json!({"app": "web"}),
        ..PodSpec::default()
    });
    let mut db = pod(&PodSpec {
        ns: "data",
        name: "db-0",
        uid: uid(91),
        ip: "10.8.1.51",
        labels: json!({"app": "db"}),
        containers: vec![("postgres", "postgres:16", cid(91))],
        ..PodSpec::default()
    });
    db["spec"]["containers"][0]["ports"] =
        json!([{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}]);
    let allow_db = network_policy(
        "shop",
        "allow-db",
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"tier": "data"}},
                        "podSelector": {"matchLabels": {"app": "db"}}}],
                "ports": [{"port": "postgres"}]
            }]
        }),
    );
    let server = FakeApiServer::with([
        web,
        db,
        namespace("shop", json!({})),
        namespace("data", json!({"tier": "data"})),
        allow_db,
    ]);
    let (registry, index) = start_on_node_a(&server);
    eventually("policies, namespaces and pods listed", Duration::from_secs(10), || {
        [("pods", 2.0), ("namespaces", 2.0), ("networkpolicies", 1.0)].iter().all(|(r, n)| {
            metric(&registry, "egress_kube_objects", r) == *n
                && metric(&registry, "egress_kube_watch_up", r) == 1.0
        })
    })
    .await;
    let web_uid = uid(90);
    let verdict = |to: &str| {
        index
            .egress_policy(&web_uid, to.parse().expect("addr"), None)
            .map(|c| (c.verdict, c.policies.iter().map(|p| p.to_string()).collect::<Vec<_>>()))
    };
    let allowed = Some((PolicyVerdict::Allowed, vec!["shop/allow-db".to_string()]));
    let denied = Some((PolicyVerdict::Denied, vec!["shop/allow-db".to_string()]));
    assert_eq!(
        verdict("10.8.1.51:5432"),
        allowed,
        "the named port of a db pod in a data namespace"
    );
    assert_eq!(verdict("10.8.1.51:5433"), denied, "another port");
    assert_eq!(verdict("1.1.1.1:443"), denied);
    // The namespace loses its label: the selector no longer matches.
    server.apply(namespace("data", json!({})));
    eventually("the namespace's new labels", Duration::from_secs(10), || {
        verdict("10.8.1.51:5432") == denied
    })
    .await;
    // The policy goes: the pod is not isolated any more.
    server.delete("NetworkPolicy", "shop/allow-db");
    eventually("the policy's deletion", Duration::from_secs(10), || {
        verdict("1.1.1.1:443") == Some((PolicyVerdict::NotIsolated, vec![]))
    })
    .await;
    assert!(index.egress_policy(&uid(404), "1.1.1.1:443".parse().expect("addr"), None).is_none());
}
