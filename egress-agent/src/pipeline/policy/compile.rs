//! `NetworkPolicy` objects → the pre-parsed form [`super::PolicySet`] evaluates.
//!
//! Only policies whose `policyTypes` include Egress are kept. Everything the API
//! server would have refused is reported as a [`PolicyProblem`] and compiled to
//! an entry that matches NOTHING ([`Peer::Invalid`], [`PortSpec::Invalid`]),
//! never dropped from its list: dropping the only entry of `to` or `ports` would
//! turn "these destinations" into "every destination".
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cidr::Cidr;
use super::selector::Selector;
use super::{PolicyProblem, Protocol};

pub(super) struct Compiled {
    /// `namespace/name`.
    pub name: Arc<str>,
    pub namespace: String,
    pub selector: Selector,
    /// Empty: the policy allows no egress at all (it only isolates).
    pub rules: Vec<Rule>,
    /// Some entry was malformed and compiled to "matches nothing".
    pub has_ignored_entries: bool,
}

pub(super) struct Rule {
    /// `None`: `to` absent or empty, every destination.
    pub to: Option<Vec<Peer>>,
    /// `None`: `ports` absent or empty, every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

pub(super) enum Peer {
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
    /// `namespaces: None`: the policy's own namespace. At least one is `Some`.
    Pods {
        pods: Option<Selector>,
        namespaces: Option<Selector>,
    },
    /// Malformed: matches nothing.
    Invalid,
}

pub(super) enum PortSpec {
    /// No `port`: every port of the protocol.
    All(Protocol),
    /// `port`, or `port..=endPort`.
    Range { protocol: Protocol, first: u16, last: u16 },
    /// A container port name, resolved on the destination pod.
    Named { protocol: Protocol, name: String },
    /// Malformed: matches nothing.
    Invalid,
}

struct Ctx<'a> {
    policy: &'a str,
    problems: &'a mut Vec<PolicyProblem>,
    ignored: bool,
}

impl Ctx<'_> {
    fn problem(&mut self, field: String, message: impl Into<String>) {
        self.problems.push(PolicyProblem {
            policy: self.policy.to_string(),
            field,
            message: message.into(),
        });
    }
    /// A malformed entry that is kept as "matches nothing".
    fn ignore(&mut self, field: String, message: impl Into<String>) {
        self.ignored = true;
        self.problem(field, message);
    }
}

/// Whether the policy governs egress, with the API server's defaulting
/// (`SetDefaults_NetworkPolicy`): when `policyTypes` is absent or empty it is
/// `[Ingress]`, plus `Egress` if `egress` has at least one rule — so
/// `egress: []` alone does NOT make an egress policy.
fn governs_egress(np: &NetworkPolicy, cx: &mut Ctx<'_>) -> bool {
    let Some(spec) = &np.spec else { return false };
    match spec.policy_types.as_deref() {
        None | Some([]) => spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                if t != "Egress" && t != "Ingress" {
                    cx.problem(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {t:?} (Ingress, Egress)"),
                    );
                }
            }
            types.iter().any(|t| t == "Egress")
        }
    }
}

/// Compiles one policy; `None` when it does not govern egress or cannot be
/// placed (no namespace, malformed `spec.podSelector`), the latter reported.
pub(super) fn compile(np: &NetworkPolicy, problems: &mut Vec<PolicyProblem>) -> Option<Compiled> {
    let name = np.metadata.name.as_deref().filter(|n| !n.is_empty()).unwrap_or("<unnamed>");
    let namespace = np.metadata.namespace.as_deref().unwrap_or_default();
    let full: Arc<str> = Arc::from(format!("{namespace}/{name}"));
    let mut cx = Ctx { policy: &full, problems, ignored: false };
    if name == "<unnamed>" {
        cx.problem("metadata.name".into(), "missing; reported as <unnamed>");
    }
    if !governs_egress(np, &mut cx) {
        return None;
    }
    if namespace.is_empty() {
        cx.problem(
            "metadata.namespace".into(),
            "missing: cannot tell which pods it selects; policy skipped",
        );
        return None;
    }
    let spec = np.spec.as_ref()?;
    // An absent podSelector is Go's zero value: the empty selector, all pods.
    let selector = match spec.pod_selector.as_ref().map(Selector::parse).transpose() {
        Ok(s) => s.unwrap_or_else(Selector::everything),
        Err(e) => {
            cx.problem("spec.podSelector".into(), format!("{e}; policy skipped (selects no pod)"));
            return None;
        }
    };
    let mut rules = Vec::new();
    for (r, rule) in spec.egress.iter().flatten().enumerate() {
        let to = rule.to.as_ref().filter(|v| !v.is_empty()).map(|peers| {
            peers
                .iter()
                .enumerate()
                .map(|(i, p)| peer(p, &format!("spec.egress[{r}].to[{i}]"), &mut cx))
                .collect()
        });
        let ports = rule.ports.as_ref().filter(|v| !v.is_empty()).map(|ports| {
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| port(p, &format!("spec.egress[{r}].ports[{i}]"), &mut cx))
                .collect()
        });
        rules.push(Rule { to, ports });
    }
    let has_ignored_entries = cx.ignored;
    Some(Compiled {
        name: full.clone(),
        namespace: namespace.to_string(),
        selector,
        rules,
        has_ignored_entries,
    })
}

