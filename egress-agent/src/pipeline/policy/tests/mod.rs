//! Fixtures for the policy tests: a small cluster and genuine NetworkPolicy
//! JSON (as `kubectl get networkpolicy -o json` prints it, deserialized into
//! `k8s_openapi` types).
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{Cluster, NamedPort, PodView, Protocol};

mod problems;
mod table;

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(super) fn np(json: &str) -> NetworkPolicy {
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("fixture does not deserialize: {e}\n{json}"))
}

struct Pod {
    ip: IpAddr,
    namespace: String,
    labels: BTreeMap<String, String>,
    ports: Vec<NamedPort>,
}

/// Namespaces (their labels, WITHOUT `kubernetes.io/metadata.name`, which the
/// evaluation must synthesize) and pods with their named ports.
pub(super) struct TestCluster {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Pod>,
}

impl Cluster for TestCluster {
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }
    fn pod_at(&self, ip: IpAddr) -> Option<PodView<'_>> {
        self.pods.iter().find(|p| p.ip == ip).map(|p| PodView {
            namespace: &p.namespace,
            labels: &p.labels,
            ports: &p.ports,
        })
    }
}

fn port(name: &str, port: u16, protocol: Protocol) -> NamedPort {
    NamedPort { name: name.into(), port, protocol }
}

pub(super) fn cluster() -> TestCluster {
    use Protocol::{Tcp, Udp};
    let namespaces = [
        ("production", labels(&[("env", "production")])),
        ("backend", labels(&[("name", "backend"), ("env", "production")])),
        ("kube-system", labels(&[])),
        ("monitoring", labels(&[("name", "monitoring")])),
        ("istio-system", labels(&[("istio-injection", "disabled")])),
        ("staging", labels(&[("env", "staging")])),
    ]
    .into_iter()
    .map(|(n, l)| (n.to_string(), l))
    .collect();
    let pod = |ip: &str, ns: &str, l: &[(&str, &str)], ports: Vec<NamedPort>| Pod {
        ip: ip.parse().expect("test pod IP"),
        namespace: ns.into(),
        labels: labels(l),
        ports,
    };
    let pods = vec![
        pod("10.0.1.10", "production", &[("app", "api")], vec![port("http", 8080, Tcp)]),
        pod(
            "10.0.1.20",
            "production",
            &[("app", "database"), ("tier", "backend")],
            vec![port("pg", 5432, Tcp)],
        ),
        pod("10.0.1.30", "production", &[("app", "prometheus")], vec![port("web", 9090, Tcp)]),
        pod(
            "10.0.2.10",
            "backend",
            &[("app", "svc")],
            vec![port("http", 8080, Tcp), port("metrics", 9090, Tcp)],
        ),
        pod("10.0.2.20", "backend", &[("app", "database")], vec![port("pg", 5432, Tcp)]),
        pod(
            "10.0.3.10",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            vec![port("dns", 53, Udp), port("dns-tcp", 53, Tcp)],
        ),
        pod("10.0.4.10", "monitoring", &[("app", "prometheus")], vec![port("web", 9090, Tcp)]),
        pod("10.0.4.20", "monitoring", &[("app", "grafana")], vec![port("web", 3000, Tcp)]),
        pod(
            "10.0.5.10",
            "istio-system",
            &[("istio", "egressgateway")],
            vec![port("tls", 8443, Tcp)],
        ),
        // A pod in a namespace the index has no labels for.
        pod("10.0.6.10", "unlisted", &[("app", "x")], vec![]),
        pod("fd00::1:10", "backend", &[("app", "svc6")], vec![port("http", 8080, Tcp)]),
    ];
    TestCluster { namespaces, pods }
}

/// `production/default-deny-egress`, as in the seed's template.
pub(super) const DENY_ALL: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"default-deny-egress","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[]}}"#;

/// Same, written without the `egress` field at all.
pub(super) const DENY_ALL_NO_FIELD: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"deny-no-field","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"]}}"#;

/// DNS to kube-dns in kube-system, selected by the automatic name label.
pub(super) const ALLOW_DNS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-dns","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"kube-system"}},
          "podSelector":{"matchLabels":{"k8s-app":"kube-dns"}}}],
   "ports":[{"protocol":"UDP","port":53},{"protocol":"TCP","port":53}]}]}}"#;

/// app=api may reach 203.0.113.0/24 except its upper half, on 443.
pub(super) const ALLOW_EXTERNAL: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-external","namespace":"production"},
 "spec":{"podSelector":{"matchLabels":{"app":"api"}},"policyTypes":["Egress"],"egress":[{
   "to":[{"ipBlock":{"cidr":"203.0.113.0/24","except":["203.0.113.128/25"]}}],
   "ports":[{"protocol":"TCP","port":443}]}]}}"#;

/// Namespace selector alone: every pod of namespaces labelled name=backend.
pub(super) const ALLOW_BACKEND_NS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-backend-ns","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchLabels":{"name":"backend"}}}],"ports":[{"protocol":"TCP","port":8080}]}]}}"#;

/// Pod selector alone: app=database pods of the POLICY's namespace.
pub(super) const ALLOW_DB: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-db","namespace":"production"},
 "spec":{"podSelector":{"matchLabels":{"app":"api"}},"policyTypes":["Egress"],"egress":[{
   "to":[{"podSelector":{"matchLabels":{"app":"database"}}}],"ports":[{"protocol":"TCP","port":5432}]}]}}"#;

