//! The multi-machine lab (`cargo xtask lab --multinode --faults`): the
//! egress chain of seed 003 across machines with separate kernels, each
//! running its own `egress-agent` that sees only its own kernel.
//!
//! ```text
//!   node A (app pod, ClusterIP DNAT)     node B (hop-1 Squid pod)        "GCE VM" (hop-2 Squid)
//!   app ─▶ DNAT 10.96.0.10 ─┐            hop1 pod ─┐                     squid.service ─┐
//!                           └──── vpc bridge (lab netns) ─────────────────────────────┘
//!                                  │ router: pod routes, ─▶ nat (MASQUERADE) ─▶ internet (origins)
//!                                  ├─ dns (dnsmasq)        └─ kubeapi (fake apiserver)
//! ```
//!
//! Each machine is the host or a TCG VM of the kernel matrix (at most two
//! VMs); VMs join the lab's bridge through tap devices created inside the
//! lab's own network namespace (no slirp), so packets between machines are
//! real routed packets, NAT is real iptables with real conntrack, both
//! proxies are real Squid. NAT, origins, the resolver and the fake
//! Kubernetes API server live in namespaces of the host.
//!
//! Every fault of the single-host table (tests/src/faults/) runs across
//! the machines; per fault the table shows what each agent said alone (its
//! own records of this request, found by the link's exact address pair),
//! what `egress-agent explain --assemble` run on node A said (the product
//! path: node B's agent found through the hop's Service endpoints in the
//! fake apiserver, the VM's at its configured address, over the peer API),
//! and what each was expected to say ([`expect`]).
mod expect;
mod lab;
mod machine;
mod net;
mod probe;
mod roles;
mod table;
mod views;
mod vm;

use std::{net::Ipv4Addr, time::Duration};

pub use self::{
    expect::{Expect, FaultModel, Vantage},
    table::{Row, print, run},
    vm::VmImage,
};
use crate::chain_lab::{ChainLabConfig, Cidr};

/// Where a machine runs: `host` (this machine's kernel) or a VM kernel of
/// the matrix (`5.10`, `6.1`, `6.12`).
pub const HOST: &str = "host";

/// Everything the lab is built from: the placement of each machine and
/// every address and port. Nothing in the lab's logic is a constant.
#[derive(Debug, Clone)]
pub struct MultiNodeConfig {
    /// The app pod's node (the client vantage; `explain --assemble` runs here).
    pub node_a: String,
    /// The hop-1 Squid pod's node.
    pub node_b: String,
    /// The "GCE VM" running hop-2 Squid.
    pub gce: String,
    /// The VPC subnet all machines share (one bridge), and its router.
    pub vpc: Cidr,
    pub vpc_gw: Ipv4Addr,
    pub node_a_ip: Ipv4Addr,
    pub node_b_ip: Ipv4Addr,
    /// The Kubernetes API server's address and port (the fake apiserver).
    pub kubeapi_ip: Ipv4Addr,
    pub kubeapi_port: u16,
    /// The VPC side and the NAT side of the router ↔ NAT link (a /30).
    pub nat_link: (Ipv4Addr, Ipv4Addr),
    /// Node A's and node B's pod ranges (`chain.app_ip` / `chain.proxy_pod_ip` inside).
    pub node_a_pods: Cidr,
    pub node_b_pods: Cidr,
    /// Where every agent serves the peer API.
    pub peer_port: u16,
    /// The chain's own addresses, names and knobs, shared with the
    /// single-host lab: `gce_ip` is the VM's address, `dns_ip` the
    /// resolver's (on the VPC), `cluster_ip`/`proxy_pod_ip` hop 1's Service
    /// and pod, origins behind the NAT.
    pub chain: ChainLabConfig,
    /// The agent probe's interval in the last row.
    pub probe_interval: Duration,
    /// Only the rows whose fault contains one of these (case-insensitive);
    /// empty: every row. TCG on a shared host is slow: a few rows fit.
    pub rows: Vec<String>,
}

