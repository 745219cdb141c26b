//! The running multi-machine lab: the fabric, the three machines with
//! their roles and agents, the host's services (NAT, origins, resolver,
//! the fake apiserver), and the faults. Built by [`Lab::new`], torn down on
//! drop (agents, then Squids and VMs, then the host's namespaces and files).
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    HOST, MultiNodeConfig, VmImage,
    machine::Machine,
    net::{self, Fabric},
    roles::{self, HOP2_UNIT, NodeAgent, PeerCerts},
    vm::Vm,
};
use crate::{
    Netns,
    cgroups::{Layout, TestCgroup},
    chain_lab::{
        Hop, SQUID_DNS_TTL,
        origin::Origin,
        resolver::{NetnsResolvConf, Resolver},
    },
    fake_apiserver::{FakeApiServer, Kubeconfig},
    qemu::Tap,
};

/// The machines' host names (and their agents' node names).
pub const NODE_A: &str = "node-a";
pub const NODE_B: &str = "node-b";
pub const GCE: &str = "gce-vm";
/// Pod namespaces inside the nodes.
pub const APP_NS: &str = "app";
pub const HOP1_NS: &str = "hop1";
const METRICS_PORT: u16 = 9464;

/// A fault rule: an iptables rule inserted on a machine or a host namespace.
struct Rule {
    /// Which machine (index into the machines), or None: a host namespace.
    machine: Option<usize>,
    host_ns: Option<String>,
    ns: Option<String>,
    args: Vec<String>,
}