/// ONE peer with both selectors: prometheus pods IN monitoring.
pub(super) const AND_PEER: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"and-peer","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchLabels":{"name":"monitoring"}},"podSelector":{"matchLabels":{"app":"prometheus"}}}]}]}}"#;

/// TWO peers: any pod in monitoring, OR prometheus pods of production.
pub(super) const OR_PEERS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"or-peers","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchLabels":{"name":"monitoring"}}},{"podSelector":{"matchLabels":{"app":"prometheus"}}}]}]}}"#;

/// Named ports: `metrics` (TCP by default) to any destination, `dns` over UDP.
pub(super) const NAMED_PORTS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"named-ports","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[
   {"ports":[{"port":"metrics"}]},
   {"ports":[{"protocol":"UDP","port":"dns"}]}]}}"#;

/// A port range to 198.51.100.0/24.
pub(super) const PORT_RANGE: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"port-range","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"ipBlock":{"cidr":"198.51.100.0/24"}}],"ports":[{"protocol":"TCP","port":32000,"endPort":32768}]}]}}"#;

/// UDP 443 anywhere (QUIC), nothing over TCP.
pub(super) const UDP_ONLY: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"udp-only","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"ipBlock":{"cidr":"0.0.0.0/0"}}],"ports":[{"protocol":"UDP","port":443}]}]}}"#;

/// Every UDP port (a port entry without `port`).
pub(super) const ALL_UDP: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"all-udp","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[{"protocol":"UDP"}]}]}}"#;

/// Deny-all for staging: must not touch production pods.
pub(super) const STAGING_DENY: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"default-deny-egress","namespace":"staging"},
 "spec":{"podSelector":{},"policyTypes":["Egress"]}}"#;

/// No policyTypes, one egress rule: defaults to [Ingress, Egress].
pub(super) const IMPLIED_EGRESS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"implied-egress","namespace":"production"},
 "spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8"}}]}]}}"#;

/// No policyTypes, `egress: []`: defaults to [Ingress] only.
pub(super) const EMPTY_EGRESS_NO_TYPES: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"empty-egress-no-types","namespace":"production"},
 "spec":{"podSelector":{},"egress":[]}}"#;

/// Ingress-only deny-all (no policyTypes, no egress).
pub(super) const INGRESS_ONLY: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"deny-ingress","namespace":"production"},
 "spec":{"podSelector":{}}}"#;

/// IPv6 allow-list with an exception, on 443.
pub(super) const ALLOW_V6: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-v6","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"ipBlock":{"cidr":"2001:db8::/32","except":["2001:db8:0:1::/64"]}},{"ipBlock":{"cidr":"fd00::/8"}}],
   "ports":[{"port":443},{"port":8080}]}]}}"#;

/// Rule 0 has a malformed CIDR; rule 1 is fine.
pub(super) const BAD_CIDR: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"bad-cidr","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[
   {"to":[{"ipBlock":{"cidr":"203.0.113.0/33"}}]},
   {"to":[{"ipBlock":{"cidr":"198.51.100.0/24"}}]}]}}"#;

/// The only port entry is malformed (endPort < port): must NOT widen to "all ports".
pub(super) const BAD_PORT_ONLY: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"bad-port-only","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"ports":[{"port":8080,"endPort":80}]}]}}"#;

/// Pod selection by expressions: app In (api, web) AND no canary label.
pub(super) const EXPRESSIONS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"expressions","namespace":"production"},
 "spec":{"podSelector":{"matchExpressions":[{"key":"app","operator":"In","values":["api","web"]},
                                            {"key":"canary","operator":"DoesNotExist"}]},
  "policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"192.0.2.0/24"}}]}]}}"#;

/// Namespace expressions: every namespace whose env is not production (or has no env).
pub(super) const NS_NOT_IN: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"ns-not-in","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchExpressions":[{"key":"env","operator":"NotIn","values":["production"]}]}}]}]}}"#;

/// `namespaceSelector: {}`: all pods of all namespaces, but no external address.
pub(super) const ALL_PODS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"all-pods","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"namespaceSelector":{}}]}]}}"#;

/// `podSelector: {}` alone: all pods of the policy's namespace.
pub(super) const SAME_NS_PODS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"same-ns-pods","namespace":"production"},
 "spec":{"podSelector":{},"policyTypes":["Egress"],"egress":[{"to":[{"podSelector":{}}]}]}}"#;

/// A rule without `to` nor `ports`: everything.
pub(super) const ALLOW_ALL: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-all","namespace":"production"},
 "spec":{"podSelector":{"matchLabels":{"app":"api"}},"policyTypes":["Egress"],"egress":[{}]}}"#;

/// Egress gateway access (the seed's template 4), with a named target port.
pub(super) const ALLOW_GATEWAY: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"allow-egress-gateway","namespace":"production"},
 "spec":{"podSelector":{"matchLabels":{"app":"api"}},"policyTypes":["Egress"],"egress":[{
   "to":[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"istio-system"}},
          "podSelector":{"matchLabels":{"istio":"egressgateway"}}}],
   "ports":[{"protocol":"TCP","port":"tls"}]}]}}"#;
