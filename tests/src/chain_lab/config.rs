//! Addresses, names and knobs of the chain lab. Every value the lab uses comes
//! from here; defaults exist only inside the lab's namespaces.
use std::{fmt, net::Ipv4Addr, path::PathBuf, time::Duration};

/// An IPv4 prefix, printed `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask =
            if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An origin name and the address Squid #2 resolves it to (its hosts file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginName {
    pub name: String,
    pub ip: Ipv4Addr,
}

impl OriginName {
    pub fn new(name: &str, ip: Ipv4Addr) -> Self {
        Self { name: name.to_string(), ip }
    }
}

/// What the node does with pod traffic that skips the proxy and heads for
/// the internet (node → nat link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectEgress {
    /// Routed through the NAT like everything else: the bypass succeeds.
    Allow,
    /// Silently dropped at the node (a VPC egress firewall): SYN timeout.
    Drop,
    /// Rejected at the node with ICMP admin-prohibited: EHOSTUNREACH at once.
    Reject,
}

/// A proxy hop of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hop {
    /// Squid #1, the proxy pod behind the ClusterIP.
    One,
    /// Squid #2, the proxy on the GCE VM (Squid #1's `cache_peer` parent).
    Two,
}

impl Hop {
    pub fn label(self) -> &'static str {
        match self {
            Hop::One => "hop1",
            Hop::Two => "hop2",
        }
    }

    pub fn role(self) -> &'static str {
        match self {
            Hop::One => "Squid pod behind the ClusterIP",
            Hop::Two => "Squid on the GCE VM",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Hop::One => 0,
            Hop::Two => 1,
        }
    }
}

/// A veth link of the lab; faults on a link are applied in its router-side
/// namespace (node or nat), both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabLink {
    /// app ↔ node: client → ClusterIP (client→hop1 before DNAT).
    AppNode,
    /// proxy-pod ↔ node: client→hop1 after DNAT, and hop1→hop2 leaving the pod.
    ProxyPodNode,
    /// node ↔ gce-proxy: hop1→hop2 (the VPC path to the VM).
    NodeGce,
    /// node ↔ nat: direct (bypass) egress from pods.
    NodeNat,
    /// gce-proxy ↔ nat: hop2→origin before NAT.
    GceNat,
    /// nat ↔ internet: everything after MASQUERADE.
    NatInternet,
    /// dns ↔ node: the resolver pod (app pods and Squid #2 ask it).
    DnsNode,
}

impl LabLink {
    pub const ALL: [LabLink; 7] = [
        LabLink::AppNode,
        LabLink::ProxyPodNode,
        LabLink::NodeGce,
        LabLink::NodeNat,
        LabLink::GceNat,
        LabLink::NatInternet,
        LabLink::DnsNode,
    ];
}

/// See [`ChainLabConfig::squid_idle`].
#[derive(Debug, Clone, Copy)]
pub struct SquidIdle {
    pub pconn: Duration,
    pub read: Duration,
}