impl Default for MultiNodeConfig {
    fn default() -> Self {
        let ip = Ipv4Addr::new;
        let chain = ChainLabConfig {
            gce_ip: ip(10, 128, 2, 100),
            dns_ip: ip(10, 128, 0, 53),
            // Every fault is its own failure, not an accumulation that
            // makes Squid mark its parent dead.
            peer_connect_fail_limit: 1000,
            ..ChainLabConfig::default()
        };
        Self {
            node_a: HOST.into(),
            node_b: "6.12".into(),
            gce: "6.1".into(),
            vpc: Cidr::new(ip(10, 128, 0, 0), 16),
            vpc_gw: ip(10, 128, 0, 1),
            node_a_ip: ip(10, 128, 0, 10),
            node_b_ip: ip(10, 128, 0, 11),
            kubeapi_ip: ip(10, 128, 0, 2),
            kubeapi_port: 6443,
            nat_link: (ip(100, 64, 0, 1), ip(100, 64, 0, 2)),
            node_a_pods: Cidr::new(ip(10, 0, 1, 0), 24),
            node_b_pods: Cidr::new(ip(10, 0, 2, 0), 24),
            peer_port: 9465,
            chain,
            probe_interval: Duration::from_secs(2),
            rows: Vec::new(),
        }
    }
}

impl MultiNodeConfig {
    /// Set the machines from `node-a=K,node-b=K,gce=K` (K: `host` or a
    /// kernel); at most two VMs, and at most one machine on the host.
    pub fn place(&mut self, spec: &str) -> anyhow::Result<()> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, k) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("`{part}` is not ROLE=KERNEL"))?;
            let slot = match role {
                "node-a" => &mut self.node_a,
                "node-b" => &mut self.node_b,
                "gce" => &mut self.gce,
                _ => anyhow::bail!("unknown machine `{role}` (node-a, node-b, gce)"),
            };
            *slot = k.to_string();
        }
        let placements = [&self.node_a, &self.node_b, &self.gce];
        let on_host = placements.iter().filter(|k| k.as_str() == HOST).count();
        anyhow::ensure!(
            on_host <= 1,
            "at most one machine on the host (one agent per kernel): {spec}"
        );
        anyhow::ensure!(
            on_host == 1,
            "one machine must be the host: at most two VMs at a time on this machine"
        );
        Ok(())
    }

    /// Whether the row `fault` runs.
    pub fn runs(&self, fault: &str) -> bool {
        let f = fault.to_lowercase();
        self.rows.is_empty() || self.rows.iter().any(|r| f.contains(&r.to_lowercase()))
    }

    /// The VM kernels the placement needs.
    pub fn vm_kernels(&self) -> Vec<String> {
        [&self.node_a, &self.node_b, &self.gce]
            .into_iter()
            .filter(|k| k.as_str() != HOST)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_a_parameter_with_limits() {
        let mut c = MultiNodeConfig::default();
        assert_eq!(c.vm_kernels(), ["6.12", "6.1"]);
        c.place("node-a=5.10,node-b=host,gce=6.12").expect("ok");
        assert_eq!(
            (c.node_b.as_str(), c.vm_kernels()),
            ("host", vec!["5.10".into(), "6.12".into()])
        );
        assert!(MultiNodeConfig::default().place("node-a=6.1,node-b=6.1,gce=6.12").is_err());
        assert!(MultiNodeConfig::default().place("node-b=host").is_err(), "two on the host");
        assert!(MultiNodeConfig::default().place("node-c=6.1").is_err());
        c.rows = vec!["healthy request".into(), "HOP2 DOWN".into()];
        assert!(c.runs("hop2 down (VM Squid stopped)") && c.runs("healthy request"));
        assert!(!c.runs("origin refuses") && MultiNodeConfig::default().runs("origin refuses"));
    }
}
