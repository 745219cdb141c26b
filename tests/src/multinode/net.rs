//! The lab's network: the VPC (a bridge in a namespace of the host, with
//! the router's address on it), every machine's NIC on that bridge (a veth
//! for the host's machine, a tap for a VM), the router's routes to each
//! node's pod range, the NAT (MASQUERADE), the internet with the origins,
//! the resolver and the Kubernetes API server on the VPC, and each node's
//! pod namespace behind it.
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{MultiNodeConfig, machine::Machine};
use crate::{Netns, Veth, chain_lab::Cidr};

pub const BRIDGE: &str = "br0";
/// A VM's NIC name inside the VM.
pub const VM_NIC: &str = "eth0";

/// The host side of the lab: namespaces that are no machine.
pub struct Fabric {
    pub vpc: Netns,
    pub nat: Netns,
    pub inet: Netns,
    pub dns: Netns,
    pub kubeapi: Netns,
    /// The router's interface towards the NAT (the VPC egress firewall's).
    pub vpc_nat_if: String,
}

fn cidr(ip: std::net::Ipv4Addr, prefix: u8) -> String {
    format!("{ip}/{prefix}")
}

impl Fabric {
    pub fn build(cfg: &MultiNodeConfig) -> anyhow::Result<Self> {
        let c = &cfg.chain;
        let f = Self {
            vpc: Netns::new("vpc")?,
            nat: Netns::new("nat")?,
            inet: Netns::new("inet")?,
            dns: Netns::new("dns")?,
            kubeapi: Netns::new("kubeapi")?,
            vpc_nat_if: String::new(),
        };
        let vpc = &f.vpc;
        vpc.run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        vpc.run(&["ip", "addr", "add", &cidr(cfg.vpc_gw, cfg.vpc.prefix), "dev", BRIDGE])?;
        vpc.run(&["ip", "link", "set", BRIDGE, "up"])?;
        let nat_link =
            Veth::link(vpc, &[&cidr(cfg.nat_link.0, 30)], &f.nat, &[&cidr(cfg.nat_link.1, 30)])?;
        let inet_link = Veth::link(
            &f.nat,
            &[&cidr(c.nat_public_ip, c.public_prefix)],
            &f.inet,
            &[&cidr(c.internet_ip, c.public_prefix)],
        )?;
        for (ns, ip) in [(&f.dns, c.dns_ip), (&f.kubeapi, cfg.kubeapi_ip)] {
            f.plug(ns, ip, cfg)?;
        }
        for ns in [&f.vpc, &f.nat] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        // Nodes on one subnet talk directly; the router's redirects would
        // only add noise to what the agents see.
        for k in ["all", "default", BRIDGE] {
            vpc.sysctl(&format!("net.ipv4.conf.{k}.send_redirects"), "0")?;
        }
        let retries = c.syn_retries.to_string();
        for ns in [&f.vpc, &f.nat, &f.inet, &f.dns, &f.kubeapi] {
            ns.sysctl("net.ipv4.tcp_syn_retries", &retries)?;
        }
        vpc.run(&["ip", "route", "add", "default", "via", &cfg.nat_link.1.to_string()])?;
        for (pods, node) in [(cfg.node_a_pods, cfg.node_a_ip), (cfg.node_b_pods, cfg.node_b_ip)] {
            vpc.run(&["ip", "route", "add", &pods.to_string(), "via", &node.to_string()])?;
        }
        for back in [cfg.vpc, c.pod_range] {
            f.nat.run(&[
                "ip",
                "route",
                "add",
                &back.to_string(),
                "via",
                &cfg.nat_link.0.to_string(),
            ])?;
        }
        f.nat.run(&["ip", "route", "add", "default", "via", &c.internet_ip.to_string()])?;
        // Cloud NAT: everything leaving for the internet takes the NAT's address.
        f.nat.run(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            &inet_link.a_if,
            "-j",
            "MASQUERADE",
        ])?;
        for o in [&c.healthy, &c.refused, &c.blackhole] {
            f.inet.run(&["ip", "addr", "add", &format!("{}/32", o.ip), "dev", "lo"])?;
        }
        f.inet.run(&[
            "iptables",
            "-w",
            "-A",
            "INPUT",
            "-d",
            &c.blackhole.ip.to_string(),
            "-j",
            "DROP",
        ])?;
        Ok(Self { vpc_nat_if: nat_link.a_if, ..f })
    }

    /// A namespace of the host on the VPC at `ip`, routed through the router.
    fn plug(
        &self,
        ns: &Netns,
        ip: std::net::Ipv4Addr,
        cfg: &MultiNodeConfig,
    ) -> anyhow::Result<()> {
        let l = Veth::link(&self.vpc, &[], ns, &[&cidr(ip, cfg.vpc.prefix)])?;
        self.vpc.run(&["ip", "link", "set", &l.a_if, "master", BRIDGE])?;
        ns.run(&["ip", "route", "add", "default", "via", &cfg.vpc_gw.to_string()])?;
        Ok(())
    }

    /// The host's machine: its root namespace on the VPC at `ip`.
    pub fn attach_host(
        &self,
        root: &Netns,
        ip: std::net::Ipv4Addr,
        cfg: &MultiNodeConfig,
    ) -> anyhow::Result<()> {
        self.plug(root, ip, cfg)
    }

    /// A VM's tap (created by qemu in the VPC namespace) onto the bridge.
    pub fn attach_tap(&self, tap: &str) -> anyhow::Result<()> {
        self.vpc.run(&["ip", "link", "set", tap, "master", BRIDGE])?;
        self.vpc.run(&["ip", "link", "set", tap, "up"]).map(|_| ())
    }
}

