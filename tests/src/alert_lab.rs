//! The alert rules against recorded reality: the chain lab (real Squids,
//! DNAT, NAT, origins) with the real agent, traffic flowing, one fault per
//! phase, `/metrics` scraped every [`SCRAPE_EVERY`]. The result is a
//! [`Recording`] whose phases say which alerts each fault must fire (and that
//! healthy traffic fires none); `prom::Recording::promtool_test` turns it into
//! a `promtool test rules` file.
//!
//! The clients are [`TENANTS`] workloads (systemd units, each its own
//! cgroup), two client loops each. Phases, in order (each [`PHASE_SAMPLES`]
//! scrapes; the lab is restored between them): healthy; hop 1 down; hop 2
//! down; hop 2 down with one client workload only (hop-side evidence: hop 1's
//! own upstream legs); hop 1 ACL deny; hop 2 ACL deny; one tenant's
//! forbidden targets (the others healthy); one tenant's broken resolver
//! (its lookups of the proxy's name go to a dead server); origin refuses;
//! one tenant's dead origin; NAT blackholed (the Cloud NAT exhaustion
//! signature: SYNs to public addresses unanswered); proxy bypass (direct,
//! dropped); lossy client link (every 5th TCP packet lost); agent losing
//! events (the agent is SIGSTOPped while a burst of 8000 loopback connects
//! overflows its 1 MiB ring, then SIGCONTed, every scrape); agent down
//! (SIGTERM, scrapes refused). The one-tenant phases must fire nothing.
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
/// Client workloads (units), each its own cgroup.
pub const TENANTS: usize = 3;
/// Client loops running requests concurrently (tenant = loop % TENANTS).
const WORKERS: usize = 6;
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
    /// The client workloads' cgroups (`client_cg` is the first).
    pub client_cg: TestCgroup,
    pub other_tenants: [TestCgroup; TENANTS - 1],
    _hops: [TestCgroup; 2],
    pub conf: PathBuf,
    /// A resolv.conf naming a server that does not answer (one tenant's
    /// broken resolver).
    pub bad_resolv_conf: PathBuf,
    dir: PathBuf,
}

impl Rig {
    /// `seed` picks the cgroup names (distinct per test).
    pub fn new(seed: u64) -> anyhow::Result<Self> {
        let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, seed)?;
        let hop2 = TestCgroup::new(Layout::Unit, seed + 1)?;
        let client_cg = TestCgroup::new(Layout::Unit, seed + 2)?;
        let other_tenants =
            [TestCgroup::new(Layout::Unit, seed + 3)?, TestCgroup::new(Layout::Unit, seed + 4)?];
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
        // The node's address on the resolver link: nothing listens on port 53
        // there, so lookups fail at once (ICMP port unreachable).
        let bad_resolv_conf = dir.join("bad-resolv.conf");
        std::fs::write(
            &bad_resolv_conf,
            format!("nameserver {}\noptions timeout:1 attempts:1\n", cfg.dns_gw),
        )?;
        Ok(Self {
            lab,
            cfg,
            client_cg,
            other_tenants,
            _hops: [hop1, hop2],
            conf,
            bad_resolv_conf,
            dir,
        })
    }

    /// The client workloads' cgroups, tenant 0 first.
    pub fn tenants(&self) -> [&TestCgroup; TENANTS] {
        [&self.client_cg, &self.other_tenants[0], &self.other_tenants[1]]
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
    /// Through the chain with the proxy given by name, resolved with this
    /// resolv.conf (bind-mounted over the client's own).
    ChainResolvedWith {
        host: String,
        resolv_conf: PathBuf,
    },
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
    /// What each tenant requests (none: idle).
    requests: [Option<Request>; TENANTS],
    special: Special,
    expect: Vec<Expected>,
}

/// Every tenant requests `r`.
fn all(r: &Request) -> [Option<Request>; TENANTS] {
    std::array::from_fn(|_| Some(r.clone()))
}

