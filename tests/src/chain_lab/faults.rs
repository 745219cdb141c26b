//! Fault injection on the chain lab. Every fault is reversible with
//! [`ChainLab::restore`]; packet-level faults are iptables rules inserted at
//! the top of a chain in one lab namespace, tagged `eo-fault-N`.
use std::{collections::BTreeSet, sync::atomic::Ordering};

use anyhow::Context as _;

use super::{ChainLab, DirectEgress, Hop, IptRule, LabLink, SEQ, SQUID_DNS_TTL, SquidProc};
use crate::Netns;

impl ChainLab {
    /// Start a hop's Squid if it is not running (waits until it listens).
    pub fn hop_up(&self, hop: Hop) -> anyhow::Result<()> {
        self.start_hop(hop)
    }

    pub(super) fn start_hop(&self, hop: Hop) -> anyhow::Result<()> {
        let mut squids = self.squids.lock().expect("squids");
        if squids[hop.index()].is_some() {
            return Ok(());
        }
        let cgroup = match hop {
            Hop::One => self.cfg.hop1_cgroup.as_deref(),
            Hop::Two => self.cfg.hop2_cgroup.as_deref(),
        };
        let p = SquidProc::start(
            self.hop_netns(hop),
            &self.files[hop.index()],
            &self.services[hop.index()],
            self.cfg.proxy_port,
            cgroup,
        )
        .with_context(|| format!("starting Squid {}", hop.label()))?;
        squids[hop.index()] = Some(p);
        Ok(())
    }

    /// Stop a hop's Squid (SIGKILL by PID): its port refuses (RST) at once.
    pub fn hop_down(&self, hop: Hop) -> anyhow::Result<()> {
        let p = self.squids.lock().expect("squids")[hop.index()].take();
        if let Some(p) = p {
            p.kill();
        }
        Ok(())
    }

    /// Stop and start a hop's Squid: fresh state (Squid #1 forgets that it
    /// marked its parent dead). The PID changes.
    pub fn restart_hop(&self, hop: Hop) -> anyhow::Result<()> {
        self.hop_down(hop)?;
        self.start_hop(hop)
    }

    /// DROP every TCP packet to the hop's Squid port in the hop's namespace:
    /// connects to it see no SYN-ACK and time out.
    pub fn hop_blackhole(&self, hop: Hop) -> anyhow::Result<()> {
        let port = self.cfg.proxy_port.to_string();
        self.add_fault(
            self.hop_netns(hop),
            "filter",
            "INPUT",
            &["-p", "tcp", "--dport", &port, "-j", "DROP"],
        )
    }

    /// Squid #1 stopped: clients' connects to the ClusterIP are refused.
    pub fn hop1_down(&self) -> anyhow::Result<()> {
        self.hop_down(Hop::One)
    }

    /// Squid #1's port blackholed: clients' connects to the ClusterIP time out.
    pub fn hop1_blackhole(&self) -> anyhow::Result<()> {
        self.hop_blackhole(Hop::One)
    }

    /// Squid #2 stopped: Squid #1's connects to its parent are refused.
    pub fn hop2_down(&self) -> anyhow::Result<()> {
        self.hop_down(Hop::Two)
    }

    /// Squid #2's port blackholed: Squid #1's connects to its parent time out.
    pub fn hop2_blackhole(&self) -> anyhow::Result<()> {
        self.hop_blackhole(Hop::Two)
    }

    /// The NAT forwards nothing (and answers nothing): every origin connect
    /// from Squid #2 (and every direct connect) times out.
    pub fn nat_blackhole(&self) -> anyhow::Result<()> {
        self.add_fault(&self.ns.nat, "filter", "FORWARD", &["-j", "DROP"])?;
        self.add_fault(&self.ns.nat, "filter", "INPUT", &["-j", "DROP"])
    }

