//! The alert rules against recorded reality: the chain lab (real Squids,
//! DNAT, NAT, origins) with the real agent, traffic flowing, one fault per
//! phase, `/metrics` scraped every [`SCRAPE_EVERY`]. The result is a
//! [`Recording`] whose phases say which alerts each fault must fire (and that
//! healthy traffic fires none); `prom::Recording::promtool_test` turns it into
//! a `promtool test rules` file.
//!
//! Phases, in order (each [`PHASE_SAMPLES`] scrapes; the lab is restored
//! between them): healthy; hop 1 down; hop 2 down; hop 1 ACL deny; hop 2 ACL
//! deny; origin refuses; NAT blackholed (the Cloud NAT exhaustion signature:
//! SYNs to public addresses unanswered); proxy bypass (direct, dropped);
//! lossy client link (every 7th TCP packet lost); agent losing events (the agent is
//! SIGSTOPped while a loopback burst overflows its 64 KiB ring, then
//! SIGCONTed, every scrape); agent down (SIGTERM, scrapes refused).
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    Agent, AgentMode,
    agent::{free_port, http_get},
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, DirectEgress, Hop, LabLink, wait_output},
    faults::agent_config,
    prom::{Expected, Phase, Recording, labels},
};

/// Real time between scrapes.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Scrapes per phase: longer than the longest rule window (10m) plus a `for`
/// once mapped to one minute per scrape.
pub const PHASE_SAMPLES: usize = 13;
/// Client loops running requests concurrently.
const WORKERS: usize = 5;
/// Pause of each client loop between requests.
const PACE: Duration = Duration::from_millis(400);
/// `job` and `instance` the recording is labelled with (as Prometheus would
/// label a target `lab-node:9464` of job `egress-agent`).
pub const JOB: &str = "egress-agent";
pub const INSTANCE: &str = "lab-node:9464";

/// The chain lab with its hops in cgroups (so the agent can tell the hops'
/// processes), a cgroup for the clients and the agent configuration for it.
/// Fields drop in order: the lab (its processes) before the cgroups.
pub struct Rig {
    pub lab: ChainLab,
    pub cfg: ChainLabConfig,
    pub client_cg: TestCgroup,
    _hops: [TestCgroup; 2],
    pub conf: PathBuf,
    dir: PathBuf,
}