fn peer(p: &NetworkPolicyPeer, field: &str, cx: &mut Ctx<'_>) -> Peer {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(block), None, None) => ip_block(block, field, cx),
        (Some(_), _, _) => {
            cx.ignore(
                field.into(),
                "may not specify both ipBlock and another peer; peer ignored (matches nothing)",
            );
            Peer::Invalid
        }
        (None, None, None) => {
            cx.ignore(field.into(), "must specify a peer; peer ignored (matches nothing)");
            Peer::Invalid
        }
        (None, pods, namespaces) => {
            match (
                peer_selector(pods, field, "podSelector", cx),
                peer_selector(namespaces, field, "namespaceSelector", cx),
            ) {
                (Some(pods), Some(namespaces)) => Peer::Pods { pods, namespaces },
                _ => Peer::Invalid,
            }
        }
    }
}

/// `Some(None)`: not set; `None`: malformed (reported).
fn peer_selector(
    sel: &Option<LabelSelector>,
    field: &str,
    what: &str,
    cx: &mut Ctx<'_>,
) -> Option<Option<Selector>> {
    match sel.as_ref().map(Selector::parse).transpose() {
        Ok(s) => Some(s),
        Err(e) => {
            cx.ignore(format!("{field}.{what}"), format!("{e}; peer ignored (matches nothing)"));
            None
        }
    }
}

fn ip_block(block: &IPBlock, field: &str, cx: &mut Ctx<'_>) -> Peer {
    let cidr = match Cidr::parse(&block.cidr) {
        Ok(c) => c,
        Err(e) => {
            cx.ignore(
                format!("{field}.ipBlock.cidr"),
                format!("{:?}: {e}; peer ignored (matches nothing)", block.cidr),
            );
            return Peer::Invalid;
        }
    };
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let field = format!("{field}.ipBlock.except[{i}]");
        match Cidr::parse(text) {
            Ok(e) if cidr.strictly_contains(&e) => except.push(e),
            Ok(_) => {
                cx.ignore(
                    field,
                    format!(
                        "{text:?} must be a strict subset of {:?}; peer ignored (matches nothing)",
                        block.cidr
                    ),
                );
                return Peer::Invalid;
            }
            Err(e) => {
                cx.ignore(field, format!("{text:?}: {e}; peer ignored (matches nothing)"));
                return Peer::Invalid;
            }
        }
    }
    Peer::IpBlock { cidr, except }
}

/// `IsValidPortName` (IANA_SVC_NAME): 1–15 of `[a-z0-9-]`, at least one
/// letter, no leading, trailing or doubled `-`.
fn valid_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

fn port(p: &NetworkPolicyPort, field: &str, cx: &mut Ctx<'_>) -> PortSpec {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(text) => match Protocol::parse(text) {
            Some(proto) => proto,
            None => {
                cx.ignore(
                    format!("{field}.protocol"),
                    format!(
                        "{text:?} is not TCP, UDP or SCTP; port entry ignored (matches nothing)"
                    ),
                );
                return PortSpec::Invalid;
            }
        },
    };
    let mut bad = |what: &str, msg: String| {
        cx.ignore(
            format!("{field}.{what}"),
            format!("{msg}; port entry ignored (matches nothing)"),
        );
        PortSpec::Invalid
    };
    match (&p.port, p.end_port) {
        (None, None) => PortSpec::All(protocol),
        (None, Some(_)) => {
            bad("endPort", "may not be specified when `port` is not specified".into())
        }
        (Some(IntOrString::Int(n)), end) => {
            let Some(first) = port_number(*n) else {
                return bad("port", format!("{n} is not in 1-65535"));
            };
            let last = match end {
                None => first,
                Some(e) => match port_number(e) {
                    Some(last) if last >= first => last,
                    Some(_) => {
                        return bad(
                            "endPort",
                            format!("{e} must be greater than or equal to `port` {first}"),
                        );
                    }
                    None => return bad("endPort", format!("{e} is not in 1-65535")),
                },
            };
            PortSpec::Range { protocol, first, last }
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            bad("endPort", "may not be specified when `port` is non-numeric".into())
        }
        (Some(IntOrString::String(name)), None) if valid_port_name(name) => {
            PortSpec::Named { protocol, name: name.clone() }
        }
        (Some(IntOrString::String(name)), None) => {
            bad("port", format!("{name:?} is not a valid port name (IANA_SVC_NAME)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_port_name;

    #[test]
    fn port_names() {
        for ok in ["http", "dns-tcp", "h2c", "a", "metrics-9090", "abcdefghijklmno"] {
            assert!(valid_port_name(ok), "{ok}");
        }
        for bad in
            ["", "80", "HTTP", "-http", "http-", "dns--tcp", "abcdefghijklmnop", "web_ui", "ht tp"]
        {
            assert!(!valid_port_name(bad), "{bad}");
        }
    }
}
