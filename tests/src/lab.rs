//! The connect-outcome lab: a client namespace and a server namespace on a
//! veth link, with one destination per outcome. Used by `cargo xtask lab`
//! and by the integration tests; addresses and ports are parameters.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    Netns, Veth,
    netns::Rule,
    traffic::{ClientResult, Server, fetch},
};

/// Addresses of a lab. Defaults use the RFC 2544 benchmarking range and a
/// ULA prefix: they exist only inside the lab's namespaces.
#[derive(Debug, Clone)]
pub struct LabAddrs {
    pub client4: IpAddr,
    pub server4: IpAddr,
    pub prefix4: u8,
    pub client6: IpAddr,
    pub server6: IpAddr,
    pub prefix6: u8,
    pub base_port: u16,
}

impl Default for LabAddrs {
    fn default() -> Self {
        Self {
            client4: "198.18.0.1".parse().expect("ip"),
            server4: "198.18.0.2".parse().expect("ip"),
            prefix4: 24,
            client6: "fd00:e0::1".parse().expect("ip"),
            server6: "fd00:e0::2".parse().expect("ip"),
            prefix6: 64,
            base_port: 18080,
        }
    }
}

/// The lossy destination drops every this-many-th data packet (≈14 %).
pub const LOSS_EVERY: u32 = 7;

/// One scenario: what is done and what the agent must say.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub dst: SocketAddr,
    pub upload: usize,
    pub expect_verdict: &'static str,
    pub expect_reason: Option<&'static str>,
}

pub struct ConnectLab {
    pub addrs: LabAddrs,
    pub client: Netns,
    pub server: Netns,
    _link: Veth,
    _servers: Vec<Server>,
}