impl Rig {
    /// `seed` picks the cgroup names (distinct per test).
    pub fn new(seed: u64) -> anyhow::Result<Self> {
        let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, seed)?;
        let hop2 = TestCgroup::new(Layout::Unit, seed + 1)?;
        let client_cg = TestCgroup::new(Layout::Unit, seed + 2)?;
        let cfg = ChainLabConfig {
            hop1_cgroup: Some(hop1.path().to_path_buf()),
            hop2_cgroup: Some(hop2.path().to_path_buf()),
            // Every failure is its own, not an accumulation that makes Squid #1
            // mark its parent dead.
            peer_connect_fail_limit: 100_000,
            client_timeout: Duration::from_secs(10),
            ..ChainLabConfig::default()
        };
        let lab = ChainLab::new(cfg.clone()).context("chain lab")?;
        let dir = std::env::temp_dir().join(format!("eo-rig-{}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("agent.yaml");
        std::fs::write(&conf, agent_config(&cfg, &hop1, &hop2))?;
        Ok(Self { lab, cfg, client_cg, _hops: [hop1, hop2], conf, dir })
    }

    /// Agent arguments for this lab (no Kubernetes source).
    pub fn agent_args(&self) -> Vec<String> {
        vec!["--config".into(), self.conf.display().to_string(), "--kube".into(), "false".into()]
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the client loops request.
#[derive(Debug, Clone)]
pub enum Request {
    Chain(String),
    Direct(std::net::Ipv4Addr),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Special {
    None,
    LoseEvents,
    AgentDown,
}

/// A fault injected into the lab at the start of a phase.
type Fault = Box<dyn Fn(&ChainLab) -> anyhow::Result<()>>;

struct PhaseSpec {
    name: &'static str,
    fault: Fault,
    request: Option<Request>,
    special: Special,
    expect: Vec<Expected>,
}

fn exp(alert: &str, pairs: &[(&str, &str)]) -> Expected {
    Expected { alert: alert.into(), labels: labels(pairs) }
}

/// Metric names worth recording: those the rule file mentions.
pub fn rule_metric_filter(rules_text: &str) -> impl Fn(&str) -> bool + '_ {
    move |name: &str| {
        name.starts_with("egress_")
            && rules_text.match_indices(name).any(|(i, _)| {
                !rules_text[i + name.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            })
    }
}

/// A burst of `n` loopback connects (the agent sees every namespace).
fn loopback_burst(n: usize) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let acceptor = std::thread::spawn(move || {
        for _ in 0..n {
            if l.accept().is_err() {
                break;
            }
        }
    });
    for _ in 0..n {
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?);
    }
    acceptor.join().map_err(|_| anyhow::anyhow!("acceptor panicked"))?;
    Ok(())
}

/// One client loop: requests `current` (none: idle) through the lab until
/// `stop` (bounded: 15 minutes), each client moved into `client_cg` first.
pub fn client_loop(
    lab: &ChainLab,
    client_cg: &TestCgroup,
    cfg: &ChainLabConfig,
    current: &Mutex<Option<Request>>,
    stop: &AtomicBool,
) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let req = current.lock().map(|c| c.clone()).unwrap_or(None);
        let Some(req) = req else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let args = match &req {
            Request::Chain(host) => lab.curl_via_chain_args(host, "/"),
            Request::Direct(ip) => lab.curl_direct_args(*ip, "/"),
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = || -> anyhow::Result<()> {
            let gated = lab.spawn_client_gated(&refs)?;
            client_cg.enter(gated.pid())?;
            let mut child = gated.release()?;
            wait_output(&mut child, cfg.client_timeout + Duration::from_secs(5))?;
            Ok(())
        };
        if let Err(e) = run() {
            eprintln!("lab client: {e:#}");
        }
        std::thread::sleep(PACE);
    }
}

/// Print flows that did not come from the lab's clients or hops (another
/// process on this host): they land in the recording too.
fn report_foreign(agent: &mut Agent) {
    agent.poll();
    for r in agent
        .records
        .iter()
        .filter(|r| r["record"] != "chain" && r["hop"] == "direct" && r["unit"].is_null())
    {
        eprintln!("alert lab: direct flow of no unit (not the lab's): {r}");
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the PID of the agent child this run started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Run every phase on a fresh lab and record. `rules_text` selects the
/// metric names to keep.
pub fn record(rules_text: &str, verbose: bool) -> anyhow::Result<Recording> {
    let rig = Rig::new(961)?;
    let (lab, cfg, client_cg) = (&rig.lab, &rig.cfg, &rig.client_cg);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // 64 KiB ring: small enough that the burst of the losing-events phase overflows it.
    let mut extra = rig.agent_args();
    extra.extend(["--ring-bytes".to_string(), "65536".to_string()]);
    let mut agent = Some(Agent::start(AgentMode::Run { metrics, extra })?);
    let agent_pid = agent.as_ref().map_or(0, Agent::pid);
    let unit = client_cg.unit.clone();

    let healthy = Request::Chain(cfg.healthy.name.clone());
    let none = |_: &ChainLab| Ok(());
    let phases: Vec<PhaseSpec> = vec![
        PhaseSpec {
            name: "healthy",
            fault: Box::new(none),
            request: Some(healthy.clone()),
            special: Special::None,
            expect: vec![],
        },
        PhaseSpec {
            name: "hop1 down (Squid pod stopped)",
            fault: Box::new(|l| l.hop1_down()),
            request: Some(healthy.clone()),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "gke-squid")])],
        },
        PhaseSpec {
            name: "hop2 down (VM Squid stopped)",
            fault: Box::new(|l| l.hop2_down()),
            request: Some(healthy.clone()),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "gce-proxy")])],
        },
        PhaseSpec {
            name: "hop1 ACL deny (403)",
            fault: Box::new(none),
            request: Some(Request::Chain(cfg.denied_at_hop1.clone())),
            special: Special::None,
            expect: vec![exp("EgressProxyDenialsRising", &[("hop", "gke-squid")])],
        },
        PhaseSpec {
            name: "hop2 ACL deny (403)",
            fault: Box::new(none),
            request: Some(Request::Chain(cfg.denied_at_hop2.clone())),
            special: Special::None,
            expect: vec![exp("EgressProxyDenialsRising", &[("hop", "gce-proxy")])],
        },
        PhaseSpec {
            name: "origin refuses",
            fault: Box::new(none),
            request: Some(Request::Chain(cfg.refused.name.clone())),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "internet")])],
        },
        PhaseSpec {
            name: "NAT blackholed (SYNs unanswered)",
            fault: Box::new(|l| l.nat_blackhole()),
            request: Some(healthy.clone()),
            special: Special::None,
            expect: vec![
                exp("EgressHopDown", &[("hop", "internet")]),
                exp("EgressConnectTimeoutsPublic", &[("hop", "internet")]),
            ],
        },
        PhaseSpec {
            name: "proxy bypass (direct, dropped)",
            fault: Box::new(|l| l.set_direct_egress(DirectEgress::Drop)),
            request: Some(Request::Direct(cfg.healthy.ip)),
            special: Special::None,
            expect: vec![exp("EgressProxyBypass", &[("workload", &unit)])],
        },
        PhaseSpec {
            name: "lossy client link (every 7th packet lost)",
            fault: Box::new(|l| l.lossy_link(LabLink::AppNode, 1.0 / 7.0)),
            request: Some(healthy.clone()),
            special: Special::None,
            expect: vec![exp("EgressRetransmitsHigh", &[("instance", INSTANCE)])],
        },
        PhaseSpec {
            name: "agent losing events (ring full)",
            fault: Box::new(none),
            request: Some(healthy.clone()),
            special: Special::LoseEvents,
            expect: vec![exp(
                "EgressAgentLosingEvents",
                &[("instance", INSTANCE), ("stage", "ring")],
            )],
        },
        PhaseSpec {
            name: "agent down",
            fault: Box::new(none),
            request: Some(healthy),
            special: Special::AgentDown,
            expect: vec![exp("EgressAgentDown", &[("instance", INSTANCE), ("job", JOB)])],
        },
    ];

    let current: Arc<Mutex<Option<Request>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let keep = rule_metric_filter(rules_text);
    let mut rec = Recording::new(JOB, INSTANCE);
    let t0 = Instant::now();
    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        for _ in 0..WORKERS {
            let (current, stop) = (current.clone(), stop.clone());
            s.spawn(move || client_loop(lab, client_cg, cfg, &current, &stop));
        }
        let mut run = || -> anyhow::Result<()> {
            for p in &phases {
                *current.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = None;
                // Squid #1 restarts at every restore; on a loaded machine its
                // start can outlast the lab's 10 s wait: one more try.
                if let Err(e) = lab.restore() {
                    eprintln!("alert lab: restore failed, retrying once: {e:#}");
                    lab.restore()?;
                }
                lab.hop_up(Hop::One)?;
                lab.hop_up(Hop::Two)?;
                (p.fault)(lab)?;
                if p.special == Special::AgentDown
                    && let Some(mut a) = agent.take()
                {
                    if verbose {
                        report_foreign(&mut a);
                    }
                    a.stop()?;
                }
                *current.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = p.request.clone();
                let start = rec.samples.len();
                let mut next = Instant::now();
                for _ in 0..PHASE_SAMPLES {
                    next += SCRAPE_EVERY;
                    if p.special == Special::LoseEvents {
                        signal(agent_pid, libc::SIGSTOP);
                        let burst = loopback_burst(600);
                        signal(agent_pid, libc::SIGCONT);
                        burst?;
                        next = next.max(Instant::now() + Duration::from_millis(500));
                    }
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    let scrape = http_get(metrics, "/metrics").ok();
                    rec.push(scrape.as_deref(), t0.elapsed().as_secs_f64(), &keep);
                }
                let end = rec.samples.len();
                let checks = if start == 0 { vec![end / 2, end - 1] } else { vec![end - 1] };
                if verbose {
                    eprintln!(
                        "alert lab: {:<34} samples {start}..{end} ({:.0} s real)",
                        p.name,
                        t0.elapsed().as_secs_f64()
                    );
                }
                rec.phases.push(Phase {
                    name: p.name.into(),
                    start,
                    end,
                    expect: p.expect.clone(),
                    checks,
                });
            }
            Ok(())
        };
        let r = run();
        stop.store(true, Ordering::Relaxed);
        r
    });
    if let Some(mut a) = agent.take() {
        signal(agent_pid, libc::SIGCONT);
        if verbose {
            report_foreign(&mut a);
        }
        let _ = a.stop();
    }
    lab.restore()?;
    result.map(|()| rec)
}
