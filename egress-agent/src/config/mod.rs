//! The agent's configuration file (`--config`, YAML) in one place: its
//! schema ([`file`]), validated into the plain settings below before
//! anything is built. A leaf: it imports no other module of the agent.
//!
//! Sections: `chain` (the proxy hops, in the order a request crosses them),
//! `destinations` (the `target` label allow-list), `bypass`, `dns`, `probes`,
//! `tls`.
//! `attribution:` and `labels:` are refused with what to use instead.
pub mod duration;
mod file;
pub mod net;
mod probes;
mod routed;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use egress_common::{DNS_PORT, MAX_TLS_PORTS, TLS_PORT};

use self::file::{BypassConfig, ConfigFile, DnsConfig, TlsConfig};
use self::routed::routed;
pub use self::{
    duration::{DurationError, parse_duration},
    net::{AddrError, AddrMatch, Cidr, DEFAULT_PRIVATE, parse_ranges},
    probes::{MAX_PROBE_TARGETS, MIN_PROBE_INTERVAL, ProbeSettings, ProbeTls},
    routed::Routed,
};

/// Hop names the agent gives itself: past the last hop, and egress that
/// bypassed the chain.
pub const INTERNET: &str = "internet";
pub const DIRECT: &str = "direct";
/// No duration in the file above this.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {}", path.display())]
    Invalid { path: PathBuf, source: SettingsError },
}

/// What is wrong with a configuration's content.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Yaml(Box<serde_saphyr::Error>),
    #[error("unsupported config version {0} (this agent reads version 1)")]
    Version(u32),
    #[error(
        "`attribution:` is not read by this agent: the sources are chosen with flags (`--kube auto|true|false` with `--node-name`/`--kubeconfig` for Kubernetes metadata; pods and systemd units come from cgroup paths under `--cgroup-root`, always); remove the section"
    )]
    Attribution,
    #[error(
        "`labels:` is not read by this agent: metric labels are always bounded (namespace, workload, hop, reason, dst_class; CONNECT targets only from `destinations.allow`), pod and IP labels are not offered; remove the section"
    )]
    Labels,
    #[error("hop name `{0}` is empty, reserved or repeated")]
    HopName(String),
    #[error("hop {hop}: protocol `{protocol}` is not one of http-connect, tls-sni, routed")]
    HopProtocol { hop: String, protocol: String },
    #[error("hop {hop}: agents: `{agent}` is not host:port")]
    HopAgent { hop: String, agent: String },
    #[error("hop {hop}: address {address}")]
    HopAddress { hop: String, address: String, source: AddrError },
    #[error(
        "hop {0} has no `address`, `addresses` or `service`: clients could not be seen reaching it"
    )]
    HopUnreachable(String),
    #[error("hop {0}: protocol routed needs `match.destinations` (the CIDRs the gateway serves)")]
    RoutedNoDestinations(String),
    #[error("hop {hop}: destinations: {cidr}")]
    RoutedCidr { hop: String, cidr: String, source: AddrError },
    #[error("hop {hop}: egress_ips: `{ip}` is not an IP address")]
    RoutedEgressIp { hop: String, ip: String },
    #[error(
        "hop {hop}: `{field}` is for proxies clients connect to; a routed hop is matched by `destinations` (and `egress_ips` on the gateway)"
    )]
    RoutedField { hop: String, field: &'static str },
    #[error("hop {hop}: `{field}` is only read for protocol routed")]
    NotRouted { hop: String, field: &'static str },
    #[error("{field}")]
    Duration { field: &'static str, source: DurationError },
    #[error("dns.timeout {0:?} is outside 100ms..120s")]
    DnsTimeout(Duration),
    #[error("tls.ports: at most {MAX_TLS_PORTS} ports, got {0}")]
    TlsPorts(usize),
    #[error("probes.targets: 1 to {MAX_PROBE_TARGETS} targets, got {0}")]
    ProbeTargetCount(usize),
    #[error("probes.targets: `{0}` is not host:port")]
    ProbeTarget(String),
    #[error("probes.interval {0:?} is below {MIN_PROBE_INTERVAL:?}")]
    ProbeInterval(Duration),
    #[error("probes.timeout {0:?} must be above 0 and at most the interval")]
    ProbeTimeout(Duration),
    #[error("probes.jitter {0} is not in 0..=0.5")]
    ProbeJitter(f64),
    #[error("probes need a chain: the first hop is where they connect")]
    ProbeNoChain,
    #[error("probes.proxy is needed: hop {0} has no ip:port address")]
    ProbeNoProxy(String),
    #[error("probes.{0} needs probes.tls: true")]
    ProbeTlsOption(&'static str),
    #[error(
        "probes.tls_ca and probes.tls_insecure_skip_verify exclude each other: with the latter no certificate is verified"
    )]
    ProbeTlsCaUnused,
}

/// Everything `--config` says, validated.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub chain: ChainSettings,
    pub dns: DnsSettings,
    pub tls: TlsSettings,
    /// Active probes (none unless configured).
    pub probes: Option<ProbeSettings>,
}

