//! The configuration file (`--config`, YAML) as written: every section and
//! key, unknown ones refused. [`super::Config::from_file`] validates it into
//! plain settings; nothing else reads these types.
use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    /// Refused: attribution sources are flags (`--kube`, `--cgroup-root`).
    #[serde(default, deserialize_with = "present")]
    pub attribution: bool,
    #[serde(default)]
    pub chain: Option<ChainConfig>,
    #[serde(default)]
    pub destinations: Destinations,
    #[serde(default)]
    pub bypass: BypassConfig,
    /// Refused: metric labels are always bounded.
    #[serde(default, deserialize_with = "present")]
    pub labels: bool,
    /// DNS observation (on by default, port 53).
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// Active probes through the chain (off unless configured).
    #[serde(default)]
    pub probes: Option<ProbesConfig>,
    /// TLS flows whose ClientHello is read (on by default, port 443).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `tls:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Remote ports whose flows' ClientHello (SNI) and the server's first
    /// record are read (default [443]; `[]` or `[0]`: off).
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
}

/// True for a section that is there, whatever it holds (even nothing).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    #[serde(default)]
    #[allow(dead_code, reason = "a name for the reader of the file; the agent needs none")]
    pub name: Option<String>,
    pub hops: Vec<HopConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopConfig {
    pub name: String,
    #[serde(default)]
    #[allow(dead_code, reason = "for the reader of the file")]
    pub description: Option<String>,
    /// `http-connect` (default): read the CONNECT line and the status line
    /// of flows to this hop. `tls-sni`: a TLS passthrough routing by SNI
    /// (an Istio egress gateway, HAProxy/nginx `ssl_preread`): read the
    /// ClientHello's SNI (the flow's target) and the TLS start back.
    /// `routed`: a transparent gateway (Cilium egress gateway node, NAT
    /// instance) matched by `match.destinations` and, on its own machine, by
    /// conntrack SNAT to `match.egress_ips`.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: HopMatch,
    /// The names this proxy writes in the answers it makes and relays
    /// (`Via`, `X-Cache … from`, `Proxy-Status`, error pages): Squid's
    /// `visible_hostname`, tinyproxy's `ViaProxyName`, Envoy's `proxy_name`.
    /// They tell which hop made an answer the client got.
    #[serde(default)]
    pub via_names: Vec<String>,
    /// Where the agents on this hop's machines serve the peer API
    /// (`host:port`), for a hop outside Kubernetes (the VM): `explain
    /// --assemble` asks them. A hop with a `service` is found through the
    /// Service's endpoints instead.
    #[serde(default)]
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopMatch {
    /// Same as the hop's `via_names` (accepted here too).
    #[serde(default)]
    pub via_names: Vec<String>,
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
    /// `protocol: routed` only: the destination CIDRs the gateway serves
    /// (a flow to one of them goes through it).
    #[serde(default)]
    pub destinations: Vec<String>,
    /// `protocol: routed` only: the address(es) the gateway SNATs to.
    #[serde(default)]
    pub egress_ips: Vec<String>,
    /// For the `internet` pseudo-hop: the hop whose upstream connects it names.
    #[serde(default)]
    pub upstream_of: Option<String>,
    /// For the `internet` pseudo-hop: documents which destinations it covers
    /// (the agent classifies them itself).
    #[serde(default)]
    #[allow(dead_code, reason = "the internet pseudo-hop is implied; its matcher documents it")]
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

/// `dns:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Observe DNS (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Server port (default 53).
    #[serde(default)]
    pub port: Option<u16>,
    /// A query without a response after this long is a failed lookup
    /// (`30s`, `1500ms`; default 5s, glibc's per-try timeout).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Names kept as metric label values (`egress_dns_lookups_total{name}`).
    #[serde(default)]
    pub names: Vec<String>,
}

/// `probes:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbesConfig {
    /// `host:port` CONNECT targets.
    pub targets: Vec<String>,
    /// Time between two probes of a target (default 30s, at least 1s).
    #[serde(default)]
    pub interval: Option<String>,
    /// Bound on one probe: connect, CONNECT answer and, with `tls`, the
    /// TLS handshake (default 10s, at most the interval).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Fraction of the interval each wait varies by (0..=0.5, default 0.1).
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Complete a TLS handshake with the target inside the tunnel (default off).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of CA certificates trusted for `tls` besides the system's.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Complete the handshake without verifying the target's certificate
    /// (default off): the probe then says only that a TLS server answered.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Where to connect (`host:port`, resolved at every probe as an
    /// application would); default: the first hop's first `address`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Network namespace to probe from (e.g. a pod's `/proc/<pid>/ns/net`);
    /// default: the agent's.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}