/// Tenant 0 requests `one`, the others `rest`.
fn one(one: &Request, rest: Option<&Request>) -> [Option<Request>; TENANTS] {
    std::array::from_fn(|i| if i == 0 { Some(one.clone()) } else { rest.cloned() })
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

/// Connects of the losing phase's burst: about 3 ring records each, over
/// three times what the default ring holds.
const BURST: usize = 8000;

/// A burst of `n` loopback connects (the agent sees every namespace), each
/// closed with a reset (SO_LINGER 0): no TIME_WAIT, so 13 bursts do not use up
/// the ephemeral ports.
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
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt on the fd `s` owns, with a valid `linger` of its size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::from_ref(&linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(s);
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
            Request::ChainResolvedWith { host, resolv_conf } => {
                // Its own mount namespace: only this client's resolver changes.
                let mut a: Vec<String> = [
                    "unshare",
                    "-m",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                a.push(resolv_conf.display().to_string());
                a.extend(lab.curl_via_name_args(host, "/"));
                a
            }
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
    let (lab, cfg, tenants) = (&rig.lab, &rig.cfg, rig.tenants());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // The default ring (1 MiB): a burst of another process on this shared
    // host (the agent sees every connect) does not overflow it, the losing
    // phase's burst of BURST connects with the agent stopped does.
    let extra = rig.agent_args();
    let mut agent = Some(Agent::start(AgentMode::Run { metrics, extra })?);
    let agent_pid = agent.as_ref().map_or(0, Agent::pid);
    // As the metrics label them: a run of 3+ digits (the pid in
    // `eo-test-PID-wSEED.service`) is `*` (egress-agent's sinks::unit_label).
    let pid = std::process::id();
    let units: Vec<String> = tenants
        .iter()
        .map(|t| {
            if pid >= 100 { t.unit.replacen(&format!("-{pid}-"), "-*-", 1) } else { t.unit.clone() }
        })
        .collect();

    let healthy = Request::Chain(cfg.healthy.name.clone());
    let h = &healthy;
    let none = |_: &ChainLab| Ok(());
    let denied1 = Request::Chain(cfg.denied_at_hop1.clone());
    let denied2 = Request::Chain(cfg.denied_at_hop2.clone());
    let refused = Request::Chain(cfg.refused.name.clone());
    let bad_resolver = Request::ChainResolvedWith {
        host: cfg.healthy.name.clone(),
        resolv_conf: rig.bad_resolv_conf.clone(),
    };
    let phases: Vec<PhaseSpec> = vec![
        PhaseSpec {
            name: "healthy",
            fault: Box::new(none),
            requests: all(h),
            special: Special::None,
            expect: vec![],
        },
        PhaseSpec {
            name: "hop1 down (Squid pod stopped)",
            fault: Box::new(|l| l.hop1_down()),
            requests: all(h),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "gke-squid")])],
        },
        PhaseSpec {
            name: "hop2 down (VM Squid stopped)",
            fault: Box::new(|l| l.hop2_down()),
            requests: all(h),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "gce-proxy")])],
        },
        PhaseSpec {
            name: "hop2 down, one client workload",
            fault: Box::new(|l| l.hop2_down()),
            requests: one(h, None),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "gce-proxy")])],
        },
        PhaseSpec {
            name: "hop1 ACL deny (403)",
            fault: Box::new(none),
            requests: all(&denied1),
            special: Special::None,
            expect: vec![exp("EgressProxyDenialsRising", &[("hop", "gke-squid")])],
        },
        PhaseSpec {
            name: "hop2 ACL deny (403)",
            fault: Box::new(none),
            requests: all(&denied2),
            special: Special::None,
            expect: vec![exp("EgressProxyDenialsRising", &[("hop", "gce-proxy")])],
        },
        PhaseSpec {
            name: "one tenant's forbidden targets (403)",
            fault: Box::new(none),
            requests: one(&denied1, Some(h)),
            special: Special::None,
            expect: vec![],
        },
        PhaseSpec {
            name: "one tenant's broken resolver",
            fault: Box::new(none),
            requests: one(&bad_resolver, Some(h)),
            special: Special::None,
            expect: vec![],
        },
        PhaseSpec {
            name: "origin refuses",
            fault: Box::new(none),
            requests: all(&refused),
            special: Special::None,
            expect: vec![exp("EgressHopDown", &[("hop", "internet")])],
        },
        PhaseSpec {
            name: "one tenant's dead origin",
            fault: Box::new(none),
            requests: one(&refused, Some(h)),
            special: Special::None,
            expect: vec![],
        },
        PhaseSpec {
            name: "NAT blackholed (SYNs unanswered)",
            fault: Box::new(|l| l.nat_blackhole()),
            requests: all(h),
            special: Special::None,
            expect: vec![
                exp("EgressHopDown", &[("hop", "internet")]),
                exp("EgressConnectTimeoutsPublic", &[("hop", "internet")]),
            ],
        },
        PhaseSpec {
            name: "proxy bypass (direct, dropped)",
            fault: Box::new(|l| l.set_direct_egress(DirectEgress::Drop)),
            requests: all(&Request::Direct(cfg.healthy.ip)),
            special: Special::None,
            expect: units.iter().map(|u| exp("EgressProxyBypass", &[("workload", u)])).collect(),
        },
        PhaseSpec {
            name: "lossy client link (every 5th packet lost)",
            fault: Box::new(|l| l.lossy_link(LabLink::AppNode, 1.0 / 5.0)),
            requests: all(h),
            special: Special::None,
            expect: vec![exp("EgressRetransmitsHigh", &[("instance", INSTANCE)])],
        },
        PhaseSpec {
            name: "agent losing events (ring full)",
            fault: Box::new(none),
            requests: all(h),
            special: Special::LoseEvents,
            expect: vec![exp(
                "EgressAgentLosingEvents",
                &[("instance", INSTANCE), ("stage", "ring")],
            )],
        },
        PhaseSpec {
            name: "agent down",
            fault: Box::new(none),
            requests: all(h),
            special: Special::AgentDown,
            expect: vec![exp("EgressAgentDown", &[("instance", INSTANCE), ("job", JOB)])],
        },
    ];

    // What each tenant's loops request now.
    let current: [Arc<Mutex<Option<Request>>>; TENANTS] =
        std::array::from_fn(|_| Arc::new(Mutex::new(None)));
    let stop = Arc::new(AtomicBool::new(false));
    let keep = rule_metric_filter(rules_text);
    let mut rec = Recording::new(JOB, INSTANCE);
    let t0 = Instant::now();
    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        for w in 0..WORKERS {
            let (current, stop) = (current[w % TENANTS].clone(), stop.clone());
            let cg = tenants[w % TENANTS];
            s.spawn(move || client_loop(lab, cg, cfg, &current, &stop));
        }
        let set = |requests: &[Option<Request>; TENANTS]| -> anyhow::Result<()> {
            for (c, r) in current.iter().zip(requests) {
                *c.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = r.clone();
            }
            Ok(())
        };
        let mut run = || -> anyhow::Result<()> {
            for p in &phases {
                set(&std::array::from_fn(|_| None))?;
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
                set(&p.requests)?;
                let start = rec.samples.len();
                let mut next = Instant::now();
                for _ in 0..PHASE_SAMPLES {
                    next += SCRAPE_EVERY;
                    if p.special == Special::LoseEvents {
                        signal(agent_pid, libc::SIGSTOP);
                        let burst = loopback_burst(BURST);
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
