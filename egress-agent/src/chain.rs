//! The proxy chain as configuration, and which leg of it a flow is.
//!
//! A hop is matched two ways: by where clients reach it (`service`,
//! `address`/`addresses`) and by what its own processes are (`host_unit`,
//! `comm`, `cgroup`, `pod_labels`). A flow from hop A's process to hop B's
//! address is the leg `A->B`; from a non-hop process to hop A, `client->A`;
//! from the last hop to anything that is not a hop, `A->internet`; from a
//! non-hop process to a public address, `direct` (a bypass).
use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use serde::Deserialize;

use crate::{record::FlowRecord, remote::{Cidr, DstClass}};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    #[serde(default)]
    pub attribution: Option<Attribution>,
    #[serde(default)]
    pub chain: Option<ChainConfig>,
    #[serde(default)]
    pub destinations: Destinations,
    #[serde(default)]
    pub bypass: BypassConfig,
    #[serde(default)]
    pub labels: Option<LabelPolicy>,
    /// DNS observation (on by default, port 53).
    #[serde(default)]
    pub dns: Option<crate::dns::DnsConfig>,
    /// Active probes through the chain (off unless configured).
    #[serde(default)]
    pub probes: Option<crate::prober::ProbesConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribution {
    #[serde(default)]
    pub kubernetes: Option<bool>,
    #[serde(default)]
    pub systemd_units: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPolicy {
    #[serde(default)]
    pub pod: bool,
    #[serde(default)]
    pub ip: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub hops: Vec<HopConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `http-connect` (default for hops with an address): read the CONNECT
    /// line and the status line of flows to this hop.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: HopMatch,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopMatch {
    /// Where clients reach it: a Service (resolved with the Kubernetes index).
    #[serde(default)]
    pub service: Option<ServiceRef>,
    /// Where clients reach it: `ip:port` or `cidr:port` (one or a list).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// DNS names clients resolve to reach it (e.g. the name in HTTPS_PROXY):
    /// a failed lookup of one is a `dns_failed` at this hop.
    #[serde(default)]
    pub names: Vec<String>,
    /// What it is: its processes' systemd unit, comm, cgroup path substring,
    /// pod labels (and pod namespace).
    #[serde(default)]
    pub host_unit: Option<String>,
    #[serde(default)]
    pub comm: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// For the `internet` pseudo-hop: the hop whose upstream connects it names.
    #[serde(default)]
    pub upstream_of: Option<String>,
    #[serde(default)]
    pub dst_class: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    /// `host:port` targets that keep their own metric label value.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BypassConfig {
    #[serde(default = "yes")]
    pub report: bool,
    #[serde(default)]
    pub exempt_namespaces: Vec<String>,
    #[serde(default)]
    pub exempt_units: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for BypassConfig {
    fn default() -> Self {
        Self { report: true, exempt_namespaces: vec![], exempt_units: vec![] }
    }
}

/// `ip:port` or `cidr:port` (port 0 or absent = any port).
#[derive(Debug, Clone, Copy)]
struct AddrMatch {
    net: Cidr,
    port: u16,
}

fn parse_addr(s: &str) -> Result<AddrMatch, String> {
    // [v6]:port, v4:port, cidr:port, or a bare ip/cidr.
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(AddrMatch { net: sa.ip().to_string().parse()?, port: sa.port() });
    }
    match s.rsplit_once(':') {
        Some((net, port)) if !net.contains(':') || net.starts_with('[') => {
            let net = net.trim_start_matches('[').trim_end_matches(']');
            Ok(AddrMatch { net: net.parse()?, port: port.parse().map_err(|e| format!("{s}: port: {e}"))? })
        }
        _ => Ok(AddrMatch { net: s.parse()?, port: 0 }),
    }
}

#[derive(Debug, Clone)]
pub struct Hop {
    pub name: String,
    addrs: Vec<AddrMatch>,
    service: Option<String>,
    m: HopMatch,
}

impl Hop {
    fn reached_at(&self, r: &FlowRecord) -> bool {
        let hit = |a: Option<SocketAddr>| a.is_some_and(|a| self.addrs.iter().any(|m| m.net.contains(a.ip()) && (m.port == 0 || m.port == a.port())));
        hit(r.dst) || hit(r.dst_actual) || self.service.as_ref().is_some_and(|s| r.dst_name.as_deref() == Some(s.as_str()))
    }

    fn is_owner_of(&self, r: &FlowRecord) -> bool {
        let m = &self.m;
        let mut any = false;
        let mut all = true;
        let mut check = |cond: Option<bool>| {
            if let Some(c) = cond {
                any = true;
                all &= c;
            }
        };
        check(m.host_unit.as_ref().map(|u| r.unit.as_deref() == Some(u.as_str())));
        check(m.comm.as_ref().map(|c| r.comm == *c));
        check(m.cgroup.as_ref().map(|c| r.cgroup.as_deref().is_some_and(|p| p.contains(c.as_str()))));
        check(m.namespace.as_ref().map(|n| r.namespace.as_deref() == Some(n.as_str())));
        check((!m.pod_labels.is_empty()).then(|| r.pod_labels.as_ref().is_some_and(|l| m.pod_labels.iter().all(|(k, v)| l.get(k) == Some(v)))));
        any && all
    }

    /// Where a client connects to reach it: the first `address` given as ip:port.
    pub fn client_address(&self) -> Option<SocketAddr> {
        self.m.address.iter().chain(&self.m.addresses).find_map(|a| a.parse().ok())
    }

    /// Ports clients reach this hop on (for the payload hooks).
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.addrs.iter().map(|a| a.port).filter(|&p| p != 0).collect();
        if let Some(s) = &self.m.service {
            p.push(s.port);
        }
        p
    }
}

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

