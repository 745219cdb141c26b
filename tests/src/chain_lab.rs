//! The real two-Squid egress chain (seed 003) in network namespaces:
//!
//! ```text
//!  app ──▶ node ──DNAT ClusterIP:3128──▶ proxy-pod (Squid #1, never_direct)
//!           │  ◀───────────────────────────┘ cache_peer CONNECT
//!           ├──▶ gce-proxy (Squid #2, hosts file) ──▶ nat (MASQUERADE) ──▶ internet (origins)
//!           ├──▶ nat (direct egress, bypassing the chain; allowed/dropped/rejected)
//!           └──▶ dns (dnsmasq: the proxy's name for the app pod, origin names for Squid #2)
//! ```
//!
//! All real software (iproute2, iptables, Squid 5.7, dnsmasq, curl); namespaces and
//! processes are created by [`ChainLab::new`] and removed when the lab is
//! dropped, also on panic. Faults are reversible: [`ChainLab::restore`].
//!
//! What Squid 5.7 does in this chain (observed here; `syn_retries` 1, so an
//! unanswered connect ends with the kernel's ETIMEDOUT after ≈3 s):
//!
//! | case | client gets | Squid #1 log | hop1→hop2 conn | hop2→origin conn |
//! |---|---|---|---|---|
//! | healthy | 200 | TCP_TUNNEL/200 FIRSTUP_PARENT | yes | yes |
//! | hop-1 ACL deny | 403, Via hop1, keep-alive, body | TCP_DENIED/403 HIER_NONE | none | none |
//! | hop-2 ACL deny | 403, Via hop2, close, no body | TCP_TUNNEL/403 FIRSTUP_PARENT | yes, 403 | none |
//! | origin refused | 503 ERR_CONNECT_FAIL 111, no Via | TCP_TUNNEL/503 | yes, 503 | refused |
//! | origin / NAT blackhole | 503 ERR_CONNECT_FAIL 110, no Via | TCP_TUNNEL/503 | yes, 503 | 3 SYNs, timeout |
//! | hop 2 down | 503 ERR_CONNECT_FAIL 111, no Via | NONE_NONE/503 | refused | none |
//! | hop 2 blackhole | 503 ERR_CONNECT_FAIL 110, no Via | NONE_NONE/503 | 3 SYNs, timeout | none |
//! | parent marked dead | 500 ERR_CANNOT_FORWARD | NONE_NONE/500 HIER_NONE | none | none |
//! | hop 1 down / blackhole | connect refused / timeout | — | none | none |
//! | origin name NXDOMAIN at hop 2 | 500 ERR_DNS_FAIL | TCP_TUNNEL/500 | yes, 500 | none (A+AAAA lookups) |
//! | proxy name NXDOMAIN / resolver down | curl exit 5, no TCP | — | none | none |
//!
//! Squid #1 counts every non-2xx CONNECT answer from its parent (403 and
//! relayed 503s included) as a failed parent connection; after
//! `connect-fail-limit` of them without a success it marks the parent dead.
//! It also opens bare probe connections to the parent (at start, and while it
//! suspects it), which Squid #2 logs as `error:transaction-end-before-headers`.
mod client;
mod config;
mod faults;
pub(crate) mod origin;
pub(crate) mod resolver;
pub(crate) mod squid;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use client::{ClientOutput, CurlResult, GatedClient, wait_output};
pub use config::{ChainLabConfig, Cidr, DirectEgress, Hop, LabLink, OriginName, SquidIdle};
use squid::{SquidFiles, SquidProc};

use crate::{Netns, Veth, cmd, sh};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The lab's namespaces. Dropping kills (by PID) whatever still runs inside
/// them, then deletes them.
pub struct ChainNamespaces {
    pub app: Netns,
    pub node: Netns,
    pub proxy_pod: Netns,
    pub gce: Netns,
    pub nat: Netns,
    pub internet: Netns,
    pub dns: Netns,
}

impl ChainNamespaces {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            app: Netns::new("app")?,
            node: Netns::new("node")?,
            proxy_pod: Netns::new("proxypod")?,
            gce: Netns::new("gce")?,
            nat: Netns::new("nat")?,
            internet: Netns::new("inet")?,
            dns: Netns::new("dns")?,
        })
    }

    pub fn all(&self) -> [&Netns; 7] {
        [&self.app, &self.node, &self.proxy_pod, &self.gce, &self.nat, &self.internet, &self.dns]
    }
}

