//! The suite's network: loopback plus a veth pair whose far end has no
//! address and whose near end does no ARP, so packets to peer addresses
//! vanish, a route for the fake ClusterIP range, and
//! short SYN retries so timeouts take seconds. Tools come from PATH
//! (`ip`, `tc`, `iptables`; in the VM they are copied from the host).
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use egress_tests::{cmd, sh};

pub const LINK: &str = "eo-kt0";
pub const PEER: &str = "eo-kt1";
/// Our address on the link.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// No one answers here: SYNs vanish.
pub const BLACKHOLE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 80));
/// OUTPUT rejects this one with ICMP host unreachable.
pub const UNREACHABLE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 3), 80));
/// A fake ClusterIP, DNAT'ed to a local listener.
pub const CLUSTER_IP: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80));

pub fn setup() -> anyhow::Result<()> {
    sh(&mut cmd("ip", &["link", "set", "lo", "up"]))?;
    sh(&mut cmd("ip", &["link", "add", LINK, "type", "veth", "peer", "name", PEER]))?;
    sh(&mut cmd("ip", &["addr", "add", &format!("{LOCAL}/24"), "dev", LINK]))?;
    sh(&mut cmd("ip", &["link", "set", LINK, "arp", "off", "up"]))?;
    sh(&mut cmd("ip", &["link", "set", PEER, "up"]))?;
    sh(&mut cmd("ip", &["route", "add", "10.96.0.0/24", "dev", LINK, "src", &LOCAL.to_string()]))?;
    // SYN at 0 s, one retry at 1 s, give up at 3 s.
    std::fs::write("/proc/sys/net/ipv4/tcp_syn_retries", "1")?;
    Ok(())
}

/// An iptables rule removed on drop.
pub struct Rule {
    table: &'static str,
    spec: Vec<String>,
}

impl Rule {
    pub fn add(table: &'static str, spec: &[&str]) -> anyhow::Result<Self> {
        let spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        let mut args = vec!["-w", "-t", table, "-A"];
        args.extend(spec.iter().map(String::as_str));
        sh(&mut cmd("iptables", &args))?;
        Ok(Self { table, spec })
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let mut args = vec!["-w", "-t", self.table, "-D"];
        args.extend(self.spec.iter().map(String::as_str));
        if let Err(e) = sh(&mut cmd("iptables", &args)) {
            eprintln!("removing iptables rule: {e:#}");
        }
    }
}

/// netem on loopback, removed on drop.
pub struct Netem;

impl Netem {
    /// Drop every packet on loopback until dropped.
    pub fn loss_lo() -> anyhow::Result<Self> {
        sh(&mut cmd("tc", &["qdisc", "add", "dev", "lo", "root", "netem", "loss", "100%"]))?;
        Ok(Self)
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        if let Err(e) = sh(&mut cmd("tc", &["qdisc", "del", "dev", "lo", "root"])) {
            eprintln!("removing netem: {e:#}");
        }
    }
}