/// The proxy chain: its hops in order, the `target` label allow-list, and
/// what counts as a bypass.
#[derive(Debug, Clone, Default)]
pub struct ChainSettings {
    pub hops: Vec<Hop>,
    /// `host:port` targets that keep their own metric label value.
    pub allow: Vec<String>,
    /// Egress to public addresses outside the chain is reported (`direct`),
    /// except from these; None: not reported.
    pub bypass: Option<Bypass>,
}

/// What a hop speaks with its clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HopProtocol {
    /// An HTTP proxy: CONNECT request, status line answer.
    #[default]
    HttpConnect,
    /// A TLS passthrough routing by the ClientHello's SNI.
    TlsSni,
    /// A transparent gateway: matched by the destinations it serves and,
    /// on its machine, by conntrack SNAT ([`routed::Routed`]).
    Routed,
}

impl HopProtocol {
    fn parse(hop: &str, p: Option<&str>) -> Result<Self, SettingsError> {
        match p.map(str::trim) {
            None | Some("http-connect") => Ok(Self::HttpConnect),
            Some("tls-sni") => Ok(Self::TlsSni),
            Some("routed") => Ok(Self::Routed),
            Some(other) => Err(SettingsError::HopProtocol {
                hop: hop.to_string(),
                protocol: other.to_string(),
            }),
        }
    }
}

/// One hop, matched by where clients reach it and by what its processes are.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    pub name: String,
    pub protocol: HopProtocol,
    /// `address`/`addresses`.
    pub addrs: Vec<AddrMatch>,
    /// `namespace/name:port` of its Service, as the Kubernetes index names destinations.
    pub service: Option<String>,
    service_port: Option<u16>,
    /// DNS names clients resolve to reach it.
    pub names: Vec<String>,
    /// Names this proxy writes in its answers (`Via`, `X-Cache`, …).
    pub via_names: Vec<String>,
    /// `host:port` of the peer API of the agents on this hop's machines
    /// (a hop outside Kubernetes); `explain --assemble` asks them.
    pub agents: Vec<String>,
    pub host_unit: Option<String>,
    pub comm: Option<String>,
    /// A substring of its processes' cgroup path.
    pub cgroup: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    pub namespace: Option<String>,
    /// The first address given as `ip:port`, as written.
    client_address: Option<SocketAddr>,
    /// `protocol: routed`: a transparent gateway; None for a proxy.
    pub routed: Option<Routed>,
}

impl Hop {
    /// Where a client connects to reach it: the first `address` given as ip:port.
    pub fn client_address(&self) -> Option<SocketAddr> {
        self.client_address
    }

    /// Ports clients reach this hop on (for the payload hooks).
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.addrs.iter().map(|a| a.port).filter(|&p| p != 0).collect();
        p.extend(self.service_port);
        p
    }
}

