//! Which leg of the proxy chain a flow is, from the configured hops.
//!
//! A hop is matched two ways: by where clients reach it (`service`,
//! `address`/`addresses`) and by what its own processes are (`host_unit`,
//! `comm`, `cgroup`, `pod_labels`). A flow from hop A's process to hop B's
//! address is the leg `A->B`; from a non-hop process to hop A, `client->A`;
//! from the last hop to anything that is not a hop, `A->internet`; from a
//! non-hop process to a public address, `direct` (a bypass).
//!
//! A `routed` hop (a transparent gateway) is reached by the destinations it
//! serves: a flow to one of its CIDRs is a leg through it (`client->gw`),
//! never a bypass. A proxy's own address wins over a routed hop's CIDR.
use crate::{
    config::{ChainSettings, DIRECT, Hop, INTERNET},
    records::{DstClass, FlowRecord},
};

/// The leg of the chain a flow is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The hop the flow goes to (`internet` past the last hop, `direct` for a bypass).
    pub hop: String,
    /// `client->A`, `A->B`, `A->internet`, `direct`.
    pub leg: String,
    /// Index in the chain of the hop the flow goes to (hops.len() = internet).
    pub depth: usize,
}

/// Where clients reach `hop`: its addresses, or its Service as the
/// Kubernetes index names the destination.
fn reached_at(hop: &Hop, r: &FlowRecord) -> bool {
    let hit =
        |a: Option<std::net::SocketAddr>| a.is_some_and(|a| hop.addrs.iter().any(|m| m.matches(a)));
    hit(r.dst)
        || hit(r.dst_actual)
        || hop.service.as_ref().is_some_and(|s| r.dst_name.as_deref() == Some(s.as_str()))
}

/// The hop `r` goes to: a proxy it connects to, else a routed hop that
/// serves its destination.
fn reached(hops: &[Hop], r: &FlowRecord) -> Option<usize> {
    hops.iter().position(|h| h.routed.is_none() && reached_at(h, r)).or_else(|| {
        let dst = r.dst_actual.or(r.dst)?.ip();
        hops.iter().position(|h| h.routed.as_ref().is_some_and(|g| g.serves(dst)))
    })
}

/// Whether the owner of `r` is one of `hop`'s processes: every owner
/// matcher the hop has must hold, and it must have one.
fn is_owner_of(hop: &Hop, r: &FlowRecord) -> bool {
    let mut any = false;
    let mut all = true;
    let mut check = |cond: Option<bool>| {
        if let Some(c) = cond {
            any = true;
            all &= c;
        }
    };
    check(hop.host_unit.as_ref().map(|u| r.unit.as_deref() == Some(u.as_str())));
    check(hop.comm.as_ref().map(|c| r.comm == *c));
    check(hop.cgroup.as_ref().map(|c| r.cgroup.as_deref().is_some_and(|p| p.contains(c.as_str()))));
    check(hop.namespace.as_ref().map(|n| r.namespace.as_deref() == Some(n.as_str())));
    check((!hop.pod_labels.is_empty()).then(|| {
        r.pod_labels
            .as_ref()
            .is_some_and(|l| hop.pod_labels.iter().all(|(k, v)| l.get(k) == Some(v)))
    }));
    any && all
}

/// The hop whose process `owner` is (only owner fields are read).
pub fn owner_hop<'a>(chain: &'a ChainSettings, owner: &FlowRecord) -> Option<&'a str> {
    chain.hops.iter().find(|h| is_owner_of(h, owner)).map(|h| h.name.as_str())
}

/// The hop a DNS lookup is about: the hop that asked (a proxy resolving
/// its upstream or an origin), else the hop whose name was asked.
pub fn dns_hop(chain: &ChainSettings, asked_by: Option<&str>, name: &str) -> Option<String> {
    asked_by.map(str::to_string).or_else(|| {
        let name = name.trim_end_matches('.');
        chain
            .hops
            .iter()
            .find(|h| h.names.iter().any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name)))
            .map(|h| h.name.clone())
    })
}

/// The leg a hop's accepted connection is, seen from the hop: the hop is
/// the owner (the listener's process). Its client is named by the chain's
/// order: the previous hop, or `client` for the first (a peer's own
/// identity is not known on the hop's machine).
pub fn classify_accepted(chain: &ChainSettings, r: &FlowRecord) -> Option<Leg> {
    let hops = &chain.hops;
    let t = hops.iter().position(|h| is_owner_of(h, r))?;
    let from = if t == 0 { "client".to_string() } else { hops[t - 1].name.clone() };
    Some(Leg { hop: hops[t].name.clone(), leg: format!("{from}->{}", hops[t].name), depth: t })
}

