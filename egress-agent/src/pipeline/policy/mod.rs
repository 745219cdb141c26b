//! Kubernetes NetworkPolicy EGRESS evaluation: would the policies let this pod
//! open this flow? Pure (no I/O, no other crate module): the caller supplies
//! the policies ([`PolicySet::new`]) and what its index knows ([`Cluster`]).
//!
//! Semantics, from <https://kubernetes.io/docs/concepts/services-networking/network-policies/>
//! and the `networking.k8s.io/v1` API reference (defaulting and validation as
//! in `pkg/apis/networking/v1/defaults.go` and `pkg/apis/networking/validation`):
//!
//! - **Selection.** A policy selects pods of ITS OWN namespace with
//!   `spec.podSelector` (absent or `{}`: all of them). A pod is isolated for
//!   egress iff at least one policy whose `policyTypes` contains `Egress`
//!   selects it; otherwise everything is allowed ([`Decision::NotIsolated`]).
//! - **policyTypes defaulting.** Absent or empty means `[Ingress]`, plus
//!   `Egress` when `egress` holds at least one rule: `egress: []` without
//!   `policyTypes` is an ingress-only policy. `policyTypes: [Egress]` without
//!   rules denies all egress of the selected pods (default deny).
//! - **Union.** Allowed iff some egress rule of some isolating policy matches.
//!   A rule matches when its `to` matches (absent or empty: any destination)
//!   AND its `ports` match (absent or empty: any port, any protocol).
//! - **Peers.** `ipBlock {cidr, except}` matches any address in `cidr` and not
//!   in an `except` (IPv4 and IPv6, never across families). `podSelector` alone:
//!   matching pods of the POLICY's namespace. `namespaceSelector` alone: every
//!   pod of matching namespaces (`{}`: all namespaces). Both in ONE peer: pods
//!   matching `podSelector` inside namespaces matching `namespaceSelector`;
//!   in TWO peers of one `to` they are OR'ed. Selectors only match addresses
//!   [`Cluster::pod_at`] knows as a pod; `kubernetes.io/metadata.name` always
//!   equals the namespace's name.
//! - **ipBlock and pod IPs** are implementation-defined upstream: the docs
//!   say ipBlock "should be cluster-external IPs, since Pod IPs are ephemeral
//!   and unpredictable", and whether NAT happens before or after policy is
//!   "not defined". Choice: an `ipBlock` matches ANY address, pod IPs
//!   included — what the upstream e2e test "should allow egress access to
//!   server in CIDR block" expects (it allows a server pod by its /32) and what
//!   Calico and kube-network-policies do. Cilium does not (its CIDR rules never
//!   select its own endpoints, cilium/cilium#9209): there, a pod destination
//!   allowed only by an ipBlock is in fact dropped.
//! - **Ports.** `protocol` defaults to TCP. A numeric `port` with `endPort`
//!   matches `port..=endPort` (both ends inclusive); without `endPort`, that one
//!   port. A NAMED port resolves on the DESTINATION pod: it matches when that
//!   pod has a container port of that name, that protocol and the flow's port
//!   number; it never matches a non-pod destination. An entry without `port`
//!   matches every port of its protocol. (CNIs that ignore `endPort` enforce
//!   only `port`; this module follows the API.)
//! - **Malformed entries** (what the API server would refuse: bad CIDR, `except`
//!   not a strict subset, bad selector operator, `endPort` on a named port, …)
//!   are reported by [`PolicySet::new`] and compiled to "matches NOTHING",
//!   never to "matches everything", and never removed from their list (an
//!   emptied `to` would mean any destination). Why this direction: an allow
//!   is never invented from data the API server would have refused, so a
//!   [`Decision::Allowed`] is always backed by a well-formed rule; and the
//!   doubt is not hidden: a [`Decision::Denied`] that an ignored entry might
//!   have changed names the policy in `uncertain`, so the caller can soften
//!   `policy_denied` for it. A policy whose own
//!   `spec.podSelector` or namespace is malformed is skipped (it selects no pod).
//!
//! The destination is the address the packet is finally sent to: the backend
//! after DNAT (a Service's ClusterIP is rewritten to a pod or node address
//! before policy applies), which is the caller's job to find (conntrack).
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;