#[derive(Debug, Clone, Default)]
pub struct Bypass {
    pub exempt_namespaces: Vec<String>,
    pub exempt_units: Vec<String>,
}

/// What the agent does with DNS.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// 0: off.
    pub port: u16,
    /// An unanswered query is a failed lookup after this long.
    pub timeout: Duration,
    /// Names kept as metric label values, lower-case, no trailing dot.
    pub names: Vec<String>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self { port: DNS_PORT, timeout: Duration::from_secs(5), names: vec![] }
    }
}

/// Which TLS flows have their ClientHello read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Remote ports (empty: off).
    pub ports: Vec<u16>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self { ports: vec![TLS_PORT] }
    }
}

impl TlsSettings {
    fn from_file(c: Option<&TlsConfig>) -> Result<Self, SettingsError> {
        let Some(ports) = c.and_then(|c| c.ports.as_ref()) else { return Ok(Self::default()) };
        let mut ports: Vec<u16> = ports.iter().copied().filter(|&p| p != 0).collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.len() > MAX_TLS_PORTS {
            return Err(SettingsError::TlsPorts(ports.len()));
        }
        Ok(Self { ports })
    }
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text)
            .map_err(|source| ConfigError::Invalid { path: path.to_path_buf(), source })
    }

    /// Validate a configuration given as YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, SettingsError> {
        Self::from_file(
            &serde_saphyr::from_str::<ConfigFile>(text)
                .map_err(|e| SettingsError::Yaml(Box::new(e)))?,
        )
    }

    fn from_file(cfg: &ConfigFile) -> Result<Self, SettingsError> {
        if cfg.version != 1 {
            return Err(SettingsError::Version(cfg.version));
        }
        if cfg.attribution {
            return Err(SettingsError::Attribution);
        }
        if cfg.labels {
            return Err(SettingsError::Labels);
        }
        let mut hops: Vec<Hop> = Vec::new();
        for h in cfg.chain.as_ref().map(|c| c.hops.as_slice()).unwrap_or_default() {
            let m = &h.matcher;
            if m.upstream_of.is_some() || h.name == INTERNET {
                continue; // the internet pseudo-hop is implied past the last hop
            }
            if h.name.is_empty() || h.name == DIRECT || hops.iter().any(|x| x.name == h.name) {
                return Err(SettingsError::HopName(h.name.clone()));
            }
            let protocol = HopProtocol::parse(&h.name, h.protocol.as_deref())?;
            let routed = routed(h, protocol)?;
            let mut addrs = Vec::new();
            for a in m.address.iter().chain(&m.addresses) {
                addrs.push(a.parse().map_err(|source| SettingsError::HopAddress {
                    hop: h.name.clone(),
                    address: a.clone(),
                    source,
                })?);
            }
            let service =
                m.service.as_ref().map(|s| format!("{}/{}:{}", s.namespace, s.name, s.port));
            if addrs.is_empty() && service.is_none() && routed.is_none() {
                return Err(SettingsError::HopUnreachable(h.name.clone()));
            }
            for a in &h.agents {
                let ok = a.rsplit_once(':').is_some_and(|(host, p)| {
                    !host.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0)
                });
                if !ok || a.contains(char::is_whitespace) {
                    return Err(SettingsError::HopAgent { hop: h.name.clone(), agent: a.clone() });
                }
            }
            hops.push(Hop {
                name: h.name.clone(),
                protocol,
                addrs,
                service,
                service_port: m.service.as_ref().map(|s| s.port),
                names: m.names.clone(),
                via_names: h.via_names.iter().chain(&m.via_names).cloned().collect(),
                agents: h.agents.clone(),
                host_unit: m.host_unit.clone(),
                comm: m.comm.clone(),
                cgroup: m.cgroup.clone(),
                pod_labels: m.pod_labels.clone(),
                namespace: m.namespace.clone(),
                client_address: m.address.iter().chain(&m.addresses).find_map(|a| a.parse().ok()),
                routed,
            });
        }
        let bypass = (cfg.chain.is_some() && cfg.bypass.report).then(|| bypass(&cfg.bypass));
        let dns = DnsSettings::from_file(cfg.dns.as_ref())?;
        let tls = TlsSettings::from_file(cfg.tls.as_ref())?;
        let probes = cfg.probes.as_ref().map(|p| ProbeSettings::from_file(p, &hops)).transpose()?;
        Ok(Self {
            chain: ChainSettings { hops, allow: cfg.destinations.allow.clone(), bypass },
            dns,
            tls,
            probes,
        })
    }
}