/// Everything the chain lab is built from.
///
/// The app and proxy-pod subnets must lie inside `pod_range` (the GCE side
/// and the NAT route the pod range back through the node).
#[derive(Debug, Clone)]
pub struct ChainLabConfig {
    /// Pod network: Squid #1's `localnet` ACL, routes back from the GCE side.
    pub pod_range: Cidr,
    /// Prefix length of the app ↔ node and proxy-pod ↔ node subnets.
    pub pod_prefix: u8,
    /// Client pod address (app namespace) and its gateway (node side).
    pub app_ip: Ipv4Addr,
    pub app_gw: Ipv4Addr,
    /// Squid #1 pod address and its gateway (node side).
    pub proxy_pod_ip: Ipv4Addr,
    pub proxy_pod_gw: Ipv4Addr,
    /// The Service ClusterIP, DNAT'ed by the node to `proxy_pod_ip`.
    pub cluster_ip: Ipv4Addr,
    /// Service port = Squid #1 `http_port` = Squid #2 `http_port`.
    pub proxy_port: u16,
    /// Prefix length of the three GCE-side links.
    pub gce_prefix: u8,
    /// node ↔ gce-proxy link: node side, VM side (Squid #2 listens here).
    pub node_gce_ip: Ipv4Addr,
    pub gce_ip: Ipv4Addr,
    /// gce-proxy ↔ nat link: VM side (Squid #2's source to origins), nat side.
    pub gce_nat_ip: Ipv4Addr,
    pub nat_gce_ip: Ipv4Addr,
    /// node ↔ nat link (direct egress): node side, nat side.
    pub node_nat_ip: Ipv4Addr,
    pub nat_node_ip: Ipv4Addr,
    /// nat ↔ internet link: the NAT's public address (MASQUERADE source), internet side.
    pub public_prefix: u8,
    pub nat_public_ip: Ipv4Addr,
    pub internet_ip: Ipv4Addr,
    /// Port of every origin (and the only port both Squids allow).
    pub origin_port: u16,
    /// An origin that answers (banner server).
    pub healthy: OriginName,
    /// An origin whose address exists but whose port is closed (RST).
    pub refused: OriginName,
    /// An origin whose address drops everything (SYN timeout).
    pub blackhole: OriginName,
    /// Not in Squid #1's ACL (allowed by Squid #2); resolves to the healthy origin.
    pub denied_at_hop1: String,
    /// In Squid #1's ACL but not in Squid #2's; resolves to the healthy origin.
    pub denied_at_hop2: String,
    /// Squid #2's source ACL (`gke_cluster`); `None`: the pod range.
    pub hop2_allowed_src: Option<Cidr>,
    /// `visible_hostname` of each Squid (shows in Via / X-Cache / error pages).
    pub hop1_hostname: String,
    pub hop2_hostname: String,
    /// Initial direct-egress policy (`set_direct_egress` changes it; `restore` resets it).
    pub direct_egress: DirectEgress,
    /// Squid `connect_timeout` / `peer_connect_timeout` / `forward_timeout`.
    pub connect_timeout: Duration,
    /// `net.ipv4.tcp_syn_retries` in every lab namespace. 1: the kernel gives
    /// up on an unanswered SYN after ≈3 s (SYNs at 0, 1, 2 s), before Squid's
    /// connect_timeout, so timeouts are the kernel's own.
    pub syn_retries: u8,
    /// Squid #1 `cache_peer … connect-fail-limit=`: failed parent connects
    /// (Squid counts any non-2xx CONNECT answer from the parent, 403 included)
    /// before it marks the parent DEAD and answers 500 without connecting.
    pub peer_connect_fail_limit: u32,
    /// Squid's idle timeouts (`pconn_timeout`, `client_idle_pconn_timeout`)
    /// and its `read_timeout` (which also ends an idle tunnel), for labs that
    /// need every connection closed soon after the load stops (the soak's
    /// drain). `None`: Squid's defaults (1 min, 2 min, 15 min).
    pub squid_idle: Option<SquidIdle>,
    /// `net.ipv4.tcp_orphan_retries` and `tcp_fin_timeout` (s) in every lab
    /// namespace: how long a closed socket whose peer went silent (its NAT
    /// mapping flushed) lingers in FIN-WAIT. `None`: the kernel's (8 FIN
    /// retransmits, ≈100 s; 60 s).
    pub orphan_linger: Option<(u8, u32)>,
    /// cgroup v2 directories Squid #1 / #2 join before running (kubelet-shaped pod cgroups).
    pub hop1_cgroup: Option<PathBuf>,
    pub hop2_cgroup: Option<PathBuf>,
    /// Bound on each client (curl's --connect-timeout and --max-time).
    pub client_timeout: Duration,
    /// Body prefix the healthy origin sends.
    pub banner: String,
    /// The resolver (dnsmasq, CoreDNS's stand-in) pod address and its gateway
    /// (node side); inside `pod_range`.
    pub dns_ip: Ipv4Addr,
    pub dns_gw: Ipv4Addr,
    /// Name of the proxy Service that pods put in HTTPS_PROXY (resolves to
    /// `cluster_ip`), e.g. `microsoft.intra.aibang.local` in seed 003.
    pub proxy_name: String,
}

impl Default for ChainLabConfig {
    fn default() -> Self {
        let ip = |a, b, c, d| Ipv4Addr::new(a, b, c, d);
        Self {
            pod_range: Cidr::new(ip(10, 0, 0, 0), 16),
            pod_prefix: 24,
            app_ip: ip(10, 0, 1, 10),
            app_gw: ip(10, 0, 1, 1),
            proxy_pod_ip: ip(10, 0, 2, 10),
            proxy_pod_gw: ip(10, 0, 2, 1),
            cluster_ip: ip(10, 96, 0, 10),
            proxy_port: 3128,
            gce_prefix: 24,
            node_gce_ip: ip(100, 64, 1, 1),
            gce_ip: ip(100, 64, 1, 2),
            gce_nat_ip: ip(100, 64, 2, 2),
            nat_gce_ip: ip(100, 64, 2, 1),
            node_nat_ip: ip(100, 64, 0, 1),
            nat_node_ip: ip(100, 64, 0, 2),
            public_prefix: 24,
            nat_public_ip: ip(198, 18, 0, 1),
            internet_ip: ip(198, 18, 0, 2),
            origin_port: 443,
            healthy: OriginName::new("login.example.test", ip(198, 19, 1, 10)),
            refused: OriginName::new("refused.example.test", ip(198, 19, 1, 11)),
            blackhole: OriginName::new("blackhole.example.test", ip(198, 19, 1, 12)),
            denied_at_hop1: "denied-at-hop1.example.test".into(),
            denied_at_hop2: "denied-at-hop2.example.test".into(),
            hop2_allowed_src: None,
            hop1_hostname: "squid-hop1".into(),
            hop2_hostname: "squid-hop2".into(),
            direct_egress: DirectEgress::Allow,
            connect_timeout: Duration::from_secs(5),
            syn_retries: 1,
            peer_connect_fail_limit: 10,
            squid_idle: None,
            orphan_linger: None,
            hop1_cgroup: None,
            hop2_cgroup: None,
            client_timeout: Duration::from_secs(20),
            banner: "egress-lab origin".into(),
            dns_ip: ip(10, 0, 53, 10),
            dns_gw: ip(10, 0, 53, 1),
            proxy_name: "squid-proxy.intra-proxy.lab.test".into(),
        }
    }
}