    /// Lose TCP packets on `link` at the rate `probability` (0..1], both
    /// directions, in the link's router-side namespace (mangle PREROUTING -i
    /// and POSTROUTING -o). Deterministic: every round(1/probability)-th
    /// packet of a direction is dropped (`-m statistic --mode nth`), so a
    /// run with the same traffic loses the same packets; random loss made
    /// tests that need *some* loss fail when the dice spared them.
    pub fn lossy_link(&self, link: LabLink, probability: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            probability > 0.0 && probability <= 1.0,
            "probability {probability} not in (0, 1]"
        );
        let every = ((1.0 / probability).round() as u32).max(1);
        let (ns, ifname) = self.link_iface(link);
        let every = every.to_string();
        let stat = [
            "-p",
            "tcp",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            &every,
            "--packet",
            "0",
            "-j",
            "DROP",
        ];
        let mut inb = vec!["-i", ifname];
        inb.extend_from_slice(&stat);
        let mut outb = vec!["-o", ifname];
        outb.extend_from_slice(&stat);
        self.add_fault(ns, "mangle", "PREROUTING", &inb)?;
        self.add_fault(ns, "mangle", "POSTROUTING", &outb)
    }

    /// A lossy hop as one precise loss: the first SYN across `link` after
    /// this call is dropped, and then every `every`-th
    /// (`-m statistic --mode nth --packet 0`: iptables starts the counter so
    /// that the first packet matches), so the first connect across it
    /// retransmits its SYN and gets through: the kernel's retransmit
    /// signal, every time.
    pub fn lossy_syn(&self, link: LabLink, every: u32) -> anyhow::Result<()> {
        anyhow::ensure!(
            every >= 2,
            "every must be at least 2 (1 would drop every SYN: a blackhole)"
        );
        let (ns, ifname) = self.link_iface(link);
        let every = every.to_string();
        self.add_fault(
            ns,
            "mangle",
            "POSTROUTING",
            &[
                "-o",
                ifname,
                "-p",
                "tcp",
                "--syn",
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                &every,
                "--packet",
                "0",
                "-j",
                "DROP",
            ],
        )
    }

    /// What the node does with pod traffic to the internet that skips the
    /// proxy (node FORWARD, out the node → nat link).
    pub fn set_direct_egress(&self, policy: DirectEgress) -> anyhow::Result<()> {
        let mut direct = self.direct.lock().expect("direct");
        if let Some(r) = direct.take() {
            r.run("-D")?;
        }
        let target: &[&str] = match policy {
            DirectEgress::Allow => return Ok(()),
            DirectEgress::Drop => &["-j", "DROP"],
            DirectEgress::Reject => &["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        };
        let (_, nat_if) = self.link_iface(LabLink::NodeNat);
        let mut spec =
            vec!["-s".to_string(), self.cfg.pod_range.to_string(), "-o".into(), nat_if.to_string()];
        spec.extend(target.iter().map(|s| s.to_string()));
        let rule = IptRule {
            ns: self.ns.node.name.clone(),
            table: "filter",
            chain: "FORWARD",
            spec,
            tag: "eo-direct-egress".into(),
        };
        rule.run("-I")?;
        *direct = Some(rule);
        Ok(())
    }

    /// The resolver forgets `name` (its record is removed): lookups of it
    /// get NXDOMAIN. Returns once the resolver says so and Squid #2's own
    /// DNS cache (`positive_dns_ttl`) cannot still hold the old answer.
    pub fn dns_remove(&self, name: &str) -> anyhow::Result<()> {
        let records: Vec<_> =
            self.cfg.dns_records().into_iter().filter(|(n, _)| n != name).collect();
        self.resolver.set_records(&records)?;
        self.resolver.wait_for(&self.ns.dns, name, false)?;
        std::thread::sleep(SQUID_DNS_TTL);
        *self.dns_changed.lock().expect("dns") = true;
        Ok(())
    }

    /// The resolver stopped (SIGKILL by PID): lookups get no answer.
    pub fn resolver_down(&self) -> anyhow::Result<()> {
        self.resolver.stop();
        *self.dns_changed.lock().expect("dns") = true;
        Ok(())
    }

    pub fn resolver_running(&self) -> bool {
        self.resolver.running()
    }

    /// Back to the start state: fault rules removed, direct egress as
    /// configured, the resolver running with every record, Squid #2 running, Squid #1 restarted (new PID) so it does
    /// not carry a dead-parent verdict or failure count from earlier faults.
    pub fn restore(&self) -> anyhow::Result<()> {
        let rules = std::mem::take(&mut *self.faults.lock().expect("faults"));
        let mut first_err = None;
        for r in rules.iter().rev() {
            if let Err(e) = r.run("-D") {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e.context("removing fault rules"));
        }
        self.set_direct_egress(self.cfg.direct_egress)?;
        self.resolver.set_records(&self.cfg.dns_records())?;
        self.resolver.start(&self.ns.dns)?;
        // After a DNS fault: every name answers again, and Squid #2's
        // negative cache (`negative_dns_ttl`) of the failed lookups is over.
        if std::mem::take(&mut *self.dns_changed.lock().expect("dns")) {
            for (name, _) in self.cfg.dns_records() {
                self.resolver.wait_for(&self.ns.dns, &name, true)?;
            }
            std::thread::sleep(SQUID_DNS_TTL);
        }
        self.start_hop(Hop::Two)?;
        self.restart_hop(Hop::One)
    }

    /// Packets dropped so far by the active fault rules (proof a fault fired).
    pub fn fault_packets(&self) -> anyhow::Result<u64> {
        let rules = self.faults.lock().expect("faults").clone();
        let tags: BTreeSet<&str> = rules.iter().map(|r| r.tag.as_str()).collect();
        let places: BTreeSet<(&str, &str)> =
            rules.iter().map(|r| (r.ns.as_str(), r.table)).collect();
        let mut total = 0;
        for (ns, table) in places {
            let out = crate::sh(
                crate::cmd("ip", &["netns", "exec", ns, "iptables-save", "-c", "-t", table])
                    .env("LC_ALL", "C"),
            )?;
            for line in out.lines().filter(|l| {
                tags.iter().any(|t| {
                    l.contains(&format!("--comment {t} ")) || l.ends_with(&format!("--comment {t}"))
                })
            }) {
                // `[packets:bytes] -A …`
                let counters = line
                    .strip_prefix('[')
                    .and_then(|l| l.split_once(']'))
                    .map(|(c, _)| c)
                    .unwrap_or("");
                total +=
                    counters.split(':').next().and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok(total)
    }

    fn add_fault(
        &self,
        ns: &Netns,
        table: &'static str,
        chain: &'static str,
        spec: &[&str],
    ) -> anyhow::Result<()> {
        let tag = format!("eo-fault-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let rule = IptRule {
            ns: ns.name.clone(),
            table,
            chain,
            spec: spec.iter().map(|s| s.to_string()).collect(),
            tag,
        };
        rule.run("-I")?;
        self.faults.lock().expect("faults").push(rule);
        Ok(())
    }
}
