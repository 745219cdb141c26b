//! The table: policies × flows → decision.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::super::{Cluster, Decision, Egress, PodView, PolicySet, Protocol};
use super::*;
use Protocol::{Sctp, Tcp, Udp};

/// Source pods: (namespace, labels).
type Src = (&'static str, &'static [(&'static str, &'static str)]);
const API: Src = ("production", &[("app", "api")]);
const WORKER: Src = ("production", &[("app", "worker")]);
const CANARY: Src = ("production", &[("app", "api"), ("canary", "true")]);
const STAGING_API: Src = ("staging", &[("app", "api")]);

enum Want {
    NotIsolated,
    Allowed(&'static [&'static str]),
    Denied(&'static [&'static str]),
    /// isolating, uncertain
    DeniedUncertain(&'static [&'static str], &'static [&'static str]),
}
use Want::{Allowed, Denied, DeniedUncertain, NotIsolated};

type Row = (&'static str, &'static [&'static str], Src, &'static str, u16, Protocol, Want);

const DEFAULT_DENY: &str = "production/default-deny-egress";

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Isolation and policyTypes defaulting.
    ("no policy at all", &[], API, "8.8.8.8", 443, Tcp, NotIsolated),
    ("other namespace's deny-all does not select", &[STAGING_DENY], API, "8.8.8.8", 443, Tcp, NotIsolated),
    ("... but does select its own pods", &[STAGING_DENY], STAGING_API, "8.8.8.8", 443, Tcp, Denied(&["staging/default-deny-egress"])),
    ("default deny (egress: [])", &[DENY_ALL], API, "10.0.3.10", 53, Udp, Denied(&[DEFAULT_DENY])),
    ("default deny (no egress field)", &[DENY_ALL_NO_FIELD], API, "8.8.8.8", 443, Tcp, Denied(&["production/deny-no-field"])),
    ("types omitted, no egress: ingress only", &[INGRESS_ONLY], API, "8.8.8.8", 443, Tcp, NotIsolated),
    ("types omitted, egress: [] : ingress only", &[EMPTY_EGRESS_NO_TYPES], API, "8.8.8.8", 443, Tcp, NotIsolated),
    ("types omitted, egress rule: Egress implied, allowed", &[IMPLIED_EGRESS], API, "10.0.2.10", 8080, Tcp, Allowed(&["production/implied-egress"])),
    ("types omitted, egress rule: Egress implied, denied", &[IMPLIED_EGRESS], API, "8.8.8.8", 443, Tcp, Denied(&["production/implied-egress"])),
    // ipBlock with except, and the union with default deny.
    ("ipBlock inside cidr", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.113.5", 443, Tcp, Allowed(&["production/allow-external"])),
    ("ipBlock last address before except", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.113.127", 443, Tcp, Allowed(&["production/allow-external"])),
    ("ipBlock first excepted address", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.113.128", 443, Tcp, Denied(&["production/allow-external", DEFAULT_DENY])),
    ("ipBlock last excepted address", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.113.255", 443, Tcp, Denied(&["production/allow-external", DEFAULT_DENY])),
    ("ipBlock outside cidr", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.114.1", 443, Tcp, Denied(&["production/allow-external", DEFAULT_DENY])),
    ("ipBlock right address, wrong port", &[DENY_ALL, ALLOW_EXTERNAL], API, "203.0.113.5", 80, Tcp, Denied(&["production/allow-external", DEFAULT_DENY])),
    ("allow policy not selecting the pod", &[DENY_ALL, ALLOW_EXTERNAL], WORKER, "203.0.113.5", 443, Tcp, Denied(&[DEFAULT_DENY])),
    ("an allow policy alone isolates only its pods", &[ALLOW_EXTERNAL], WORKER, "8.8.8.8", 443, Tcp, NotIsolated),
    ("IPv4-mapped destination is IPv4", &[ALLOW_EXTERNAL], API, "::ffff:203.0.113.5", 443, Tcp, Allowed(&["production/allow-external"])),
    ("ipBlock also matches pod IPs", &[IMPLIED_EGRESS], API, "10.0.1.20", 5432, Tcp, Allowed(&["production/implied-egress"])),
    // DNS: namespaceSelector on kubernetes.io/metadata.name AND podSelector.
    ("dns UDP", &[DENY_ALL, ALLOW_DNS], WORKER, "10.0.3.10", 53, Udp, Allowed(&["production/allow-dns"])),
    ("dns TCP", &[DENY_ALL, ALLOW_DNS], WORKER, "10.0.3.10", 53, Tcp, Allowed(&["production/allow-dns"])),
    ("dns pod, other port", &[DENY_ALL, ALLOW_DNS], WORKER, "10.0.3.10", 5353, Udp, Denied(&["production/allow-dns", DEFAULT_DENY])),
    ("port 53 on a non-dns pod", &[DENY_ALL, ALLOW_DNS], WORKER, "10.0.2.10", 53, Udp, Denied(&["production/allow-dns", DEFAULT_DENY])),
    ("external resolver", &[DENY_ALL, ALLOW_DNS], WORKER, "8.8.8.8", 53, Udp, Denied(&["production/allow-dns", DEFAULT_DENY])),
    // namespaceSelector alone.
    ("namespaceSelector: pod in backend", &[ALLOW_BACKEND_NS], WORKER, "10.0.2.10", 8080, Tcp, Allowed(&["production/allow-backend-ns"])),
    ("namespaceSelector: any pod in backend", &[ALLOW_BACKEND_NS], WORKER, "10.0.2.20", 8080, Tcp, Allowed(&["production/allow-backend-ns"])),
    ("namespaceSelector: IPv6 pod in backend", &[ALLOW_BACKEND_NS], WORKER, "fd00::1:10", 8080, Tcp, Allowed(&["production/allow-backend-ns"])),
    ("namespaceSelector: pod elsewhere", &[ALLOW_BACKEND_NS], WORKER, "10.0.1.10", 8080, Tcp, Denied(&["production/allow-backend-ns"])),
    ("namespaceSelector: right pod, wrong port", &[ALLOW_BACKEND_NS], WORKER, "10.0.2.10", 9090, Tcp, Denied(&["production/allow-backend-ns"])),
    ("namespaceSelector: {} all pods, any namespace", &[ALL_PODS], API, "10.0.6.10", 80, Tcp, Allowed(&["production/all-pods"])),
    ("namespaceSelector: {} not external", &[ALL_PODS], API, "8.8.8.8", 80, Tcp, Denied(&["production/all-pods"])),
    ("namespaceSelector: {} not a non-pod IP", &[ALL_PODS], API, "10.0.9.9", 80, Tcp, Denied(&["production/all-pods"])),
    ("namespace NotIn: key absent matches", &[NS_NOT_IN], API, "10.0.4.10", 9090, Tcp, Allowed(&["production/ns-not-in"])),
    ("namespace NotIn: excluded value", &[NS_NOT_IN], API, "10.0.2.10", 8080, Tcp, Denied(&["production/ns-not-in"])),
    ("namespace NotIn: own namespace excluded", &[NS_NOT_IN], API, "10.0.1.30", 9090, Tcp, Denied(&["production/ns-not-in"])),
    ("namespace NotIn: unknown namespace labels", &[NS_NOT_IN], API, "10.0.6.10", 80, Tcp, Allowed(&["production/ns-not-in"])),
    // podSelector alone = the policy's namespace.
    ("podSelector: db in own namespace", &[ALLOW_DB], API, "10.0.1.20", 5432, Tcp, Allowed(&["production/allow-db"])),
    ("podSelector: db in another namespace", &[ALLOW_DB], API, "10.0.2.20", 5432, Tcp, Denied(&["production/allow-db"])),
    ("podSelector: port off by one", &[ALLOW_DB], API, "10.0.1.20", 5433, Tcp, Denied(&["production/allow-db"])),
    ("podSelector: {} = own namespace", &[SAME_NS_PODS], API, "10.0.1.20", 1, Tcp, Allowed(&["production/same-ns-pods"])),
    ("podSelector: {} not other namespaces", &[SAME_NS_PODS], API, "10.0.2.10", 8080, Tcp, Denied(&["production/same-ns-pods"])),
    // The AND/OR gotcha.
    ("one peer (AND): prometheus in monitoring", &[AND_PEER], WORKER, "10.0.4.10", 9090, Tcp, Allowed(&["production/and-peer"])),
    ("one peer (AND): grafana in monitoring", &[AND_PEER], WORKER, "10.0.4.20", 3000, Tcp, Denied(&["production/and-peer"])),
    ("one peer (AND): prometheus in production", &[AND_PEER], WORKER, "10.0.1.30", 9090, Tcp, Denied(&["production/and-peer"])),
    ("two peers (OR): prometheus in monitoring", &[OR_PEERS], WORKER, "10.0.4.10", 9090, Tcp, Allowed(&["production/or-peers"])),
    ("two peers (OR): grafana in monitoring", &[OR_PEERS], WORKER, "10.0.4.20", 3000, Tcp, Allowed(&["production/or-peers"])),
    ("two peers (OR): prometheus in production", &[OR_PEERS], WORKER, "10.0.1.30", 9090, Tcp, Allowed(&["production/or-peers"])),
    ("two peers (OR): neither", &[OR_PEERS], WORKER, "10.0.2.10", 8080, Tcp, Denied(&["production/or-peers"])),
    // Named ports, resolved on the destination pod.
    ("named port on the destination", &[NAMED_PORTS], API, "10.0.2.10", 9090, Tcp, Allowed(&["production/named-ports"])),
    ("same number, other name", &[NAMED_PORTS], API, "10.0.4.10", 9090, Tcp, Denied(&["production/named-ports"])),
    ("named port, non-pod destination", &[NAMED_PORTS], API, "203.0.113.5", 9090, Tcp, Denied(&["production/named-ports"])),
    ("named port, wrong number", &[NAMED_PORTS], API, "10.0.2.10", 8080, Tcp, Denied(&["production/named-ports"])),
    ("named UDP port", &[NAMED_PORTS], API, "10.0.3.10", 53, Udp, Allowed(&["production/named-ports"])),
    ("named UDP port, TCP flow", &[NAMED_PORTS], API, "10.0.3.10", 53, Tcp, Denied(&["production/named-ports"])),
    ("gateway by named port (backend port)", &[DENY_ALL, ALLOW_GATEWAY], API, "10.0.5.10", 8443, Tcp, Allowed(&["production/allow-egress-gateway"])),
    ("gateway: Service port is not the backend's", &[DENY_ALL, ALLOW_GATEWAY], API, "10.0.5.10", 443, Tcp, Denied(&["production/allow-egress-gateway", DEFAULT_DENY])),
    // endPort ranges.
    ("range: below", &[PORT_RANGE], API, "198.51.100.7", 31999, Tcp, Denied(&["production/port-range"])),
    ("range: first", &[PORT_RANGE], API, "198.51.100.7", 32000, Tcp, Allowed(&["production/port-range"])),
    ("range: middle", &[PORT_RANGE], API, "198.51.100.7", 32500, Tcp, Allowed(&["production/port-range"])),
    ("range: last (inclusive)", &[PORT_RANGE], API, "198.51.100.7", 32768, Tcp, Allowed(&["production/port-range"])),
    ("range: above", &[PORT_RANGE], API, "198.51.100.7", 32769, Tcp, Denied(&["production/port-range"])),
    ("range: UDP flow", &[PORT_RANGE], API, "198.51.100.7", 32000, Udp, Denied(&["production/port-range"])),
    // Protocols.
    ("UDP rule, TCP flow", &[UDP_ONLY], API, "8.8.8.8", 443, Tcp, Denied(&["production/udp-only"])),
    ("UDP rule, UDP flow", &[UDP_ONLY], API, "8.8.8.8", 443, Udp, Allowed(&["production/udp-only"])),
    ("protocol without port: any UDP port", &[ALL_UDP], API, "8.8.8.8", 12345, Udp, Allowed(&["production/all-udp"])),
    ("protocol without port: not TCP", &[ALL_UDP], API, "8.8.8.8", 12345, Tcp, Denied(&["production/all-udp"])),
    ("protocol without port: not SCTP", &[ALL_UDP], API, "8.8.8.8", 12345, Sctp, Denied(&["production/all-udp"])),
    // Several policies: union, names sorted.
    ("union: none allows", &[DENY_ALL, ALLOW_DNS, ALLOW_EXTERNAL, ALLOW_DB], API, "8.8.8.8", 443, Tcp,
        Denied(&["production/allow-db", "production/allow-dns", "production/allow-external", DEFAULT_DENY])),
    ("union: one allows", &[DENY_ALL, ALLOW_DNS, ALLOW_EXTERNAL, ALLOW_DB], API, "10.0.1.20", 5432, Tcp, Allowed(&["production/allow-db"])),
    ("union: two allow", &[ALLOW_ALL, ALLOW_EXTERNAL], API, "203.0.113.5", 443, Tcp, Allowed(&["production/allow-all", "production/allow-external"])),
    ("deny-all never overrides an allow", &[ALLOW_ALL, DENY_ALL], API, "8.8.8.8", 25, Tcp, Allowed(&["production/allow-all"])),
    ("same policy twice: one name", &[DENY_ALL, DENY_ALL], API, "8.8.8.8", 443, Tcp, Denied(&[DEFAULT_DENY])),
    // matchExpressions on the policy's podSelector.
    ("expressions select app In (api, web)", &[EXPRESSIONS], API, "192.0.2.1", 443, Tcp, Allowed(&["production/expressions"])),
    ("expressions: DoesNotExist excludes canary", &[EXPRESSIONS], CANARY, "8.8.8.8", 443, Tcp, NotIsolated),
    ("expressions: In excludes worker", &[EXPRESSIONS], WORKER, "8.8.8.8", 443, Tcp, NotIsolated),
    ("expressions: selected, denied", &[EXPRESSIONS], API, "8.8.8.8", 443, Tcp, Denied(&["production/expressions"])),
    // IPv6.
    ("v6 inside cidr", &[ALLOW_V6], API, "2001:db8::1", 443, Tcp, Allowed(&["production/allow-v6"])),
    ("v6 excepted", &[ALLOW_V6], API, "2001:db8:0:1::5", 443, Tcp, Denied(&["production/allow-v6"])),
    ("v6 just past the except", &[ALLOW_V6], API, "2001:db8:0:2::5", 443, Tcp, Allowed(&["production/allow-v6"])),
    ("v6 outside cidr", &[ALLOW_V6], API, "2001:db9::1", 443, Tcp, Denied(&["production/allow-v6"])),
    ("v6 cidr never matches v4", &[ALLOW_V6], API, "203.0.113.5", 443, Tcp, Denied(&["production/allow-v6"])),
    ("v6 pod address by ipBlock", &[ALLOW_V6], API, "fd00::1:10", 8080, Tcp, Allowed(&["production/allow-v6"])),
    ("v4 0.0.0.0/0 never matches v6", &[UDP_ONLY], API, "2001:db8::1", 443, Udp, Denied(&["production/udp-only"])),
    // Malformed entries match nothing, and say so.
    ("bad CIDR rule ignored", &[BAD_CIDR], API, "203.0.113.5", 443, Tcp, DeniedUncertain(&["production/bad-cidr"], &["production/bad-cidr"])),
    ("other rules still apply", &[BAD_CIDR], API, "198.51.100.7", 80, Tcp, Allowed(&["production/bad-cidr"])),
    ("bad CIDR with default deny", &[DENY_ALL, BAD_CIDR], API, "203.0.113.5", 443, Tcp,
        DeniedUncertain(&["production/bad-cidr", DEFAULT_DENY], &["production/bad-cidr"])),
    ("only port entry bad: not widened", &[BAD_PORT_ONLY], API, "8.8.8.8", 8080, Tcp,
        DeniedUncertain(&["production/bad-port-only"], &["production/bad-port-only"])),
];

pub(super) fn flow<'a>(
    src: &'a (&'a str, BTreeMap<String, String>),
    dst: &str,
    port: u16,
    protocol: Protocol,
) -> Egress<'a> {
    Egress {
        pod_namespace: src.0,
        pod_labels: &src.1,
        dst: dst.parse().expect("test destination"),
        port,
        protocol,
    }
}

fn names(list: &[&str]) -> Vec<Arc<str>> {
    list.iter().map(|s| Arc::from(*s)).collect()
}

#[test]
fn table() {
    let cluster = cluster();
    let mut failures = Vec::new();
    for (name, policies, (ns, l), dst, port, protocol, want) in ROWS {
        let objects: Vec<_> = policies.iter().map(|j| np(j)).collect();
        let (set, _problems) = PolicySet::new(&objects);
        let src = (*ns, labels(l));
        let got = set.egress(&flow(&src, dst, *port, *protocol), &cluster);
        let want = match want {
            NotIsolated => Decision::NotIsolated,
            Allowed(by) => Decision::Allowed { by: names(by) },
            Denied(i) => Decision::Denied { isolating: names(i), uncertain: vec![] },
            DeniedUncertain(i, u) => Decision::Denied { isolating: names(i), uncertain: names(u) },
        };
        if got != want {
            failures.push(format!(
                "{name}: {ns} -> {dst}:{port}/{}\n   got  {got:?}\n   want {want:?}",
                protocol.as_str()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        ROWS.len(),
        failures.join("\n")
    );
}

/// Counts the questions asked of the cluster.
struct Counting {
    inner: TestCluster,
    pods: Cell<usize>,
    namespaces: Cell<usize>,
}

impl Cluster for Counting {
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.set(self.namespaces.get() + 1);
        self.inner.namespace_labels(namespace)
    }
    fn pod_at(&self, ip: IpAddr) -> Option<PodView<'_>> {
        self.pods.set(self.pods.get() + 1);
        self.inner.pod_at(ip)
    }
}

#[test]
fn cluster_is_asked_lazily_and_once() {
    let c = Counting { inner: cluster(), pods: Cell::new(0), namespaces: Cell::new(0) };
    let src = ("production", labels(&[("app", "api")]));
    let all = [
        DENY_ALL,
        ALLOW_DNS,
        ALLOW_EXTERNAL,
        ALLOW_DB,
        ALLOW_BACKEND_NS,
        OR_PEERS,
        AND_PEER,
        NAMED_PORTS,
        NS_NOT_IN,
    ];
    let objects: Vec<_> = all.iter().map(|j| np(j)).collect();
    let (set, problems) = PolicySet::new(&objects);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(set.len(), all.len());
    // Many selector peers and a named port: one pod lookup, one namespace lookup.
    assert!(set.egress(&flow(&src, "10.0.9.9", 1, Tcp), &c).is_denied());
    assert_eq!(c.pods.get(), 1);
    assert_eq!(
        set.egress(&flow(&src, "10.0.4.20", 1, Tcp), &c),
        Decision::Allowed { by: names(&["production/ns-not-in", "production/or-peers"]) }
    );
    assert_eq!((c.pods.get(), c.namespaces.get()), (2, 1));
    // ipBlock-only policies need no lookup; an unisolated pod needs none either.
    let (ext, _) = PolicySet::new([&np(ALLOW_EXTERNAL)]);
    ext.egress(&flow(&src, "203.0.113.5", 443, Tcp), &c);
    let other = ("staging", labels(&[]));
    set.egress(&flow(&other, "10.0.1.20", 5432, Tcp), &c);
    assert_eq!((c.pods.get(), c.namespaces.get()), (2, 1));
}