impl ChainLabConfig {
    /// `http://<ClusterIP>:<port>`, what pods put in HTTPS_PROXY.
    pub fn proxy_url(&self) -> String {
        format!("http://{}:{}", self.cluster_ip, self.proxy_port)
    }

    /// `http://<proxy name>:<port>`: HTTPS_PROXY as pods really have it.
    pub fn proxy_name_url(&self) -> String {
        format!("http://{}:{}", self.proxy_name, self.proxy_port)
    }

    /// curl arguments for `CONNECT host:origin_port` through the ClusterIP,
    /// then `GET path` inside the tunnel (plain HTTP: the origin speaks it).
    pub fn curl_via_chain_args(&self, host: &str, path: &str) -> Vec<String> {
        let mut a = self.curl_common();
        a.extend(["--proxytunnel".into(), "--proxy".into(), self.proxy_url()]);
        a.push(format!("http://{host}:{}{path}", self.origin_port));
        a
    }

    /// As [`Self::curl_via_chain_args`], with the proxy given by name (the
    /// client resolves it first, as a pod does).
    pub fn curl_via_name_args(&self, host: &str, path: &str) -> Vec<String> {
        let mut a = self.curl_via_chain_args(host, path);
        let url = self.proxy_url();
        if let Some(x) = a.iter_mut().find(|x| **x == url) {
            *x = self.proxy_name_url();
        }
        a
    }

    /// curl arguments for a direct (bypass) request to an internet address.
    pub fn curl_direct_args(&self, ip: Ipv4Addr, path: &str) -> Vec<String> {
        let mut a = self.curl_common();
        a.extend(["--noproxy".into(), "*".into()]);
        a.push(format!("http://{ip}:{}{path}", self.origin_port));
        a
    }

    fn curl_common(&self) -> Vec<String> {
        let t = self.client_timeout.as_secs().max(1).to_string();
        [
            "curl",
            "-sS",
            "-v",
            "--connect-timeout",
            &t,
            "--max-time",
            &t,
            "-o",
            "-",
            "-w",
            &super::client::curl_write_out(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub fn squid_hostname(&self, hop: Hop) -> &str {
        match hop {
            Hop::One => &self.hop1_hostname,
            Hop::Two => &self.hop2_hostname,
        }
    }

    /// Squid #2's source ACL in effect.
    pub fn hop2_src(&self) -> Cidr {
        self.hop2_allowed_src.unwrap_or(self.pod_range)
    }

    /// Squid #1's allowed domains: all origins and the hop-2 deny name.
    pub fn hop1_domains(&self) -> Vec<String> {
        vec![
            self.healthy.name.clone(),
            self.refused.name.clone(),
            self.blackhole.name.clone(),
            self.denied_at_hop2.clone(),
        ]
    }

    /// Squid #2's allowed domains: all origins and the hop-1 deny name.
    pub fn hop2_domains(&self) -> Vec<String> {
        vec![
            self.healthy.name.clone(),
            self.refused.name.clone(),
            self.blackhole.name.clone(),
            self.denied_at_hop1.clone(),
        ]
    }

    /// Every name the resolver knows: the proxy's, the origins', the deny names.
    pub fn dns_records(&self) -> Vec<(String, Ipv4Addr)> {
        let mut r = vec![(self.proxy_name.clone(), self.cluster_ip)];
        for o in [&self.healthy, &self.refused, &self.blackhole] {
            r.push((o.name.clone(), o.ip));
        }
        r.push((self.denied_at_hop1.clone(), self.healthy.ip));
        r.push((self.denied_at_hop2.clone(), self.healthy.ip));
        r
    }

    /// Top-level domains of the lab's names: the resolver answers NXDOMAIN
    /// for unknown names in them (and forwards nothing anywhere).
    pub fn dns_local_domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .dns_records()
            .iter()
            .filter_map(|(n, _)| n.rsplit('.').next().map(str::to_string))
            .collect();
        d.sort();
        d.dedup();
        d
    }

    /// The origin answering on `name` (deny names answer like the healthy one).
    pub fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        [&self.healthy, &self.refused, &self.blackhole]
            .into_iter()
            .find(|o| o.name == name)
            .map(|o| o.ip)
            .or_else(|| {
                (name == self.denied_at_hop1 || name == self.denied_at_hop2)
                    .then_some(self.healthy.ip)
            })
    }
}
