//! What runs on the machines: each machine's agent (the same chain
//! configuration everywhere, as one ConfigMap and the VM's copy of it),
//! the two Squids, the peer API's certificates, and the Kubernetes objects
//! the fake apiserver serves about hop 1.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{MultiNodeConfig, machine::Machine};
use crate::{
    Agent, AgentMode,
    chain_lab::{Hop, squid},
    fake_apiserver::objects,
};

/// Squid #2 runs as this unit on the VM (its cgroup says so).
pub const HOP2_UNIT: &str = "squid.service";
/// The Service of hop 1 (namespace, name) and its pod.
pub const HOP1_SERVICE: (&str, &str) = ("intra-proxy", "squid-proxy");
pub const HOP1_POD: &str = "squid-proxy-7d9f-abcde";
/// The agent's verifier runs under TCG: allow it time.
const AGENT_READY: Duration = Duration::from_secs(240);

/// The agents' configuration: hop 1 by its Service (found through the
/// Kubernetes API by `explain --assemble`), its addresses (what the client
/// node sees), its name and its pod's cgroup; hop 2 by its address, its
/// unit and where its agent serves the peer API.
pub fn agent_config(cfg: &MultiNodeConfig, hop1_cgroup_leaf: &str, probe: Option<&str>) -> String {
    let c = &cfg.chain;
    let mut y = format!(
        "version: 1\nchain:\n  name: lab\n  hops:\n    - name: gke-squid\n      via_names: [\"{}\"]\n      match:\n        service: {{namespace: {}, name: {}, port: {}}}\n        addresses: [\"{}:{}\", \"{}:{}\"]\n        names: [\"{}\"]\n        cgroup: \"{}\"\n    - name: gce-proxy\n      via_names: [\"{}\"]\n      agents: [\"{}:{}\"]\n      match:\n        address: \"{}:{}\"\n        host_unit: \"{HOP2_UNIT}\"\ndestinations:\n  allow: [\"{}:{}\"]\ndns:\n  timeout: 1s\n  names: [\"{}\", \"{}\"]\n",
        c.hop1_hostname,
        HOP1_SERVICE.0,
        HOP1_SERVICE.1,
        c.proxy_port,
        c.cluster_ip,
        c.proxy_port,
        c.proxy_pod_ip,
        c.proxy_port,
        c.proxy_name,
        hop1_cgroup_leaf,
        c.hop2_hostname,
        c.gce_ip,
        cfg.peer_port,
        c.gce_ip,
        c.proxy_port,
        c.healthy.name,
        c.origin_port,
        c.proxy_name,
        c.healthy.name,
    );
    if let Some(netns) = probe {
        let ms = cfg.probe_interval.as_millis();
        y.push_str(&format!(
            "probes:\n  targets: [\"{}:{}\"]\n  interval: {ms}ms\n  timeout: {ms}ms\n  netns: \"{netns}\"\n",
            c.healthy.name, c.origin_port
        ));
    }
    y
}

/// What the fake apiserver serves: hop 1's Service, its EndpointSlice (the
/// pod on node B), the pod, both nodes with their InternalIPs.
pub fn kube_objects(cfg: &MultiNodeConfig, node_a: &str, node_b: &str) -> Vec<Value> {
    let c = &cfg.chain;
    let (ns, svc) = HOP1_SERVICE;
    let pod_ip = c.proxy_pod_ip.to_string();
    vec![
        objects::service(
            ns,
            svc,
            &c.cluster_ip.to_string(),
            c.proxy_port,
            Some(json!({"app": svc})),
        ),
        objects::endpoint_slice(
            ns,
            &format!("{svc}-x7k2p"),
            svc,
            c.proxy_port,
            &[(&pod_ip, Some((HOP1_POD, objects::uid(16), node_b)))],
        ),
        objects::pod(&objects::PodSpec {
            ns,
            name: HOP1_POD,
            uid: objects::uid(16),
            node: node_b,
            ip: &pod_ip,
            labels: json!({"app": svc}),
            host_ip: Some(&cfg.node_b_ip.to_string()),
            ..objects::PodSpec::default()
        }),
        objects::node(node_a, &cfg.node_a_ip.to_string(), None),
        objects::node(node_b, &cfg.node_b_ip.to_string(), None),
    ]
}

/// The peer API's files (deploy/tls/make-peer-certs.sh), made on the host.
pub struct PeerCerts {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl PeerCerts {
    pub fn make(dir: &Path) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tls/make-peer-certs.sh");
        crate::sh(
            crate::cmd("sh", &[&script.display().to_string(), &dir.display().to_string(), "30"])
                .env("LC_ALL", "C"),
        )
        .context("deploy/tls/make-peer-certs.sh (openssl)")?;
        let p = |f: &str| dir.join(f).display().to_string();
        Ok(Self { ca: p("ca.crt"), cert: p("peer.crt"), key: p("peer.key") })
    }