/// The leg `r` is, if it is one.
pub fn classify(chain: &ChainSettings, r: &FlowRecord) -> Option<Leg> {
    let hops = &chain.hops;
    if hops.is_empty() {
        return None;
    }
    let from = hops.iter().position(|h| is_owner_of(h, r));
    let to = reached(hops, r);
    let name = |i: usize| hops[i].name.clone();
    match (from, to) {
        (Some(f), Some(t)) => {
            Some(Leg { hop: name(t), leg: format!("{}->{}", name(f), name(t)), depth: t })
        }
        (None, Some(t)) => {
            Some(Leg { hop: name(t), leg: format!("client->{}", name(t)), depth: t })
        }
        (Some(f), None) if matches!(r.dst_class, Some(DstClass::Public | DstClass::Private)) => {
            Some(Leg {
                hop: INTERNET.into(),
                leg: format!("{}->{INTERNET}", name(f)),
                depth: hops.len(),
            })
        }
        (None, None) => {
            let b = chain.bypass.as_ref()?;
            let exempt = r.namespace.as_ref().is_some_and(|n| b.exempt_namespaces.contains(n))
                || r.unit.as_ref().is_some_and(|u| b.exempt_units.contains(u));
            (r.dst_class == Some(DstClass::Public) && !exempt).then(|| Leg {
                hop: DIRECT.into(),
                leg: DIRECT.into(),
                depth: 0,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const LAB: &str = r#"
version: 1
chain:
  name: lab
  hops:
    - name: gke-squid
      protocol: http-connect
      match:
        service: {namespace: intra-proxy, name: squid-proxy-service, port: 3128}
        addresses: ["10.96.0.10:3128"]
        names: [squid.intra.test]
        cgroup: "pod0f1e"
    - name: gce-proxy
      match:
        address: 100.64.1.2:3128
        host_unit: squid.service
    - name: internet
      match: {upstream_of: gce-proxy, dst_class: public}
destinations:
  allow: [login.example.test:443]
bypass:
  exempt_namespaces: [kube-system]
"#;

    fn rec(dst: &str, class: DstClass) -> FlowRecord {
        FlowRecord {
            dst: Some(dst.parse().expect("addr")),
            dst_class: Some(class),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn legs() {
        let c = Config::from_yaml(LAB).expect("config").chain;
        assert_eq!(c.hops.len(), 2);
        assert_eq!(c.proxy_ports(), vec![3128, 3128, 3128]);
        let mut r = rec("10.96.0.10:3128", DstClass::Private);
        r.pod_uid = Some("x".into());
        assert_eq!(classify(&c, &r).map(|l| l.leg), Some("client->gke-squid".into()));
        // By Service name, as the Kubernetes index names it.
        let mut r = rec("10.96.7.7:3128", DstClass::Service);
        r.dst_name = Some("intra-proxy/squid-proxy-service:3128".into());
        assert_eq!(classify(&c, &r).map(|l| l.hop), Some("gke-squid".into()));
        let mut r = rec("100.64.1.2:3128", DstClass::Private);
        r.cgroup = Some("/kubepods/burstable/pod0f1e-aa/abc".into());
        assert_eq!(classify(&c, &r).map(|l| l.leg), Some("gke-squid->gce-proxy".into()));
        let mut r = rec("203.0.113.9:443", DstClass::Public);
        r.unit = Some("squid.service".into());
        assert_eq!(
            classify(&c, &r),
            Some(Leg { hop: "internet".into(), leg: "gce-proxy->internet".into(), depth: 2 })
        );
        let mut r = rec("203.0.113.9:443", DstClass::Public);
        r.namespace = Some("app".into());
        assert_eq!(classify(&c, &r).map(|l| l.leg), Some("direct".into()));
        r.namespace = Some("kube-system".into());
        assert_eq!(classify(&c, &r), None, "exempt namespace");
        assert_eq!(
            classify(&c, &rec("10.1.2.3:5432", DstClass::Private)),
            None,
            "private, not a hop: not the chain's business"
        );
        assert_eq!(c.target_label("login.example.test:443"), "login.example.test:443");
        assert_eq!(c.target_label("evil.test:443"), "other");
        // DNS: the hop that asked, else the hop whose name was asked.
        assert_eq!(dns_hop(&c, None, "Squid.Intra.Test."), Some("gke-squid".into()));
        assert_eq!(dns_hop(&c, Some("gce-proxy"), "login.example.test"), Some("gce-proxy".into()));
        assert_eq!(dns_hop(&c, None, "login.example.test"), None);
        let owner = FlowRecord { unit: Some("squid.service".into()), ..FlowRecord::default() };
        assert_eq!(owner_hop(&c, &owner), Some("gce-proxy"));
        assert_eq!(c.hops[0].client_address(), Some("10.96.0.10:3128".parse().expect("addr")));
    }

    #[test]
    fn a_routed_hop_is_reached_by_the_destinations_it_serves() {
        let c = Config::from_yaml(
            "version: 1\nchain:\n  hops:\n    - {name: squid, match: {address: '203.0.113.3:3128'}}\n    - {name: egw, protocol: routed, match: {destinations: ['203.0.113.0/24'], egress_ips: ['192.0.2.10']}}\n",
        )
        .expect("config")
        .chain;
        let mut r = rec("203.0.113.9:443", DstClass::Public);
        r.namespace = Some("app".into());
        assert_eq!(
            classify(&c, &r),
            Some(Leg { hop: "egw".into(), leg: "client->egw".into(), depth: 1 }),
            "through the gateway, not a bypass"
        );
        // A proxy's own address inside the served range is the proxy.
        let r = rec("203.0.113.3:3128", DstClass::Public);
        assert_eq!(classify(&c, &r).map(|l| l.hop), Some("squid".into()));
        // After DNAT, the backend decides.
        let mut r = rec("10.96.0.1:443", DstClass::Service);
        r.dst_actual = Some("203.0.113.20:443".parse().expect("addr"));
        assert_eq!(classify(&c, &r).map(|l| l.hop), Some("egw".into()));
        // Outside the served CIDRs: a bypass as before.
        let r = rec("198.51.100.9:443", DstClass::Public);
        assert_eq!(classify(&c, &r).map(|l| l.leg), Some("direct".into()));
    }
}
