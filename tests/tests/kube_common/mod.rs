//! What the index tests (`kube_index.rs`, `kube_index_hostile.rs`) share: the fake API server for a cluster, a kube
//! client config for it, and waits on the index's own metrics.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use egress_agent::attribution::kube::{KubeIndex, KubeOptions, KubeTuning};
use prometheus::Registry;

use egress_tests::fake_apiserver::{
    FakeApiServer,
    objects::{Cluster, NODE_A},
};

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

pub fn metric(registry: &Registry, name: &str, resource: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .find(|m| m.get_label().iter().any(|l| l.name() == "resource" && l.value() == resource))
        // Counters leave the gauge at 0 and gauges the counter.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .unwrap_or_else(|| panic!("no {name}{{resource={resource}}}"))
}

/// Polls `check` until it holds; fails the test with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn tuning(pod_retention: Duration) -> KubeTuning {
    KubeTuning {
        pod_retention,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

pub fn on_node(node: &str) -> KubeOptions {
    KubeOptions { node_name: Some(node.into()), kubeconfig: None }
}

/// Waits until every resource is listed with the expected object counts and up.
pub async fn synced(registry: &Registry, pods: f64, services: f64, slices: f64, nodes: f64) {
    eventually("all four watches up with the fixture counts", Duration::from_secs(10), || {
        let counts =
            [("pods", pods), ("services", services), ("endpointslices", slices), ("nodes", nodes)];
        counts.iter().all(|(r, n)| {
            metric(registry, "egress_kube_objects", r) == *n
                && metric(registry, "egress_kube_watch_up", r) == 1.0
        })
    })
    .await;
}

pub fn serve(cluster: &Cluster) -> FakeApiServer {
    FakeApiServer::with(cluster.all())
}

pub fn config(server: &FakeApiServer) -> kube::Config {
    kube::Config::new(server.url.parse().expect("server url"))
}

/// The index of node A against `server` (pods kept a minute after deletion),
/// with the registry its metrics are on.
pub fn start_on_node_a(server: &FakeApiServer) -> (Registry, KubeIndex) {
    let registry = Registry::new();
    let index = KubeIndex::start_with(
        config(server),
        &on_node(NODE_A),
        tuning(Duration::from_secs(60)),
        &registry,
    )
    .expect("start");
    (registry, index)
}