    /// The same files on machine `m` (copied into a VM).
    pub fn on(&self, m: &Machine) -> anyhow::Result<PeerCerts> {
        if !m.is_vm() {
            return Ok(Self {
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        let mut out = Vec::new();
        for (src, name, mode) in [
            (&self.ca, "peer/ca.crt", 0o644),
            (&self.cert, "peer/peer.crt", 0o644),
            (&self.key, "peer/peer.key", 0o600),
        ] {
            let path = m.path(name);
            m.write(&path, &std::fs::read_to_string(src)?, mode)?;
            out.push(path);
        }
        Ok(Self { ca: out[0].clone(), cert: out[1].clone(), key: out[2].clone() })
    }

    pub fn args(&self) -> Vec<String> {
        ["--peer-tls-cert", &self.cert, "--peer-tls-key", &self.key, "--peer-ca", &self.ca]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// A machine's agent: `run --log-flows` with the peer API on the machine's
/// VPC address; its records read from its flow log.
pub struct NodeAgent {
    kind: AgentKind,
    pub api_socket: String,
    pub metrics_port: u16,
    /// Every record so far, oldest first.
    pub records: Vec<Value>,
    offset: u64,
}

enum AgentKind {
    Host(Agent),
    Vm { pid: u32, out: String, err: String },
}

impl NodeAgent {
    /// Start the agent of `m` (`extra`: its flags after `run`).
    pub fn start(m: &Machine, extra: Vec<String>, metrics_port: u16) -> anyhow::Result<Self> {
        let api_socket = m.path("agent-api.sock");
        let mut args = vec!["--api-socket".to_string(), api_socket.clone()];
        args.extend(extra);
        let kind = if m.is_vm() {
            let (out, err) = (m.path("agent.jsonl"), m.path("agent.err"));
            let mut argv = vec![
                "/bin/egress-agent".to_string(),
                "run".into(),
                "--log-flows".into(),
                "--metrics-addr".into(),
                format!("127.0.0.1:{metrics_port}"),
            ];
            argv.extend(args);
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let pid = m.spawn(None, &refs, None, &out, &err)?;
            AgentKind::Vm { pid, out, err }
        } else {
            let wrapper =
                vec!["nsenter".to_string(), format!("--net={}", m.netns_path(None)?), "--".into()];
            let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
            AgentKind::Host(Agent::start_wrapped(
                &wrapper,
                AgentMode::Run { metrics, extra: args },
            )?)
        };
        Ok(Self { kind, api_socket, metrics_port, records: Vec::new(), offset: 0 })
    }

    /// Wait until the agent attached its programs (a VM's: from its stderr).
    pub fn ready(&self, m: &Machine) -> anyhow::Result<()> {
        let AgentKind::Vm { pid, err, .. } = &self.kind else { return Ok(()) };
        let deadline = Instant::now() + AGENT_READY;
        loop {
            let (text, _) = m.read(err, 0, false)?;
            if text.contains("programs attached") {
                return Ok(());
            }
            if m.wait(*pid, Duration::ZERO)?.is_some() {
                bail!("{}'s agent exited:\n{text}", m.name);
            }
            if Instant::now() > deadline {
                bail!("{}'s agent not ready within {AGENT_READY:?}:\n{text}", m.name);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Read the records that came since the last poll.
    pub fn poll(&mut self, m: &Machine) -> anyhow::Result<()> {
        match &mut self.kind {
            AgentKind::Host(a) => {
                a.poll();
                self.records = a.records.clone();
            }
            AgentKind::Vm { out, .. } => loop {
                let (text, n) = m.read(out, self.offset, true)?;
                self.offset += n;
                self.records.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
                if n < 200_000 {
                    break;
                }
            },
        }
        Ok(())
    }

    /// The agent's last stderr lines (for errors).
    pub fn stderr(&self, m: &Machine) -> String {
        match &self.kind {
            AgentKind::Host(a) => a.stderr_text(),
            AgentKind::Vm { err, .. } => m.read(err, 0, false).map(|t| t.0).unwrap_or_default(),
        }
    }

    /// GET /metrics, from inside the machine.
    pub fn metrics(&self, m: &Machine) -> anyhow::Result<String> {
        m.run(
            None,
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://127.0.0.1:{}/metrics", self.metrics_port),
            ],
        )
    }

    pub fn stop(self, m: &Machine) -> anyhow::Result<()> {
        match self.kind {
            AgentKind::Host(a) => a.stop().map(|_| ()),
            AgentKind::Vm { pid, .. } => m.kill(pid),
        }
    }
}

/// A hop's Squid on machine `m` (namespace `ns`, cgroup `cgroup`); its
/// configuration written to the machine first. Returns its PID once it
/// listens.
pub fn start_squid(
    m: &Machine,
    cfg: &MultiNodeConfig,
    hop: Hop,
    ns: Option<&str>,
    cgroup: &str,
) -> anyhow::Result<u32> {
    let dir = m.path(&format!("squid-{}", hop.label()));
    let files = squid::SquidFiles::at(dir.clone().into());
    m.write(&files.conf.display().to_string(), &squid::conf_text(&cfg.chain, hop, &files), 0o644)?;
    m.write(&files.hosts().display().to_string(), "", 0o644)?;
    // Squid drops to `proxy`, which writes its logs here.
    m.run(None, &["chmod", "0777", &dir])?;
    let _ = m.run(None, &["rm", "-f", &files.pid_file.display().to_string()]);
    let conf = files.conf.display().to_string();
    let err = format!("{dir}/squid.err");
    let pid = m.spawn(
        ns,
        &["squid", "-N", "-n", &format!("eo{}", hop.label()), "-f", &conf],
        Some(cgroup),
        &files.stdio_log.display().to_string(),
        &err,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !m.listening(ns, cfg.chain.proxy_port)? {
        if m.wait(pid, Duration::ZERO)?.is_some() || Instant::now() > deadline {
            let (log, _) = m.read(&files.cache_log.display().to_string(), 0, false)?;
            let (out, _) = m.read(&err, 0, false)?;
            bail!("{}: Squid {} did not listen:\n{log}\n{out}", m.name, hop.label());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pid)
}