#[derive(Debug, Clone, Default)]
pub struct Chain {
    pub hops: Vec<Hop>,
    pub allow: Vec<String>,
    pub bypass: Option<BypassConfig>,
    pub dns: crate::dns::DnsSettings,
    pub probes: Option<crate::prober::ProbePlan>,
}

pub const INTERNET: &str = "internet";
pub const DIRECT: &str = "direct";

impl Chain {
    pub fn from_config(cfg: &ConfigFile) -> Result<Self, String> {
        if cfg.version != 1 {
            return Err(format!("unsupported config version {} (this agent reads version 1)", cfg.version));
        }
        let mut hops = Vec::new();
        for h in cfg.chain.as_ref().map(|c| c.hops.as_slice()).unwrap_or_default() {
            if h.matcher.upstream_of.is_some() || h.name == INTERNET {
                continue; // the internet pseudo-hop is implied past the last hop
            }
            if h.name.is_empty() || h.name == DIRECT || hops.iter().any(|x: &Hop| x.name == h.name) {
                return Err(format!("hop name `{}` is empty, reserved or repeated", h.name));
            }
            let mut addrs = Vec::new();
            for a in h.matcher.address.iter().chain(&h.matcher.addresses) {
                addrs.push(parse_addr(a).map_err(|e| format!("hop {}: address {a}: {e}", h.name))?);
            }
            let service = h.matcher.service.as_ref().map(|s| format!("{}/{}:{}", s.namespace, s.name, s.port));
            if addrs.is_empty() && service.is_none() {
                return Err(format!("hop {} has no `address`, `addresses` or `service`: clients could not be seen reaching it", h.name));
            }
            hops.push(Hop { name: h.name.clone(), addrs, service, m: h.matcher.clone() });
        }
        let dns = crate::dns::DnsSettings::from_config(cfg.dns.as_ref())?;
        let probes = cfg.probes.as_ref().map(|p| crate::prober::ProbePlan::from_config(p, &hops)).transpose()?;
        Ok(Self { hops, allow: cfg.destinations.allow.clone(), bypass: (cfg.chain.is_some() && cfg.bypass.report).then(|| cfg.bypass.clone()), dns, probes })
    }

    pub fn load(path: &Path) -> anyhow::Result<(Self, ConfigFile)> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
        let cfg: ConfigFile = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let chain = Self::from_config(&cfg).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        Ok((chain, cfg))
    }

    pub fn proxy_ports(&self) -> Vec<u16> {
        self.hops.iter().flat_map(Hop::ports).collect()
    }

    /// Bounded metric label value for a CONNECT target.
    pub fn target_label<'a>(&self, target: &'a str) -> &'a str {
        if self.allow.iter().any(|a| a == target) { target } else { "other" }
    }

    /// The hop whose process `owner` is (only owner fields are read).
    pub fn owner_hop(&self, owner: &FlowRecord) -> Option<&str> {
        self.hops.iter().find(|h| h.is_owner_of(owner)).map(|h| h.name.as_str())
    }

    /// The hop a DNS lookup is about: the hop that asked (a proxy resolving
    /// its upstream or an origin), else the hop whose name was asked.
    pub fn dns_hop(&self, asked_by: Option<&str>, name: &str) -> Option<String> {
        asked_by.map(str::to_string).or_else(|| {
            let name = name.trim_end_matches('.');
            self.hops.iter().find(|h| h.m.names.iter().any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name))).map(|h| h.name.clone())
        })
    }

    pub fn classify(&self, r: &FlowRecord) -> Option<Leg> {
        if self.hops.is_empty() {
            return None;
        }
        let from = self.hops.iter().position(|h| h.is_owner_of(r));
        let to = self.hops.iter().position(|h| h.reached_at(r));
        let name = |i: usize| self.hops[i].name.clone();
        match (from, to) {
            (Some(f), Some(t)) => Some(Leg { hop: name(t), leg: format!("{}->{}", name(f), name(t)), depth: t }),
            (None, Some(t)) => Some(Leg { hop: name(t), leg: format!("client->{}", name(t)), depth: t }),
            (Some(f), None) if matches!(r.dst_class, Some(DstClass::Public | DstClass::Private)) => {
                Some(Leg { hop: INTERNET.into(), leg: format!("{}->{INTERNET}", name(f)), depth: self.hops.len() })
            }
            (None, None) => {
                let b = self.bypass.as_ref()?;
                let exempt = r.namespace.as_ref().is_some_and(|n| b.exempt_namespaces.contains(n)) || r.unit.as_ref().is_some_and(|u| b.exempt_units.contains(u));
                (r.dst_class == Some(DstClass::Public) && !exempt).then(|| Leg { hop: DIRECT.into(), leg: DIRECT.into(), depth: 0 })
            }
            _ => None,
        }
    }
}

