//! NetworkPolicy-aware diagnosis against real enforcement, for `cargo xtask
//! lab` and `tests/tests/network_policy.rs`: the real agent (`run`) judges
//! real connects of a "pod" (a kubelet-shaped cgroup in its own network
//! namespace) whose egress a policy engine enforces; its verdicts must agree
//! with what the datapath did.
//!
//! ```text
//! pod 198.18.61.2 ── 198.18.61.1 router 198.18.62.1 ── outside .2 .3 .4 (listeners :8080 :9090)
//!  production/web      FORWARD: policy engine rules      INPUT -d .4 DROP (a blackhole)
//!                      PREROUTING DNAT (ClusterIPs)
//! ```
//!
//! - **Kubernetes API:** the fake API server (`crate::fake_apiserver`)
//!   serves the pod, Services, EndpointSlices, Node, Namespace and the
//!   NetworkPolicies, reached through a kubeconfig.
//! - **Enforcement:** `crate::netpol`, iptables rules generated from the
//!   SAME NetworkPolicy objects the API serves (a separate small
//!   implementation, not the agent's evaluator), in the router's FORWARD.
//! - **Policies:** `production/default-deny-egress` (every pod, no rule) and
//!   `production/allow-web-egress` (app=web: 198.18.62.0/24 except
//!   198.18.62.3/32, TCP 8000–8090 with `endPort`).
//!
//! Addresses exist only inside the lab's namespaces (RFC 2544 ranges); the
//! rules go with the namespaces.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

use crate::{
    Agent, AgentMode, Netns, Veth,
    agent::free_port,
    cgroups::{Layout, TestCgroup},
    demo::DemoRow,
    fake_apiserver::{
        FakeApiServer, Kubeconfig,
        objects::{self, PodSpec},
    },
    netns::Rule,
    netpol::{self, PodRef},
};

pub const POD_IP: &str = "198.18.61.2";
const ROUTER_IN: &str = "198.18.61.1";
const ROUTER_OUT: &str = "198.18.62.1";
pub const ALLOWED: &str = "198.18.62.2";
pub const EXCEPTED: &str = "198.18.62.3";
pub const BLACKHOLED: &str = "198.18.62.4";
/// A ClusterIP inside the allowed block whose backend is the excepted address.
pub const SVC_TO_DENIED: &str = "198.18.62.10";
/// A ClusterIP outside every allowed block whose backend is allowed (and blackholed).
pub const SVC_TO_ALLOWED: &str = "198.19.61.10";

pub const NODE: &str = "eo-np-node-a";
pub const NS: &str = "production";
pub const POD: &str = "web-6c9f8d7b5-k2m4p";
pub const DENY_ALL: &str = "production/default-deny-egress";
pub const ALLOW_WEB: &str = "production/allow-web-egress";

const READY: Duration = Duration::from_secs(30);
/// How long a record may take.
pub const RECORD: Duration = Duration::from_secs(20);

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("lab address"), port)
}

pub fn policies() -> Vec<Value> {
    vec![
        objects::network_policy(
            NS,
            "default-deny-egress",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        ),
        objects::network_policy(
            NS,
            "allow-web-egress",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "198.18.62.0/24", "except": [format!("{EXCEPTED}/32")]}}],
                    "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8090}]
                }]
            }),
        ),
    ]
}