impl Drop for ChainNamespaces {
    fn drop(&mut self) {
        let me = std::process::id();
        for ns in self.all() {
            let Ok(out) = cmd("ip", &["netns", "pids", &ns.name]).output() else { continue };
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                if pid != me {
                    // SAFETY: kill(2) on a PID listed inside our own namespace.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}

/// `/run/netns/<name>`: open it and `setns` to subscribe to conntrack there.
pub fn netns_path(ns: &Netns) -> PathBuf {
    PathBuf::from("/run/netns").join(&ns.name)
}

/// An iptables rule inserted (`-I`) in a lab namespace, tagged with a comment.
#[derive(Debug, Clone)]
struct IptRule {
    ns: String,
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
    tag: String,
}

impl IptRule {
    fn args(&self, op: &str) -> Vec<String> {
        let mut a: Vec<String> =
            ["ip", "netns", "exec", &self.ns, "iptables", "-w", "-t", self.table, op, self.chain]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(self.spec.iter().cloned());
        a.extend(["-m", "comment", "--comment", &self.tag].iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, op: &str) -> anyhow::Result<()> {
        let a = self.args(op);
        let mut c = Command::new(&a[0]);
        c.args(&a[1..]);
        sh(&mut c).map(|_| ())
    }
}

/// Line counts of both access logs at one moment (see [`ChainLab::log_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogMark(pub [usize; 2]);

/// Removes the lab's temporary directory (Squid configs and logs).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long Squid #2 keeps a DNS answer, positive or negative; a DNS
/// fault or its repair is in effect for it only after this long.
pub const SQUID_DNS_TTL: Duration = Duration::from_secs(1);

/// The running chain. Methods take `&self`: faults can be injected while
/// clients run on other threads.
pub struct ChainLab {
    cfg: ChainLabConfig,
    squids: Mutex<[Option<SquidProc>; 2]>,
    files: [SquidFiles; 2],
    services: [String; 2],
    faults: Mutex<Vec<IptRule>>,
    /// A DNS fault changed what the resolver answers since the last restore.
    dns_changed: Mutex<bool>,
    direct: Mutex<Option<IptRule>>,
    links: Vec<(LabLink, Veth)>,
    _origin: origin::Origin,
    resolver: resolver::Resolver,
    _resolv_conf: resolver::NetnsResolvConf,
    pub ns: ChainNamespaces,
    _tmp: TempDir,
}

impl ChainLab {
    /// Build namespaces, links, routes, DNAT, NAT, origins and both Squids.
    pub fn new(cfg: ChainLabConfig) -> anyhow::Result<Self> {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp =
            TempDir(std::env::temp_dir().join(format!("eo-chain-{}-{seq}", std::process::id())));
        std::fs::create_dir_all(&tmp.0).with_context(|| format!("creating {}", tmp.0.display()))?;
        let files = [SquidFiles::new(&tmp.0, Hop::One)?, SquidFiles::new(&tmp.0, Hop::Two)?];
        let services = [
            format!("eo{}c{seq}h1", std::process::id()),
            format!("eo{}c{seq}h2", std::process::id()),
        ];
        let ns = ChainNamespaces::new()?;
        let links = build_network(&cfg, &ns)?;
        let origin = origin::Origin::start(
            &ns.internet,
            SocketAddr::new(cfg.healthy.ip.into(), cfg.origin_port),
            format!("{}\n", cfg.banner),
        )?;
        let resolver = resolver::Resolver::new(&tmp.0, cfg.dns_ip, cfg.dns_local_domains())?;
        resolver.set_records(&cfg.dns_records())?;
        resolver.start(&ns.dns).context("resolver")?;
        let resolv_conf = resolver::NetnsResolvConf::new(&ns.app.name, cfg.dns_ip)?;
        let lab = Self {
            cfg,
            squids: Mutex::new([None, None]),
            files,
            services,
            faults: Mutex::new(Vec::new()),
            dns_changed: Mutex::new(false),
            direct: Mutex::new(None),
            links,
            _origin: origin,
            resolver,
            _resolv_conf: resolv_conf,
            ns,
            _tmp: tmp,
        };
        lab.set_direct_egress(lab.cfg.direct_egress)?;
        for hop in [Hop::One, Hop::Two] {
            squid::write_conf(&lab.cfg, hop, &lab.files[hop.index()])?;
        }
        // Parent first: Squid #1 probes its parent at start; a failed probe
        // marks the parent dead (500 ERR_CANNOT_FORWARD until a later probe).
        lab.start_hop(Hop::Two)?;
        lab.start_hop(Hop::One)?;
        Ok(lab)
    }

    pub fn config(&self) -> &ChainLabConfig {
        &self.cfg
    }

    /// `/run/netns/<node>`: the namespace that does the ClusterIP DNAT (conntrack source).
    pub fn node_netns_path(&self) -> PathBuf {
        netns_path(&self.ns.node)
    }

    /// `http://<ClusterIP>:<port>`, what pods put in HTTPS_PROXY.
    pub fn proxy_url(&self) -> String {
        self.cfg.proxy_url()
    }

    /// `http://<proxy name>:<port>`: HTTPS_PROXY as pods really have it (resolved by the lab's DNS).
    pub fn proxy_name_url(&self) -> String {
        self.cfg.proxy_name_url()
    }

    /// The Service address clients connect to.
    pub fn cluster_addr(&self) -> SocketAddr {
        SocketAddr::new(self.cfg.cluster_ip.into(), self.cfg.proxy_port)
    }

    /// Where a hop's Squid listens (pod IP for hop 1, VM IP for hop 2).
    pub fn hop_addr(&self, hop: Hop) -> SocketAddr {
        let ip = match hop {
            Hop::One => self.cfg.proxy_pod_ip,
            Hop::Two => self.cfg.gce_ip,
        };
        SocketAddr::new(ip.into(), self.cfg.proxy_port)
    }

    /// `host:origin_port`, the CONNECT target for `host`.
    pub fn target(&self, host: &str) -> String {
        format!("{host}:{}", self.cfg.origin_port)
    }

    /// PID of a hop's Squid, if it runs.
    pub fn squid_pid(&self, hop: Hop) -> Option<u32> {
        self.squids.lock().expect("squids")[hop.index()].as_ref().map(SquidProc::pid)
    }

    /// The namespace a hop's Squid runs in.
    pub fn hop_netns(&self, hop: Hop) -> &Netns {
        match hop {
            Hop::One => &self.ns.proxy_pod,
            Hop::Two => &self.ns.gce,
        }
    }

    /// Squid's access log (`squid` format) of a hop, so far. Squid writes a
    /// line when a transaction ends.
    pub fn access_log(&self, hop: Hop) -> String {
        std::fs::read_to_string(&self.files[hop.index()].access_log).unwrap_or_default()
    }

    pub fn cache_log(&self, hop: Hop) -> String {
        std::fs::read_to_string(&self.files[hop.index()].cache_log).unwrap_or_default()
    }

    pub fn squid_conf_path(&self, hop: Hop) -> &Path {
        &self.files[hop.index()].conf
    }

    /// Where both access logs end now; later waits look only past it.
    pub fn log_mark(&self) -> LogMark {
        LogMark([Hop::One, Hop::Two].map(|h| self.access_log(h).lines().count()))
    }

    /// Access-log lines of `hop` written after `mark`.
    pub fn access_log_since(&self, hop: Hop, mark: &LogMark) -> Vec<String> {
        self.access_log(hop).lines().skip(mark.0[hop.index()]).map(str::to_string).collect()
    }

    /// Wait (bounded) for a line of `hop`'s access log after `mark` that
    /// contains `needle`. Squid writes it when the transaction ends.
    pub fn wait_access_log(
        &self,
        hop: Hop,
        mark: &LogMark,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) =
                self.access_log_since(hop, mark).into_iter().find(|l| l.contains(needle))
            {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!(
                    "no new {} access-log line with {needle:?} within {timeout:?}:\n{}",
                    hop.label(),
                    self.access_log(hop)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The interface of `link` in its router-side namespace (node or nat).
    pub fn link_iface(&self, link: LabLink) -> (&Netns, &str) {
        let veth = &self.links.iter().find(|(l, _)| *l == link).expect("every link is built").1;
        let ns = match link {
            LabLink::AppNode
            | LabLink::ProxyPodNode
            | LabLink::NodeGce
            | LabLink::NodeNat
            | LabLink::DnsNode => &self.ns.node,
            LabLink::GceNat | LabLink::NatInternet => &self.ns.nat,
        };
        (ns, &veth.a_if)
    }

    // ---- clients (app namespace) ----

    /// `args` as a Command inside the app namespace (no stdio set).
    pub fn app_command(&self, args: &[&str]) -> Command {
        self.ns.app.command(args)
    }

    /// Start `args` in the app namespace now, stdout/stderr piped.
    pub fn spawn_client(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.app_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {args:?} in app"))
    }

    /// Start `args` in the app namespace held at a gate: move `pid()` into a
    /// cgroup, then `release()`; the PID stays the program's.
    pub fn spawn_client_gated(&self, args: &[&str]) -> anyhow::Result<GatedClient> {
        let mut full = vec!["sh", "-c", "read -r _ || exit 125; exec \"$@\"", "eo-gate"];
        full.extend_from_slice(args);
        let child = self
            .app_command(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning gated client")?;
        GatedClient::new(child)
    }

    /// Run `args` in the app namespace and wait at most `timeout`.
    pub fn run_client(&self, args: &[&str], timeout: Duration) -> anyhow::Result<ClientOutput> {
        let mut child = self.spawn_client(args)?;
        wait_output(&mut child, timeout)
    }

    /// curl arguments for `CONNECT host:origin_port` through the ClusterIP,
    /// then `GET path` inside the tunnel (plain HTTP: the origin speaks it).
    pub fn curl_via_chain_args(&self, host: &str, path: &str) -> Vec<String> {
        self.cfg.curl_via_chain_args(host, path)
    }

    /// As [`Self::curl_via_chain_args`], with the proxy given by name (the
    /// client resolves it first, as a pod does).
    pub fn curl_via_name_args(&self, host: &str, path: &str) -> Vec<String> {
        self.cfg.curl_via_name_args(host, path)
    }

    /// curl arguments for a direct (bypass) request to an internet address.
    pub fn curl_direct_args(&self, ip: Ipv4Addr, path: &str) -> Vec<String> {
        self.cfg.curl_direct_args(ip, path)
    }

    /// Run curl through the chain to `host` and parse what it saw.
    pub fn curl_via_chain(&self, host: &str) -> anyhow::Result<CurlResult> {
        self.run_curl(&self.curl_via_chain_args(host, "/"))
    }

    /// Run curl directly to `ip` (bypassing the proxy).
    pub fn curl_direct(&self, ip: Ipv4Addr) -> anyhow::Result<CurlResult> {
        self.run_curl(&self.curl_direct_args(ip, "/"))
    }

    fn run_curl(&self, args: &[String]) -> anyhow::Result<CurlResult> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_client(&refs, self.cfg.client_timeout + Duration::from_secs(5))?;
        Ok(CurlResult::parse(&out))
    }
}

impl Drop for ChainLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for hop in [Hop::One, Hop::Two] {
                let f = &self.files[hop.index()];
                eprintln!(
                    "--- chain lab {} access.log:\n{}",
                    hop.label(),
                    squid::tail(&f.access_log, 40)
                );
                eprintln!(
                    "--- chain lab {} cache.log (tail):\n{}",
                    hop.label(),
                    squid::tail(&f.cache_log, 15)
                );
            }
        }
        // Squids first (by PID), then the origin, namespaces, temp dir (field order).
        for s in self.squids.get_mut().map(|s| s.iter_mut()).into_iter().flatten() {
            if let Some(p) = s.take() {
                p.kill();
            }
        }
    }
}

/// Links, addresses, routes, forwarding, DNAT, NAT, the blackholed origin.
fn build_network(
    cfg: &ChainLabConfig,
    ns: &ChainNamespaces,
) -> anyhow::Result<Vec<(LabLink, Veth)>> {
    let c = |ip: Ipv4Addr, p: u8| format!("{ip}/{p}");
    let (pp, gp, up) = (cfg.pod_prefix, cfg.gce_prefix, cfg.public_prefix);
    // Router side first: faults on a link go into `a`.
    let specs: [(LabLink, &Netns, String, &Netns, String); 7] = [
        (LabLink::AppNode, &ns.node, c(cfg.app_gw, pp), &ns.app, c(cfg.app_ip, pp)),
        (
            LabLink::ProxyPodNode,
            &ns.node,
            c(cfg.proxy_pod_gw, pp),
            &ns.proxy_pod,
            c(cfg.proxy_pod_ip, pp),
        ),
        (LabLink::NodeGce, &ns.node, c(cfg.node_gce_ip, gp), &ns.gce, c(cfg.gce_ip, gp)),
        (LabLink::NodeNat, &ns.node, c(cfg.node_nat_ip, gp), &ns.nat, c(cfg.nat_node_ip, gp)),
        (LabLink::GceNat, &ns.nat, c(cfg.nat_gce_ip, gp), &ns.gce, c(cfg.gce_nat_ip, gp)),
        (
            LabLink::NatInternet,
            &ns.nat,
            c(cfg.nat_public_ip, up),
            &ns.internet,
            c(cfg.internet_ip, up),
        ),
        (LabLink::DnsNode, &ns.node, c(cfg.dns_gw, pp), &ns.dns, c(cfg.dns_ip, pp)),
    ];
    let mut links = Vec::new();
    for (l, a, aa, b, ba) in &specs {
        links.push((*l, Veth::link(a, &[aa], b, &[ba]).with_context(|| format!("link {l:?}"))?));
    }
    let retries = cfg.syn_retries.to_string();
    for n in ns.all() {
        n.sysctl("net.ipv4.tcp_syn_retries", &retries)?;
        if let Some((retries, fin)) = cfg.orphan_linger {
            n.sysctl("net.ipv4.tcp_orphan_retries", &retries.to_string())?;
            n.sysctl("net.ipv4.tcp_fin_timeout", &fin.to_string())?;
        }
    }
    for n in [&ns.node, &ns.nat] {
        n.sysctl("net.ipv4.ip_forward", "1")?;
    }
    let pod_range = cfg.pod_range.to_string();
    ns.app.run(&["ip", "route", "add", "default", "via", &cfg.app_gw.to_string()])?;
    ns.proxy_pod.run(&["ip", "route", "add", "default", "via", &cfg.proxy_pod_gw.to_string()])?;
    ns.dns.run(&["ip", "route", "add", "default", "via", &cfg.dns_gw.to_string()])?;
    ns.node.run(&["ip", "route", "add", "default", "via", &cfg.nat_node_ip.to_string()])?;
    ns.gce.run(&["ip", "route", "add", &pod_range, "via", &cfg.node_gce_ip.to_string()])?;
    if !cfg.pod_range.contains(cfg.dns_ip) {
        // The resolver is reached through the node like the pods are.
        ns.gce.run(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", cfg.dns_ip),
            "via",
            &cfg.node_gce_ip.to_string(),
        ])?;
    }
    ns.gce.run(&["ip", "route", "add", "default", "via", &cfg.nat_gce_ip.to_string()])?;
    ns.nat.run(&["ip", "route", "add", &pod_range, "via", &cfg.node_nat_ip.to_string()])?;
    ns.nat.run(&["ip", "route", "add", "default", "via", &cfg.internet_ip.to_string()])?;
    // The internet knows only the NAT's public address: without MASQUERADE nothing comes back.
    for o in [&cfg.healthy, &cfg.refused, &cfg.blackhole] {
        let a = format!("{}/32", o.ip);
        if !ns.internet.run(&["ip", "-4", "addr", "show", "dev", "lo"])?.contains(&format!(" {a} "))
        {
            ns.internet.run(&["ip", "addr", "add", &a, "dev", "lo"])?;
        }
    }
    // kube-proxy (iptables mode): ClusterIP:port → pod:port.
    let port = cfg.proxy_port.to_string();
    let to = format!("{}:{}", cfg.proxy_pod_ip, cfg.proxy_port);
    ns.node.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        &cfg.cluster_ip.to_string(),
        "-p",
        "tcp",
        "--dport",
        &port,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ])?;
    // Cloud NAT: everything leaving to the public side takes the NAT's address.
    let inet_if = &links.iter().find(|(l, _)| *l == LabLink::NatInternet).expect("link").1.a_if;
    ns.nat.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        inet_if,
        "-j",
        "MASQUERADE",
    ])?;
    ns.internet.run(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-d",
        &cfg.blackhole.ip.to_string(),
        "-j",
        "DROP",
    ])?;
    warm_up(cfg, ns)?;
    Ok(links)
}

/// Resolve neighbours on every link before any measured connect.
fn warm_up(cfg: &ChainLabConfig, ns: &ChainNamespaces) -> anyhow::Result<()> {
    let pairs = [
        (&ns.app, cfg.app_gw),
        (&ns.proxy_pod, cfg.proxy_pod_gw),
        (&ns.gce, cfg.node_gce_ip),
        (&ns.nat, cfg.node_nat_ip),
        (&ns.gce, cfg.nat_gce_ip),
        (&ns.nat, cfg.internet_ip),
        (&ns.dns, cfg.dns_gw),
    ];
    for (n, ip) in pairs {
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.run(&["ping", "-c", "1", "-W", "1", &ip.to_string()]).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "chain lab link {} → {ip} did not come up",
                n.name
            );
        }
    }
    Ok(())
}