impl ConnectLab {
    /// Build the namespaces, link, servers and fault rules.
    #[allow(
        clippy::mem_forget,
        reason = "the rules live in the lab's own namespace and go with it: their guards need not delete them"
    )]
    pub fn new(addrs: LabAddrs) -> anyhow::Result<Self> {
        let client = Netns::new("client")?;
        let server = Netns::new("server")?;
        let c4 = format!("{}/{}", addrs.client4, addrs.prefix4);
        let s4 = format!("{}/{}", addrs.server4, addrs.prefix4);
        let c6 = format!("{}/{}", addrs.client6, addrs.prefix6);
        let s6 = format!("{}/{}", addrs.server6, addrs.prefix6);
        let link = Veth::link(&client, &[&c4, &c6], &server, &[&s4, &s6]).context("veth link")?;
        // Kernel gives up on an unanswered SYN after one retry (~2-3 s)
        // instead of ~127 s: the timeout verdict comes from the kernel itself.
        client.sysctl("net.ipv4.tcp_syn_retries", "1")?;
        let p = addrs.base_port;
        let mut servers = vec![
            Server::start(&server, SocketAddr::new(addrs.server4, p), 4096)?,
            Server::start(&server, SocketAddr::new(addrs.server6, p), 4096)?,
            Server::start(&server, SocketAddr::new(addrs.server4, p + 2), 0)?,
            Server::start(&server, SocketAddr::new(addrs.server4, p + 3), 0)?,
        ];
        servers.shrink_to_fit();
        let lab = Self { addrs, client, server, _link: link, _servers: servers };
        // Rules live in the lab's own namespace: deleted with it.
        std::mem::forget(Rule::add(
            &lab.server,
            false,
            "filter",
            &["INPUT", "-p", "tcp", "--dport", &(p + 2).to_string(), "-j", "DROP"],
        )?);
        // Loss, made deterministic: every LOSS_EVERY-th data-bearing packet
        // to this port is dropped (`statistic --mode nth`; pure ACKs, which
        // are never retransmitted, do not count). A 512 KiB upload is at
        // least 8 packets even as 64 KiB GSO segments, so it always loses
        // one and retransmits; random loss sometimes hit nothing.
        let loss = Self::loss_rule(p + 3);
        std::mem::forget(Rule::add(
            &lab.server,
            false,
            "filter",
            &loss.iter().map(String::as_str).collect::<Vec<_>>(),
        )?);
        // A firewall answering with ICMP host-unreachable, as a router would.
        std::mem::forget(Rule::add(
            &lab.server,
            false,
            "filter",
            &[
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &(p + 4).to_string(),
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-host-unreachable",
            ],
        )?);
        lab.warm_up()?;
        Ok(lab)
    }

    /// The iptables rule (INPUT, server side) of the lossy destination's port.
    fn loss_rule(port: u16) -> Vec<String> {
        [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "length",
            "--length",
            "200:65535",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            &LOSS_EVERY.to_string(),
            "--packet",
            "0",
            "-j",
            "DROP",
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// Packets the loss rule of `port` dropped so far (None: no such rule).
    pub fn dropped(&self, port: u16) -> Option<u64> {
        let out = self
            .server
            .run(&["iptables", "-w", "-t", "filter", "-L", "INPUT", "-v", "-x", "-n"])
            .ok()?;
        let dpt = format!("dpt:{port}");
        out.lines()
            .find(|l| {
                l.contains("DROP")
                    && l.split_whitespace().any(|w| w == dpt)
                    && l.contains("statistic")
            })
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
    }

    /// Why a scenario may have shown no record of its outcome, from what
    /// the lab itself can see (the fault rules' counters).
    pub fn diagnose(&self, s: &Scenario) -> Option<String> {
        if s.expect_reason == Some("retransmits") {
            return match self.dropped(s.dst.port()) {
                Some(0) => Some("no retransmit happened: the loss rule dropped no packet".into()),
                Some(n) => Some(format!("the loss rule dropped {n} packets")),
                None => Some("the loss rule is missing".into()),
            };
        }
        None
    }

    /// Resolve neighbours both ways before measuring anything, so a first
    /// SYN is never held back by ARP/NDP (that would show as a retransmit).
    fn warm_up(&self) -> anyhow::Result<()> {
        for ip in [self.addrs.server4, self.addrs.server6] {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while self.client.run(&["ping", "-c", "1", "-W", "1", &ip.to_string()]).is_err() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "lab link to {ip} did not come up"
                );
            }
        }
        Ok(())
    }

    pub fn scenarios(&self) -> Vec<Scenario> {
        let a = &self.addrs;
        let p = a.base_port;
        vec![
            Scenario {
                name: "ok (IPv4)",
                dst: SocketAddr::new(a.server4, p),
                upload: 0,
                expect_verdict: "ok",
                expect_reason: None,
            },
            Scenario {
                name: "ok (IPv6)",
                dst: SocketAddr::new(a.server6, p),
                upload: 0,
                expect_verdict: "ok",
                expect_reason: None,
            },
            Scenario {
                name: "refused: closed port (IPv4)",
                dst: SocketAddr::new(a.server4, p + 1),
                upload: 0,
                expect_verdict: "failed",
                expect_reason: Some("refused"),
            },
            Scenario {
                name: "refused: closed port (IPv6)",
                dst: SocketAddr::new(a.server6, p + 1),
                upload: 0,
                expect_verdict: "failed",
                expect_reason: Some("refused"),
            },
            Scenario {
                name: "timeout: SYN dropped",
                dst: SocketAddr::new(a.server4, p + 2),
                upload: 0,
                expect_verdict: "failed",
                expect_reason: Some("timeout"),
            },
            Scenario {
                name: "retransmits: packet loss",
                dst: SocketAddr::new(a.server4, p + 3),
                upload: 512 * 1024,
                expect_verdict: "degraded",
                expect_reason: Some("retransmits"),
            },
            Scenario {
                name: "unreachable: ICMP host unreachable",
                dst: SocketAddr::new(a.server4, p + 4),
                upload: 0,
                expect_verdict: "failed",
                expect_reason: Some("unreachable"),
            },
        ]
    }

    /// Drive one scenario from the client namespace (thread comm `comm`).
    pub fn drive(&self, s: &Scenario, comm: &str) -> anyhow::Result<ClientResult> {
        fetch(&self.client, comm, s.dst, s.upload, Duration::from_secs(15))
    }
}