/// Accepts on `0.0.0.0:port` in `ns` and says "ok"; stopped on drop.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &Netns, port: u16) -> anyhow::Result<Listener> {
        let listener =
            ns.within("eo-np-listen", move || TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"ok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Listener { stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the pod's client saw (`ok`, `timeout`, `error N`) and its PID.
pub struct Outcome {
    pub pid: u64,
    pub said: String,
}

/// The namespaces, the pod's cgroup, the fake API server and its kubeconfig.
pub struct NetpolLab {
    // Declared first: stopped before their namespaces go.
    _listeners: Vec<Listener>,
    pub api: FakeApiServer,
    kubeconfig: Kubeconfig,
    pub cg: TestCgroup,
    /// The engine's `iptables-restore` text loaded into the router.
    pub rules: String,
    pub client: Netns,
    pub router: Netns,
    pub outside: Netns,
}

impl NetpolLab {
    #[allow(
        clippy::mem_forget,
        reason = "the rules live in the lab's own namespaces and go with them"
    )]
    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::new("npc")?;
        let router = Netns::new("npr")?;
        let outside = Netns::new("npo")?;
        Veth::link(&client, &[&format!("{POD_IP}/24")], &router, &[&format!("{ROUTER_IN}/24")])?;
        Veth::link(
            &router,
            &[&format!("{ROUTER_OUT}/24")],
            &outside,
            &[&format!("{ALLOWED}/24"), &format!("{EXCEPTED}/24"), &format!("{BLACKHOLED}/24")],
        )?;
        client.run(&["ip", "route", "add", "default", "via", ROUTER_IN])?;
        outside.run(&["ip", "route", "add", "default", "via", ROUTER_OUT])?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        let listeners = vec![Listener::start(&outside, 8080)?, Listener::start(&outside, 9090)?];
        // Beyond the policy engine: a destination that never answers.
        std::mem::forget(Rule::add(
            &outside,
            false,
            "filter",
            &["INPUT", "-d", &format!("{BLACKHOLED}/32"), "-j", "DROP"],
        )?);
        // kube-proxy-style ClusterIPs.
        for (cluster_ip, backend) in [(SVC_TO_DENIED, EXCEPTED), (SVC_TO_ALLOWED, BLACKHOLED)] {
            std::mem::forget(Rule::add(
                &router,
                false,
                "nat",
                &[
                    "PREROUTING",
                    "-d",
                    &format!("{cluster_ip}/32"),
                    "-p",
                    "tcp",
                    "--dport",
                    "8080",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &format!("{backend}:8080"),
                ],
            )?);
        }

        // The pod and the policies, once for the engine and once for the API.
        let cg = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 61)?;
        let labels: BTreeMap<String, String> = [("app", "web"), ("pod-template-hash", "6c9f8d7b5")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let policies = policies();
        let rules = netpol::egress_rules(
            &policies,
            &PodRef { namespace: NS, labels: &labels, ip: POD_IP },
        )?
        .context("the pod is not isolated by the lab's policies")?;
        netpol::load(&router, &rules)?;

        let pod = objects::pod(&PodSpec {
            ns: NS,
            name: POD,
            uid: cg.pod_uid.clone(),
            node: NODE,
            ip: POD_IP,
            owner: Some(("apps/v1", "ReplicaSet", "web-6c9f8d7b5")),
            labels: json!(labels),
            containers: vec![("app", "python:3.12-slim", cg.container_id.clone())],
            host_ip: Some(ROUTER_OUT),
            ..PodSpec::default()
        });
        let mut objs = vec![
            pod,
            objects::namespace(NS, json!({"team": "shop"})),
            objects::node(NODE, ROUTER_OUT, None),
            objects::service(NS, "ledger", SVC_TO_DENIED, 8080, None),
            objects::endpoint_slice(NS, "ledger-x7k2p", "ledger", 8080, &[(EXCEPTED, None)]),
            objects::service(NS, "archive", SVC_TO_ALLOWED, 8080, None),
            objects::endpoint_slice(NS, "archive-m3q9z", "archive", 8080, &[(BLACKHOLED, None)]),
        ];
        objs.extend(policies);
        let api = FakeApiServer::with(objs);
        let kubeconfig = Kubeconfig::write(api.addr);
        Ok(Self { _listeners: listeners, api, kubeconfig, cg, rules, client, router, outside })
    }

    /// A `run` agent on the lab's node, following the router's conntrack,
    /// returned once it has listed and watched the pods, namespaces and
    /// NetworkPolicies.
    pub fn agent(&self) -> anyhow::Result<Agent> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let extra = [
            "--kube",
            "true",
            "--kubeconfig",
            &self.kubeconfig.0.display().to_string(),
            "--node-name",
            NODE,
            "--conntrack-netns",
            &format!("/run/netns/{}", self.router.name),
        ]
        .map(String::from)
        .to_vec();
        let agent = Agent::start(AgentMode::Run { metrics, extra })?;
        let deadline = Instant::now() + READY;
        let watched =
            ["/api/v1/pods", "/api/v1/namespaces", "/apis/networking.k8s.io/v1/networkpolicies"];
        while watched.iter().any(|c| self.api.watches(c) < 1) {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not list+watch {watched:?} within {READY:?}; requests:\n{}\nagent stderr:\n{}",
                    self.api.requests().join("\n"),
                    agent.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// A python client in the pod: waits until moved into the pod cgroup,
    /// connects with a 2.5 s timeout and says what happened.
    pub fn connect(&self, to: SocketAddr) -> anyhow::Result<Outcome> {
        let script = format!(
            "import socket,sys,time\nfor _ in range(200):\n  if '{}' in open('/proc/self/cgroup').read(): break\n  time.sleep(0.01)\nelse:\n  sys.exit('never moved into the cgroup')\ntry:\n  s=socket.create_connection(('{}',{}),timeout=2.5)\n  s.settimeout(5)\n  print('ok' if s.recv(10)==b'ok\\n' else 'bad greeting')\n  s.close()\nexcept socket.timeout:\n  print('timeout')\nexcept OSError as e:\n  print('error', e.errno)\n",
            self.cg.path().file_name().and_then(|n| n.to_str()).context("leaf name")?,
            to.ip(),
            to.port()
        );
        let child = self
            .client
            .command(&["python3", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("spawn python3")?;
        let pid = u64::from(child.id());
        let entered = self.cg.enter(child.id());
        let out = child.wait_with_output().context("client output")?;
        entered.context("moving the client into the pod cgroup")?;
        ensure!(out.status.success(), "client to {to}: {}", out.status);
        Ok(Outcome { pid, said: String::from_utf8_lossy(&out.stdout).trim().to_string() })
    }
}

/// `(name, target, expected)`: what the datapath did | the agent's record.
pub fn cases() -> Vec<(&'static str, SocketAddr, String)> {
    let denied = format!("timeout | failed/policy_denied, policy denied by {ALLOW_WEB},{DENY_ALL}");
    let allowed = format!("timeout | failed/timeout, policy allowed by {ALLOW_WEB}");
    vec![
        ("netpol: allowed", sa(ALLOWED, 8080), "ok | ok".to_string()),
        ("netpol: excepted address", sa(EXCEPTED, 8080), denied.clone()),
        ("netpol: port past endPort", sa(ALLOWED, 9090), denied.clone()),
        ("netpol: allowed, blackholed", sa(BLACKHOLED, 8080), allowed.clone()),
        ("netpol: ClusterIP, denied backend", sa(SVC_TO_DENIED, 8080), denied),
        ("netpol: ClusterIP, allowed backend", sa(SVC_TO_ALLOWED, 8080), allowed),
    ]
}

/// A pod flow's record: `verdict[/reason][, policy VERDICT by POLICIES]`,
/// and the pod it names when that is not the lab's pod.
pub fn said(v: &Value) -> String {
    let mut s = v["verdict"].as_str().unwrap_or("?").to_string();
    if let Some(r) = v["reason"].as_str() {
        s += &format!("/{r}");
    }
    // Present only when the agent judged the flow against the policies.
    if let Some(p) = v.get("policy_verdict") {
        s += &format!(
            ", policy {} by {}",
            p.as_str().map_or_else(|| p.to_string(), str::to_string),
            v["policy"].as_str().unwrap_or("?")
        );
    }
    if v["namespace"] != NS || v["pod"] != POD {
        s += &format!(" (pod {}/{})", v["namespace"], v["pod"]);
    }
    s
}

/// Connect to every case's target from the pod, one at a time, and judge
/// what the datapath did and the agent's record of that client's connect.
pub fn rows(lab: &NetpolLab, agent: &mut Agent) -> anyhow::Result<Vec<DemoRow>> {
    let mut rows = Vec::new();
    for (name, dst, expected) in cases() {
        let out = lab.connect(dst)?;
        let rec = agent.wait_for(RECORD, |v| v["pid"].as_u64() == Some(out.pid)).map_or_else(
            |_| format!("no record of the client (pid {}) in {RECORD:?}", out.pid),
            |v| said(&v),
        );
        let got = format!("{} | {rec}", out.said);
        rows.push(DemoRow { name, dst, ok: got == expected, expected, got });
    }
    Ok(rows)
}

/// The lab's table on a fresh lab and agent.
pub fn run() -> anyhow::Result<Vec<DemoRow>> {
    let _kernel = crate::kernel_lock::KernelLock::take()?;
    let lab = NetpolLab::new()?;
    let mut agent = lab.agent()?;
    let rows = rows(&lab, &mut agent)?;
    agent.stop()?;
    Ok(rows)
}