mod cidr;
mod compile;
mod selector;
#[cfg(test)]
mod tests;

use compile::{Compiled, Peer, PortSpec, Rule};
pub use selector::NAMESPACE_NAME_LABEL;
use selector::NamespaceLabels;

/// An L4 protocol NetworkPolicy ports can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API spelling (`TCP`, `UDP`, `SCTP`), case-sensitive as the API is.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// A named container port of a pod (`spec.containers[].ports[]` with a `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What the index knows about the pod owning an address.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Its NAMED container ports (unnamed ones cannot be referenced).
    pub ports: &'a [NamedPort],
}

/// The cluster state the evaluation reads. Implement it on a snapshot of the
/// index (e.g. a struct holding its read guards) so views can borrow from it.
pub trait Cluster {
    /// A namespace's labels; `None` when unknown (then only
    /// `kubernetes.io/metadata.name` is known, from the name itself).
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>>;
    /// The pod whose IP (`status.podIPs`) this is. Return `None` for
    /// hostNetwork pods (their IP is the node's; selectors do not match them
    /// on most CNIs) and for any non-pod address.
    fn pod_at(&self, ip: IpAddr) -> Option<PodView<'_>>;
}

/// One egress flow of a pod, to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct Egress<'a> {
    /// The SOURCE pod (not hostNetwork: policies do not apply to those).
    pub pod_namespace: &'a str,
    pub pod_labels: &'a BTreeMap<String, String>,
    /// The destination AFTER DNAT (the Service backend, not the ClusterIP).
    /// IPv4-mapped IPv6 addresses are treated as IPv4.
    pub dst: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// The verdict. Policy names are `namespace/name`, sorted, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Egress policy selects the pod: all egress is allowed.
    NotIsolated,
    /// The policies whose egress rules allow the flow (at least one).
    Allowed { by: Vec<Arc<str>> },
    /// The pod is isolated and no rule allows the flow.
    Denied {
        /// Every policy selecting the pod for egress.
        isolating: Vec<Arc<str>>,
        /// Those of `isolating` with an entry ignored as malformed, which
        /// might have allowed the flow (see the module doc).
        uncertain: Vec<Arc<str>>,
    },
}

impl Decision {
    pub fn is_denied(&self) -> bool {
        matches!(self, Decision::Denied { .. })
    }
}

/// Something in a policy the API server would have refused, and what the
/// evaluation does with it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// `namespace/name`.
    pub policy: String,
    /// JSON path in the object, e.g. `spec.egress[0].to[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkPolicy {}: {}: {}", self.policy, self.field, self.message)
    }
}

/// The egress policies of a cluster, pre-parsed for per-flow evaluation.
#[derive(Default)]
pub struct PolicySet {
    /// Egress policies by namespace, sorted by name.
    by_namespace: HashMap<String, Vec<Compiled>>,
    len: usize,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet").field("egress_policies", &self.len).finish()
    }
}

impl PolicySet {
    /// Builds the set; never panics. Policies that do not govern egress are
    /// left out silently; malformed entries are reported (see the module doc).
    pub fn new<'a>(
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    ) -> (PolicySet, Vec<PolicyProblem>) {
        let mut problems = Vec::new();
        let mut by_namespace: HashMap<String, Vec<Compiled>> = HashMap::new();
        let mut len = 0;
        for np in policies {
            if let Some(c) = compile::compile(np, &mut problems) {
                len += 1;
                by_namespace.entry(c.namespace.clone()).or_default().push(c);
            }
        }
        for list in by_namespace.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
            for pair in list.windows(2) {
                if pair[0].name == pair[1].name {
                    problems.push(PolicyProblem {
                        policy: pair[0].name.to_string(),
                        field: "metadata.name".into(),
                        message: "given more than once; all copies are evaluated".into(),
                    });
                }
            }
        }
        (PolicySet { by_namespace, len }, problems)
    }

    /// How many policies govern egress.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Evaluates one flow. Allocates only the names of the result; asks the
    /// cluster about the destination only when a selector or a named port
    /// needs it, and at most once.
    pub fn egress<C: Cluster + ?Sized>(&self, flow: &Egress<'_>, cluster: &C) -> Decision {
        let Some(policies) = self.by_namespace.get(flow.pod_namespace) else {
            return Decision::NotIsolated;
        };
        let mut dst =
            Destination { ip: flow.dst.to_canonical(), cluster, pod: None, namespace_labels: None };
        let mut isolated = false;
        let mut by: Vec<Arc<str>> = Vec::new();
        for p in policies.iter().filter(|p| p.selector.matches(flow.pod_labels)) {
            isolated = true;
            if p.rules.iter().any(|r| rule_matches(r, &p.namespace, flow, &mut dst)) {
                push_unique(&mut by, &p.name);
            }
        }
        if !isolated {
            return Decision::NotIsolated;
        }
        if !by.is_empty() {
            return Decision::Allowed { by };
        }
        let mut isolating = Vec::new();
        let mut uncertain = Vec::new();
        for p in policies.iter().filter(|p| p.selector.matches(flow.pod_labels)) {
            push_unique(&mut isolating, &p.name);
            if p.has_ignored_entries {
                push_unique(&mut uncertain, &p.name);
            }
        }
        Decision::Denied { isolating, uncertain }
    }
}