/// `30s`, `1500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (30s, 1500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("`{s}`: unit must be ms, s or m")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn chain() -> Chain {
        let cfg: ConfigFile = serde_saphyr::from_str(LAB).expect("yaml");
        Chain::from_config(&cfg).expect("chain")
    }

    fn rec(dst: &str, class: DstClass) -> FlowRecord {
        FlowRecord { dst: Some(dst.parse().expect("addr")), dst_class: Some(class), ..FlowRecord::default() }
    }

    #[test]
    fn legs() {
        let c = chain();
        assert_eq!(c.hops.len(), 2);
        assert_eq!(c.proxy_ports(), vec![3128, 3128, 3128]);
        let mut r = rec("10.96.0.10:3128", DstClass::Private);
        r.pod_uid = Some("x".into());
        assert_eq!(c.classify(&r).map(|l| l.leg), Some("client->gke-squid".into()));
        // By Service name, as the Kubernetes index names it.
        let mut r = rec("10.96.7.7:3128", DstClass::Service);
        r.dst_name = Some("intra-proxy/squid-proxy-service:3128".into());
        assert_eq!(c.classify(&r).map(|l| l.hop), Some("gke-squid".into()));
        let mut r = rec("100.64.1.2:3128", DstClass::Private);
        r.cgroup = Some("/kubepods/burstable/pod0f1e-aa/abc".into());
        assert_eq!(c.classify(&r).map(|l| l.leg), Some("gke-squid->gce-proxy".into()));
        let mut r = rec("203.0.113.9:443", DstClass::Public);
        r.unit = Some("squid.service".into());
        assert_eq!(c.classify(&r), Some(Leg { hop: "internet".into(), leg: "gce-proxy->internet".into(), depth: 2 }));
        let mut r = rec("203.0.113.9:443", DstClass::Public);
        r.namespace = Some("app".into());
        assert_eq!(c.classify(&r).map(|l| l.leg), Some("direct".into()));
        r.namespace = Some("kube-system".into());
        assert_eq!(c.classify(&r), None, "exempt namespace");
        assert_eq!(c.classify(&rec("10.1.2.3:5432", DstClass::Private)), None, "private, not a hop: not the chain's business");
        assert_eq!(c.target_label("login.example.test:443"), "login.example.test:443");
        assert_eq!(c.target_label("evil.test:443"), "other");
        // DNS: the hop that asked, else the hop whose name was asked.
        assert_eq!(c.dns_hop(None, "Squid.Intra.Test."), Some("gke-squid".into()));
        assert_eq!(c.dns_hop(Some("gce-proxy"), "login.example.test"), Some("gce-proxy".into()));
        assert_eq!(c.dns_hop(None, "login.example.test"), None);
        let owner = FlowRecord { unit: Some("squid.service".into()), ..FlowRecord::default() };
        assert_eq!(c.owner_hop(&owner), Some("gce-proxy"));
        assert_eq!(c.hops[0].client_address(), Some("10.96.0.10:3128".parse().expect("addr")));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3h").is_err() && parse_duration("x").is_err());
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let bad = |y: &str| Chain::from_config(&serde_saphyr::from_str::<ConfigFile>(y).expect("yaml")).expect_err("must fail");
        assert!(bad("version: 2\n").contains("version"));
        assert!(bad("version: 1\nchain:\n  hops:\n    - name: a\n      match: {comm: squid}\n").contains("no `address`"));
        assert!(bad("version: 1\nchain:\n  hops:\n    - name: a\n      match: {address: 'nope:1'}\n").contains("address"));
        assert!(bad("version: 1\nchain:\n  hops:\n    - {name: a, match: {address: '10.0.0.1:1'}}\n    - {name: a, match: {address: '10.0.0.2:1'}}\n").contains("repeated"));
        assert!(serde_saphyr::from_str::<ConfigFile>("version: 1\nchian: {}\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn the_shipped_configs_parse() {
        for p in ["../deploy/kubernetes/base/config.yaml", "../deploy/gce/config.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
            if path.exists() {
                let (c, _) = Chain::load(&path).unwrap_or_else(|e| panic!("{p}: {e:#}"));
                assert_eq!(c.hops.len(), 2, "{p}");
            }
        }
    }
}