pub struct Lab {
    pub agents: Vec<NodeAgent>,
    /// node A, node B, the GCE VM.
    pub machines: Vec<Machine>,
    squids: Mutex<[Option<u32>; 2]>,
    faults: Mutex<Vec<Rule>>,
    dns_changed: Mutex<bool>,
    pub cfg: MultiNodeConfig,
    pub hop1_cgroup: String,
    pub gce_cgroup: String,
    /// The app pod's cgroup on node A (clients run in it).
    pub client_cgroup: String,
    pub configs: Vec<String>,
    pub certs: Vec<PeerCerts>,
    pub kubeconfig_on_a: String,
    _kubeconfig: Kubeconfig,
    _apiserver: FakeApiServer,
    resolver: Resolver,
    _resolv_conf: Option<NetnsResolvConf>,
    _origin: Origin,
    _host_cgroups: Vec<TestCgroup>,
    pub fabric: Fabric,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    /// Boot and wire everything; `images` has one image per VM kernel of
    /// the placement.
    pub fn new(cfg: MultiNodeConfig, images: &[VmImage]) -> anyhow::Result<Self> {
        let dir =
            TempDir(std::env::temp_dir().join(format!("eo-multinode-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0)?;
        let fabric = Fabric::build(&cfg).context("the lab's network")?;
        let placements = [
            (NODE_A, &cfg.node_a, cfg.node_a_ip),
            (NODE_B, &cfg.node_b, cfg.node_b_ip),
            (GCE, &cfg.gce, cfg.chain.gce_ip),
        ];
        // Boot the VMs at once (each one TCG thread), the host's machine meanwhile.
        let mut machines: Vec<Option<Machine>> = Vec::new();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let mut handles = Vec::new();
            for (i, (name, kernel, _)) in placements.iter().enumerate() {
                if kernel.as_str() == HOST {
                    continue;
                }
                let image = images
                    .iter()
                    .find(|im| &im.kernel == *kernel)
                    .with_context(|| format!("no VM image for kernel {kernel}"))?
                    .clone();
                let tap = Tap {
                    ifname: format!("eot{}x{i}", std::process::id() % 10_000),
                    mac: format!("52:54:00:e0:00:{:02x}", i + 1),
                };
                let (vpc, d) = (&fabric.vpc, &dir.0);
                handles.push((
                    i,
                    tap.ifname.clone(),
                    s.spawn(move || Vm::boot(name, &image, vpc, tap, d)),
                ));
            }
            machines = (0..3).map(|_| None).collect();
            for (i, (name, kernel, _)) in placements.iter().enumerate() {
                if kernel.as_str() == HOST {
                    machines[i] = Some(Machine::host(name, Netns::new(name)?, dir.0.join(name))?);
                }
            }
            for (i, tap, h) in handles {
                let vm = h.join().map_err(|_| anyhow::anyhow!("boot thread panicked"))??;
                fabric.attach_tap(&tap)?;
                machines[i] = Some(Machine::vm(placements[i].0, vm));
            }
            Ok(())
        })?;
        let machines: Vec<Machine> =
            machines.into_iter().map(|m| m.context("machine")).collect::<anyhow::Result<_>>()?;
        for (m, (_, _, ip)) in machines.iter().zip(&placements) {
            match &m.kind {
                super::machine::Kind::Host { root, .. } => fabric.attach_host(root, *ip, &cfg)?,
                super::machine::Kind::Vm(_) => net::configure_vm(m, *ip, &cfg)?,
            }
            net::node_sysctls(m, &cfg)?;
        }
        let c = &cfg.chain;
        let (a, b, g) = (&machines[0], &machines[1], &machines[2]);
        net::pod(a, APP_NS, c.app_ip, c.app_gw, cfg.node_a_pods, &cfg)?;
        net::pod(b, HOP1_NS, c.proxy_pod_ip, c.proxy_pod_gw, cfg.node_b_pods, &cfg)?;
        // kube-proxy (iptables mode) on node A: ClusterIP:port → the hop-1 pod.
        a.run(
            None,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &c.cluster_ip.to_string(),
                "-p",
                "tcp",
                "--dport",
                &c.proxy_port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:{}", c.proxy_pod_ip, c.proxy_port),
            ],
        )?;
        // The host's services.
        let origin = Origin::start(
            &fabric.inet,
            std::net::SocketAddr::new(c.healthy.ip.into(), c.origin_port),
            format!("{}\n", c.banner),
        )?;
        let resolver = Resolver::new(&dir.0, c.dns_ip, c.dns_local_domains())?;
        resolver.set_records(&c.dns_records())?;
        resolver.start(&fabric.dns).context("resolver")?;
        let resolv = format!("nameserver {}\noptions timeout:1 attempts:1\n", c.dns_ip);
        let resolv_conf = match &a.kind {
            super::machine::Kind::Host { .. } => {
                Some(NetnsResolvConf::new(&a.ns_arg(APP_NS)?, c.dns_ip)?)
            }
            super::machine::Kind::Vm(_) => {
                a.write(&format!("/etc/netns/{APP_NS}/resolv.conf"), &resolv, 0o644)?;
                None
            }
        };
        let kubeapi_addr = std::net::SocketAddr::from((cfg.kubeapi_ip, cfg.kubeapi_port));
        let listener = fabric
            .kubeapi
            .within("eo-kubeapi", move || std::net::TcpListener::bind(kubeapi_addr))??;
        let apiserver =
            FakeApiServer::with_listener(listener, roles::kube_objects(&cfg, NODE_A, NODE_B));
        let kubeconfig = Kubeconfig::write(kubeapi_addr);
        let kubeconfig_on_a = if a.is_vm() {
            let p = a.path("kubeconfig.yaml");
            a.write(&p, &std::fs::read_to_string(&kubeconfig.0)?, 0o600)?;
            p
        } else {
            kubeconfig.0.display().to_string()
        };
        // Cgroups: hop 1 in a kubelet-shaped pod cgroup, hop 2 a unit, the client a pod.
        let mut host_cgroups = Vec::new();
        let mut cg = |m: &Machine, layout: Layout, seed: u64| -> anyhow::Result<String> {
            if m.is_vm() {
                let rel = TestCgroup::relative(layout, seed);
                return m.cgroup(&rel.join("/"));
            }
            let t = TestCgroup::new(layout, seed)?;
            let p = t.path().display().to_string();
            host_cgroups.push(t);
            Ok(p)
        };
        let hop1_cgroup = cg(b, Layout::Systemd { qos: Some("burstable") }, 911)?;
        let client_cgroup = cg(a, Layout::Systemd { qos: None }, 913)?;
        let gce_cgroup = if g.is_vm() {
            g.cgroup(&format!("system.slice/{HOP2_UNIT}"))?
        } else {
            // On the host a unit cgroup of its own: the agent's hop 2 matcher
            // is the unit name, so it must be unique to the lab.
            cg(g, Layout::Unit, 912)?
        };
        let hop1_leaf = hop1_cgroup.rsplit('/').next().unwrap_or_default().to_string();
        let certs_host = PeerCerts::make(&dir.0.join("peer"))?;
        let mut configs = Vec::new();
        let mut certs = Vec::new();
        for m in &machines {
            let path = m.path("agent.yaml");
            m.write(&path, &roles::agent_config(&cfg, &hop1_leaf, None), 0o644)?;
            configs.push(path);
            certs.push(certs_host.on(m)?);
        }
        let lab = Self {
            agents: Vec::new(),
            machines,
            squids: Mutex::new([None, None]),
            faults: Mutex::new(Vec::new()),
            dns_changed: Mutex::new(false),
            cfg,
            hop1_cgroup,
            gce_cgroup,
            client_cgroup,
            configs,
            certs,
            kubeconfig_on_a,
            _kubeconfig: kubeconfig,
            _apiserver: apiserver,
            resolver,
            _resolv_conf: resolv_conf,
            _origin: origin,
            _host_cgroups: host_cgroups,
            fabric,
            _dir: dir,
        };
        lab.warm_up()?;
        lab.start_hop(Hop::Two)?;
        lab.start_hop(Hop::One)?;
        Ok(lab)
    }