/// A VM's own side: its NIC at `ip`, the router as its default route.
pub fn configure_vm(
    m: &Machine,
    ip: std::net::Ipv4Addr,
    cfg: &MultiNodeConfig,
) -> anyhow::Result<()> {
    m.run(None, &["ip", "addr", "add", &cidr(ip, cfg.vpc.prefix), "dev", VM_NIC])?;
    m.run(None, &["ip", "link", "set", VM_NIC, "up"])?;
    m.run(None, &["ip", "route", "add", "default", "via", &cfg.vpc_gw.to_string()])?;
    Ok(())
}

/// Forwarding and SYN retries in a machine's root namespace.
pub fn node_sysctls(m: &Machine, cfg: &MultiNodeConfig) -> anyhow::Result<()> {
    m.run(None, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    m.run(
        None,
        &["sysctl", "-qw", &format!("net.ipv4.tcp_syn_retries={}", cfg.chain.syn_retries)],
    )?;
    Ok(())
}

/// A pod namespace `name` inside machine `m`: `pod_ip` on its eth0, the
/// node's side `gw` (in `range`) as its default route.
pub fn pod(
    m: &Machine,
    name: &str,
    pod_ip: std::net::Ipv4Addr,
    gw: std::net::Ipv4Addr,
    range: Cidr,
    cfg: &MultiNodeConfig,
) -> anyhow::Result<()> {
    m.add_netns(name)?;
    let node_if = format!("eo-{name}");
    let target = m.ns_arg(name)?;
    m.run(
        None,
        &["ip", "link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", &target],
    )?;
    m.run(None, &["ip", "addr", "add", &cidr(gw, range.prefix), "dev", &node_if])?;
    m.run(None, &["ip", "link", "set", &node_if, "up"])?;
    m.run(Some(name), &["ip", "addr", "add", &cidr(pod_ip, range.prefix), "dev", "eth0"])?;
    m.run(Some(name), &["ip", "link", "set", "eth0", "up"])?;
    m.run(Some(name), &["ip", "route", "add", "default", "via", &gw.to_string()])?;
    m.run(
        Some(name),
        &["sysctl", "-qw", &format!("net.ipv4.tcp_syn_retries={}", cfg.chain.syn_retries)],
    )?;
    Ok(())
}

/// Ping `to` from `m` (namespace `ns`) until it answers (bounded): links
/// up and neighbours resolved before any measured connect.
pub fn reach(m: &Machine, ns: Option<&str>, to: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o =
            m.exec(ns, &["ping", "-c", "1", "-W", "1", &to.to_string()], Duration::from_secs(5))?;
        if o.code == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!(
                "{}: {to} does not answer: {}{}",
                m.name,
                o.stdout,
                o.stderr
            ))
            .context("the lab's network did not come up");
        }
    }
}