fn bypass(b: &BypassConfig) -> Bypass {
    Bypass { exempt_namespaces: b.exempt_namespaces.clone(), exempt_units: b.exempt_units.clone() }
}

/// A duration of the file (at most a day), or its default.
fn duration(
    v: Option<&str>,
    field: &'static str,
    default: Duration,
) -> Result<Duration, SettingsError> {
    let Some(s) = v else { return Ok(default) };
    let d = parse_duration(s).map_err(|source| SettingsError::Duration { field, source })?;
    if d > MAX_DURATION {
        return Err(SettingsError::Duration {
            field,
            source: DurationError::Range(s.trim().to_string()),
        });
    }
    Ok(d)
}

impl ChainSettings {
    /// Ports of the hops (for the payload hooks).
    pub fn proxy_ports(&self) -> Vec<u16> {
        self.hops.iter().flat_map(Hop::ports).collect()
    }

    /// Bounded metric label value for a CONNECT target.
    pub fn target_label<'a>(&self, target: &'a str) -> &'a str {
        if self.allow.iter().any(|a| a == target) { target } else { "other" }
    }
}

impl DnsSettings {
    fn from_file(c: Option<&DnsConfig>) -> Result<Self, SettingsError> {
        let Some(c) = c else { return Ok(Self::default()) };
        let timeout = duration(c.timeout.as_deref(), "dns.timeout", Duration::from_secs(5))?;
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(120) {
            return Err(SettingsError::DnsTimeout(timeout));
        }
        let port = if c.enabled == Some(false) { 0 } else { c.port.unwrap_or(DNS_PORT) };
        Ok(Self {
            port,
            timeout,
            names: c.names.iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect(),
        })
    }