    pub fn a(&self) -> &Machine {
        &self.machines[0]
    }

    fn warm_up(&self) -> anyhow::Result<()> {
        let c = &self.cfg;
        for (m, ns, to) in [
            (0, None, c.vpc_gw),
            (1, None, c.vpc_gw),
            (2, None, c.vpc_gw),
            (0, Some(APP_NS), c.chain.app_gw),
            (1, Some(HOP1_NS), c.chain.proxy_pod_gw),
            (1, Some(HOP1_NS), c.chain.gce_ip),
            (0, Some(APP_NS), c.chain.proxy_pod_ip),
            (2, None, c.chain.dns_ip),
            (2, None, c.chain.internet_ip),
            (0, None, c.kubeapi_ip),
            (0, None, c.node_b_ip),
            (0, None, c.chain.gce_ip),
        ] {
            net::reach(&self.machines[m], ns, to)?;
        }
        Ok(())
    }

    /// Start every agent (the VMs' first: their verifiers take longest),
    /// the first with `probe` (node A's probe config) if given.
    pub fn start_agents(&mut self, probe: bool) -> anyhow::Result<()> {
        let ips = [self.cfg.node_a_ip, self.cfg.node_b_ip, self.cfg.chain.gce_ip];
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|i| !self.machines[*i].is_vm());
        let mut started: Vec<(usize, NodeAgent)> = Vec::new();
        for i in order {
            let m = &self.machines[i];
            let mut conf = self.configs[i].clone();
            if probe && i == 0 {
                conf = m.path("agent-probe.yaml");
                let netns = m.netns_path(Some(APP_NS))?;
                let leaf = self.hop1_cgroup.rsplit('/').next().unwrap_or_default();
                m.write(&conf, &roles::agent_config(&self.cfg, leaf, Some(&netns)), 0o644)?;
            }
            let mut extra = vec![
                "--config".to_string(),
                conf,
                "--kube".into(),
                "false".into(),
                "--node-name".into(),
                m.name.clone(),
                "--peer-addr".into(),
                format!("{}:{}", ips[i], self.cfg.peer_port),
            ];
            extra.extend(self.certs[i].args());
            started.push((i, NodeAgent::start(m, extra, METRICS_PORT + i as u16)?));
        }
        for (i, a) in &started {
            a.ready(&self.machines[*i])
                .with_context(|| format!("{}'s agent", self.machines[*i].name))?;
        }
        started.sort_by_key(|(i, _)| *i);
        self.agents = started.into_iter().map(|(_, a)| a).collect();
        Ok(())
    }

    /// Stop every agent.
    pub fn stop_agents(&mut self) -> anyhow::Result<()> {
        for (i, a) in std::mem::take(&mut self.agents).into_iter().enumerate() {
            a.stop(&self.machines[i])?;
        }
        Ok(())
    }

    /// Read what the agents wrote since the last poll.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        for (i, a) in self.agents.iter_mut().enumerate() {
            a.poll(&self.machines[i])?;
        }
        Ok(())
    }

    fn hop_place(&self, hop: Hop) -> (usize, Option<&'static str>, &str) {
        match hop {
            Hop::One => (1, Some(HOP1_NS), &self.hop1_cgroup),
            Hop::Two => (2, None, &self.gce_cgroup),
        }
    }

    pub fn start_hop(&self, hop: Hop) -> anyhow::Result<()> {
        let mut s = self.squids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if s[hop.index()].is_some() {
            return Ok(());
        }
        let (m, ns, cg) = self.hop_place(hop);
        s[hop.index()] = Some(roles::start_squid(&self.machines[m], &self.cfg, hop, ns, cg)?);
        Ok(())
    }

    pub fn hop_down(&self, hop: Hop) -> anyhow::Result<()> {
        let pid = self.squids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[hop.index()].take();
        if let Some(p) = pid {
            self.machines[self.hop_place(hop).0].kill(p)?;
        }
        Ok(())
    }

    /// Insert a fault rule (`iptables -I …`), removed by [`Self::restore`].
    fn rule(
        &self,
        machine: Option<usize>,
        host_ns: Option<&Netns>,
        ns: Option<&str>,
        spec: &[&str],
    ) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec!["iptables".into(), "-w".into()];
        args.extend(spec.iter().map(|s| s.to_string()));
        let r = Rule {
            machine,
            host_ns: host_ns.map(|n| n.name.clone()),
            ns: ns.map(str::to_string),
            args,
        };
        self.apply(&r, "-I")?;
        self.faults.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(r);
        Ok(())
    }

    fn apply(&self, r: &Rule, op: &str) -> anyhow::Result<()> {
        // spec: [-t TABLE] CHAIN rest… → iptables -w [-t TABLE] OP CHAIN rest…
        let mut a: Vec<&str> = r.args.iter().map(String::as_str).collect();
        let at = if a.get(2) == Some(&"-t") { 4 } else { 2 };
        a.insert(at, op);
        match (r.machine, &r.host_ns) {
            (Some(m), _) => self.machines[m].run(r.ns.as_deref(), &a).map(|_| ()),
            (None, Some(ns)) => {
                crate::sh(std::process::Command::new("ip").args(["netns", "exec", ns]).args(&a))
                    .map(|_| ())
            }
            _ => Ok(()),
        }
    }

    pub fn hop1_blackhole(&self) -> anyhow::Result<()> {
        let p = self.cfg.chain.proxy_port.to_string();
        self.rule(
            Some(1),
            None,
            Some(HOP1_NS),
            &["INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"],
        )
    }

    pub fn hop2_blackhole(&self) -> anyhow::Result<()> {
        let p = self.cfg.chain.proxy_port.to_string();
        self.rule(Some(2), None, None, &["INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"])
    }

    pub fn nat_blackhole(&self) -> anyhow::Result<()> {
        self.rule(None, Some(&self.fabric.nat), None, &["FORWARD", "-j", "DROP"])?;
        self.rule(None, Some(&self.fabric.nat), None, &["INPUT", "-j", "DROP"])
    }

    /// The first SYN node B sends to hop 2 is lost (then every 2nd): hop 1
    /// retransmits its SYN and gets through.
    pub fn lossy_syn_hop1_to_hop2(&self) -> anyhow::Result<()> {
        let c = &self.cfg.chain;
        self.rule(
            Some(1),
            None,
            None,
            &[
                "-t",
                "mangle",
                "POSTROUTING",
                "-p",
                "tcp",
                "--syn",
                "-d",
                &c.gce_ip.to_string(),
                "--dport",
                &c.proxy_port.to_string(),
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                "2",
                "--packet",
                "0",
                "-j",
                "DROP",
            ],
        )
    }

    /// The VPC's egress firewall drops pod traffic to the internet.
    pub fn direct_egress_dropped(&self) -> anyhow::Result<()> {
        let range = self.cfg.chain.pod_range.to_string();
        self.rule(
            None,
            Some(&self.fabric.vpc),
            None,
            &["FORWARD", "-s", &range, "-o", &self.fabric.vpc_nat_if, "-j", "DROP"],
        )
    }

    pub fn dns_remove(&self, name: &str) -> anyhow::Result<()> {
        let records: Vec<_> =
            self.cfg.chain.dns_records().into_iter().filter(|(n, _)| n != name).collect();
        self.resolver.set_records(&records)?;
        self.resolver.wait_for(&self.fabric.dns, name, false)?;
        std::thread::sleep(SQUID_DNS_TTL);
        *self.dns_changed.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = true;
        Ok(())
    }

    pub fn resolver_down(&self) -> anyhow::Result<()> {
        self.resolver.stop();
        *self.dns_changed.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = true;
        Ok(())
    }

    /// Back to the start: rules removed, the resolver whole, Squid #2 up,
    /// Squid #1 restarted (no dead-parent state from an earlier fault).
    pub fn restore(&self) -> anyhow::Result<()> {
        let rules =
            std::mem::take(&mut *self.faults.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        for r in rules.iter().rev() {
            self.apply(r, "-D")?;
        }
        let c = &self.cfg.chain;
        self.resolver.set_records(&c.dns_records())?;
        self.resolver.start(&self.fabric.dns)?;
        if std::mem::take(&mut *self.dns_changed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?) {
            for (name, _) in c.dns_records() {
                self.resolver.wait_for(&self.fabric.dns, &name, true)?;
            }
            std::thread::sleep(SQUID_DNS_TTL);
        }
        self.start_hop(Hop::Two)?;
        self.hop_down(Hop::One)?;
        self.start_hop(Hop::One)
    }

    /// Run a client in the app pod (its cgroup), wait for it; its PID on node A.
    pub fn client(&self, args: &[String], timeout: Duration) -> anyhow::Result<(u32, Option<i32>)> {
        let a = self.a();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, err) = (a.path("client.out"), a.path("client.err"));
        let pid = a.spawn(Some(APP_NS), &refs, Some(&self.client_cgroup), &out, &err)?;
        let start = Instant::now();
        loop {
            if let Some(code) = a.wait(pid, Duration::from_millis(200))? {
                return Ok((pid, code));
            }
            if start.elapsed() > timeout {
                a.kill(pid)?;
                return Ok((pid, None));
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Agents first (a host agent holds the cgroup hooks), then Squids.
        let _ = self.stop_agents();
        for h in [Hop::One, Hop::Two] {
            let _ = self.hop_down(h);
        }
    }
}