/// `list` is built in sorted order: a duplicate can only be the last one.
fn push_unique(list: &mut Vec<Arc<str>>, name: &Arc<str>) {
    if list.last() != Some(name) {
        list.push(name.clone());
    }
}

/// The destination, with the cluster's answers fetched lazily and once.
struct Destination<'c, C: ?Sized> {
    ip: IpAddr,
    cluster: &'c C,
    pod: Option<Option<PodView<'c>>>,
    namespace_labels: Option<Option<&'c BTreeMap<String, String>>>,
}

impl<'c, C: Cluster + ?Sized> Destination<'c, C> {
    fn pod(&mut self) -> Option<PodView<'c>> {
        let cluster = self.cluster;
        let ip = self.ip;
        *self.pod.get_or_insert_with(|| cluster.pod_at(ip))
    }

    fn namespace_labels(&mut self, namespace: &str) -> Option<&'c BTreeMap<String, String>> {
        let cluster = self.cluster;
        *self.namespace_labels.get_or_insert_with(|| cluster.namespace_labels(namespace))
    }
}

fn rule_matches<C: Cluster + ?Sized>(
    rule: &Rule,
    policy_ns: &str,
    flow: &Egress<'_>,
    dst: &mut Destination<'_, C>,
) -> bool {
    let ports_ok = match &rule.ports {
        None => true,
        Some(ports) => ports.iter().any(|p| port_matches(p, flow, dst)),
    };
    ports_ok
        && match &rule.to {
            None => true,
            Some(peers) => peers.iter().any(|p| peer_matches(p, policy_ns, dst)),
        }
}

fn port_matches<C: Cluster + ?Sized>(
    spec: &PortSpec,
    flow: &Egress<'_>,
    dst: &mut Destination<'_, C>,
) -> bool {
    match spec {
        PortSpec::All(protocol) => *protocol == flow.protocol,
        PortSpec::Range { protocol, first, last } => {
            *protocol == flow.protocol && (*first..=*last).contains(&flow.port)
        }
        PortSpec::Named { protocol, name } => {
            *protocol == flow.protocol
                && dst.pod().is_some_and(|pod| {
                    pod.ports.iter().any(|np| {
                        np.name == *name && np.protocol == flow.protocol && np.port == flow.port
                    })
                })
        }
        PortSpec::Invalid => false,
    }
}

fn peer_matches<C: Cluster + ?Sized>(
    peer: &Peer,
    policy_ns: &str,
    dst: &mut Destination<'_, C>,
) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => {
            cidr.contains(dst.ip) && !except.iter().any(|e| e.contains(dst.ip))
        }
        Peer::Pods { pods, namespaces } => {
            let Some(pod) = dst.pod() else { return false };
            let namespace_ok = match namespaces {
                None => pod.namespace == policy_ns,
                Some(sel) if sel.is_everything() => true,
                Some(sel) => {
                    let labels = dst.namespace_labels(pod.namespace);
                    sel.matches(&NamespaceLabels { name: pod.namespace, labels })
                }
            };
            namespace_ok && pods.as_ref().is_none_or(|sel| sel.matches(pod.labels))
        }
        Peer::Invalid => false,
    }
}