    /// Bounded label value for a name: itself when allow-listed, else `other`.
    pub fn name_label<'a>(&self, name: &'a str) -> &'a str {
        if self.names.iter().any(|n| n == name) { name } else { "other" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_probes(probes: &str) -> Result<Config, SettingsError> {
        Config::from_yaml(&format!(
            "version: 1\nchain:\n  hops:\n    - {{name: gke-squid, match: {{address: '10.96.0.10:3128'}}}}\n    - {{name: gce-proxy, match: {{address: '100.64.1.2:3128'}}}}\n{probes}"
        ))
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let bad = |y: &str| Config::from_yaml(y).expect_err("must fail").to_string();
        assert!(bad("version: 2\n").contains("version"));
        assert!(
            bad("version: 1\nchain:\n  hops:\n    - name: a\n      match: {comm: squid}\n")
                .contains("no `address`")
        );
        assert!(
            bad("version: 1\nchain:\n  hops:\n    - name: a\n      match: {address: 'nope:1'}\n")
                .contains("address")
        );
        assert!(bad("version: 1\nchain:\n  hops:\n    - {name: a, match: {address: '10.0.0.1:1'}}\n    - {name: a, match: {address: '10.0.0.2:1'}}\n").contains("repeated"));
        assert!(Config::from_yaml("version: 1\nchian: {}\n").is_err(), "unknown keys are refused");
        assert!(bad("version: 1\nchain:\n  hops:\n    - {name: a, agents: ['10.0.0.1'], match: {address: '10.0.0.1:1'}}\n").contains("host:port"));
        let c = Config::from_yaml("version: 1\nchain:\n  hops:\n    - {name: a, agents: ['10.0.0.1:9465', 'vm.internal:9465'], match: {address: '10.0.0.1:1'}}\n").expect("agents");
        assert_eq!(c.chain.hops[0].agents, ["10.0.0.1:9465", "vm.internal:9465"]);
    }

    #[test]
    fn unread_sections_are_refused_with_what_to_use_instead() {
        let e = Config::from_yaml("version: 1\nattribution:\n  kubernetes: true\n")
            .expect_err("attribution");
        assert!(matches!(e, SettingsError::Attribution) && e.to_string().contains("--kube"), "{e}");
        let e = Config::from_yaml("version: 1\nattribution:\n").expect_err("even empty");
        assert!(matches!(e, SettingsError::Attribution), "{e}");
        let e =
            Config::from_yaml("version: 1\nlabels: {pod: false, ip: false}\n").expect_err("labels");
        assert!(
            matches!(e, SettingsError::Labels) && e.to_string().contains("destinations.allow"),
            "{e}"
        );
    }

    #[test]
    fn hop_protocols() {
        let hop = |p: &str| {
            Config::from_yaml(&format!(
                "version: 1\nchain:\n  hops:\n    - name: gw\n      protocol: {p}\n      match: {{address: \"10.0.0.1:443\"}}\n"
            ))
        };
        assert_eq!(
            hop("http-connect").expect("ok").chain.hops[0].protocol,
            HopProtocol::HttpConnect
        );
        assert_eq!(hop("tls-sni").expect("ok").chain.hops[0].protocol, HopProtocol::TlsSni);
        let err = hop("socks5").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "hop gw: protocol `socks5` is not one of http-connect, tls-sni, routed"
        );
        let plain = Config::from_yaml(
            "version: 1\nchain:\n  hops:\n    - name: gw\n      match: {address: \"10.0.0.1:3128\"}\n",
        );
        assert_eq!(plain.expect("ok").chain.hops[0].protocol, HopProtocol::HttpConnect);
    }

    #[test]
    fn tls_settings() {
        let ports = |y: &str| Config::from_yaml(y).map(|c| c.tls.ports);
        assert_eq!(ports("version: 1\n").expect("default"), vec![443]);
        assert_eq!(ports("version: 1\ntls: {}\n").expect("default"), vec![443]);
        assert_eq!(
            ports("version: 1\ntls: {ports: [8443, 443, 443]}\n").expect("ok"),
            vec![443, 8443]
        );
        assert_eq!(ports("version: 1\ntls: {ports: []}\n").expect("off"), Vec::<u16>::new());
        assert_eq!(ports("version: 1\ntls: {ports: [0]}\n").expect("off"), Vec::<u16>::new());
        let err = ports("version: 1\ntls: {ports: [1, 2, 3, 4, 5]}\n").expect_err("too many");
        assert_eq!(err.to_string(), "tls.ports: at most 4 ports, got 5");
        assert!(ports("version: 1\ntls: {port: 443}\n").is_err(), "unknown key");
        assert_eq!(Config::default().tls.ports, vec![443]);
    }

    #[test]
    fn dns_settings() {
        let c = Config::from_yaml(
            "version: 1\ndns:\n  timeout: 1500ms\n  names: [Login.Example.Test.]\n",
        )
        .expect("ok");
        assert_eq!((c.dns.port, c.dns.timeout), (53, Duration::from_millis(1500)));
        assert_eq!(
            (c.dns.name_label("login.example.test"), c.dns.name_label("x.test")),
            ("login.example.test", "other")
        );
        assert_eq!(
            Config::from_yaml("version: 1\ndns: {enabled: false}\n").expect("ok").dns.port,
            0
        );
        assert_eq!(
            Config::from_yaml("version: 1\ndns: {timeout: 1.5s}\n").expect("decimals").dns.timeout,
            Duration::from_millis(1500)
        );
        assert!(Config::from_yaml("version: 1\ndns: {timeout: 10m}\n").is_err());
        assert!(Config::from_yaml("version: 1\ndns: {timeout: 10x}\n").is_err());
    }

    #[test]
    fn probes_are_validated() {
        let p = with_probes(
            "probes:\n  targets: [login.example.test:443]\n  interval: 5s\n  timeout: 2s\n",
        )
        .expect("ok")
        .probes
        .expect("plan");
        assert_eq!(
            (p.proxy.as_str(), p.interval, p.timeout, p.first_hop.as_str()),
            ("10.96.0.10:3128", Duration::from_secs(5), Duration::from_secs(2), "gke-squid")
        );
        assert_eq!(
            with_probes("probes:\n  targets: [a.test:443]\n  interval: 1h\n")
                .expect("hours")
                .probes
                .map(|p| p.interval),
            Some(Duration::from_secs(3600))
        );
        assert!(with_probes("").expect("ok").probes.is_none(), "off unless configured");
        let tls = |y: &str| with_probes(y).expect("tls").probes.and_then(|p| p.tls);
        assert_eq!(tls("probes:\n  targets: [a.test:443]\n"), None, "no TLS unless asked");
        assert_eq!(
            tls("probes:\n  targets: [a.test:443]\n  tls: true\n"),
            Some(ProbeTls::default()),
            "verified against the system's roots by default"
        );
        assert_eq!(
            tls("probes:\n  targets: [a.test:443]\n  tls: true\n  tls_ca: /etc/egress/ca.pem\n"),
            Some(ProbeTls { ca: Some("/etc/egress/ca.pem".into()), insecure_skip_verify: false })
        );
        assert_eq!(
            tls(
                "probes:\n  targets: [a.test:443]\n  tls: true\n  tls_insecure_skip_verify: true\n"
            )
            .map(|t| t.insecure_skip_verify),
            Some(true)
        );
        for bad in [
            "probes:\n  targets: []\n",
            "probes:\n  targets: [nope]\n",
            "probes:\n  targets: [a.test:443]\n  interval: 100ms\n",
            "probes:\n  targets: [a.test:443]\n  interval: 2d\n",
            "probes:\n  targets: [a.test:443]\n  interval: 5s\n  timeout: 6s\n",
            "probes:\n  targets: [a.test:443]\n  jitter: 0.9\n",
            "probes:\n  targets: [a.test:443]\n  tls_ca: /etc/ca.pem\n",
            "probes:\n  targets: [a.test:443]\n  tls_insecure_skip_verify: true\n",
            "probes:\n  targets: [a.test:443]\n  tls: true\n  tls_ca: /ca.pem\n  tls_insecure_skip_verify: true\n",
            "probes:\n  targets: [a.test:443]\n  bogus: 1\n",
        ] {
            assert!(with_probes(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_PROBE_TARGETS).map(|i| format!("t{i}.test:443")).collect();
        assert!(
            with_probes(&format!("probes:\n  targets: [{}]\n", many.join(", "))).is_err(),
            "bounded"
        );
    }

    #[test]
    fn the_shipped_configs_load() {
        for p in ["../deploy/kubernetes/base/config.yaml", "../deploy/gce/config.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
            let c = Config::load(&path)
                .unwrap_or_else(|e| panic!("{p}: {e} ({:?})", std::error::Error::source(&e)));
            assert_eq!(c.chain.hops.len(), 2, "{p}");
            assert_eq!(c.chain.proxy_ports(), vec![3128, 3128], "{p}");
            assert!(c.chain.hops.iter().all(|h| h.protocol == HopProtocol::HttpConnect), "{p}");
            assert_eq!(c.tls.ports, vec![443], "{p}");
        }
    }
}
