//! `cargo xtask bench`: the cost of observing, measured against not
//! observing and against a bpftrace counter, alternating A/B in one run so
//! that other load on the machine hits every mode alike.
//!
//! Every trial that loads eBPF (and the no-tracing baseline, so that no other
//! helper's kernel test runs under it) holds `/tmp/egress-kernel.lock`.
pub mod procfs;
pub mod report;
pub mod storm;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::agent::{Agent, AgentMode, free_port, metric_sum};

pub use report::{Report, Stats};

/// The reference peer: counts the same two tracepoints in the kernel, nothing more.
pub const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state { @set_state = count(); } tracepoint:tcp:tcp_retransmit_skb { @retransmit = count(); }";

pub use crate::kernel_lock::{KERNEL_LOCK, KernelLock};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A/B/C rounds (each: no tracing, agent, bpftrace, in rotating order).
    pub rounds: usize,
    pub storm: Duration,
    pub threads: usize,
    /// Connections held open at once for the memory measurement (0: skip).
    pub hold: usize,
    /// Extra arguments of `egress-agent run`.
    pub agent_args: Vec<String>,
    /// Further arguments of the variant agent ([`Mode::AgentAlt`]).
    pub alt_agent_args: Vec<String>,
    /// Another build of the agent for the variant (e.g. before a change).
    pub alt_agent_bin: Option<std::path::PathBuf>,
    /// Modes to run (all three for the table; one alone to profile it).
    pub modes: Vec<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    None,
    Agent,
    Bpftrace,
    /// The agent with `--alt-agent-arg`s on top, or another build of it
    /// (`--alt-agent-bin`): a feature's or a change's cost, A/B in one run.
    AgentAlt,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "no tracing",
            Mode::Agent => "egress-agent run",
            Mode::Bpftrace => "bpftrace counter",
            Mode::AgentAlt => "agent, alt (see command)",
        }
    }
}

/// The agent's own view of a storm: counters from /metrics and /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentSample {
    pub produced: f64,
    pub delivered: f64,
    pub lost_ring: f64,
    pub lost_other: f64,
    pub decode_errors: f64,
    pub cpu_s: f64,
    pub peak_rss: u64,
}

impl AgentSample {
    fn read(agent: &Agent) -> anyhow::Result<Self> {
        let m = agent.http_get("/metrics")?;
        let (_, peak_rss) = procfs::memory(agent.pid())?;
        Ok(Self {
            produced: metric_sum(&m, "egress_events_produced_total", &[]),
            delivered: metric_sum(&m, "egress_events_delivered_total", &[]),
            lost_ring: metric_sum(&m, "egress_events_lost_total", &[("stage", "ring")]),
            lost_other: metric_sum(&m, "egress_events_lost_total", &[])
                - metric_sum(&m, "egress_events_lost_total", &[("stage", "ring")]),
            decode_errors: metric_sum(&m, "egress_decode_errors_total", &[]),
            cpu_s: procfs::cpu_seconds(agent.pid())?,
            peak_rss,
        })
    }

    fn minus(self, b: Self) -> Self {
        Self {
            produced: self.produced - b.produced,
            delivered: self.delivered - b.delivered,
            lost_ring: self.lost_ring - b.lost_ring,
            lost_other: self.lost_other - b.lost_other,
            decode_errors: self.decode_errors - b.decode_errors,
            cpu_s: self.cpu_s - b.cpu_s,
            peak_rss: self.peak_rss,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Trial {
    pub mode: Mode,
    pub round: usize,
    pub rate: f64,
    pub errors: u64,
    pub agent: Option<AgentSample>,
    /// Events bpftrace counted (set_state + retransmit).
    pub bpftrace_events: Option<u64>,
}

/// Memory with many tracked sockets held open.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoldResult {
    pub sockets: usize,
    pub tracked: f64,
    pub rss_held: u64,
    pub peak_rss: u64,
    pub rss_released: u64,
    pub tracked_after: f64,
    /// Events during the hold (opening and releasing).
    pub events: AgentSample,
}

fn agent_mode(opts: &BenchOptions, alt: bool) -> anyhow::Result<AgentMode> {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut extra = opts.agent_args.clone();
    if alt {
        extra.extend(opts.alt_agent_args.iter().cloned());
    }
    Ok(AgentMode::Daemon { metrics, extra })
}

/// Wait until the agent has taken in everything the kernel produced
/// (produced = delivered + lost), at most `within`.
fn quiesce(agent: &Agent, within: Duration) -> anyhow::Result<AgentSample> {
    let deadline = Instant::now() + within;
    loop {
        let s = AgentSample::read(agent)?;
        if s.produced <= s.delivered + s.lost_ring + s.decode_errors || Instant::now() > deadline {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Bpftrace {
    child: Child,
    lines: Receiver<String>,
}

impl Bpftrace {
    fn start() -> anyhow::Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning bpftrace (cargo xtask setup installs it)")?;
        let out = child.stdout.take().context("bpftrace stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Self { child, lines };
        match b.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.starts_with("Attaching") => {}
            other => {
                let _ = b.child.kill();
                let _ = b.child.wait();
                bail!("bpftrace did not attach: {other:?}");
            }
        }
        // "Attaching" is printed before the probes are live: give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Ok(b)
    }

    /// SIGINT, then the sum of the counts it prints on exit.
    fn stop(mut self) -> anyhow::Result<u64> {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut total = 0;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    total += l
                        .split_once(": ")
                        .and_then(|(k, v)| {
                            k.starts_with('@').then(|| v.trim().parse::<u64>().ok())?
                        })
                        .unwrap_or(0)
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        Ok(total)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One storm under one mode, the kernel lock held throughout.
fn trial(mode: Mode, round: usize, addr: SocketAddr, opts: &BenchOptions) -> anyhow::Result<Trial> {
    let _lock = KernelLock::take()?;
    let mut t = Trial { mode, round, rate: 0.0, errors: 0, agent: None, bpftrace_events: None };
    match mode {
        Mode::None => {
            let r = storm::storm(addr, opts.threads, opts.storm)?;
            (t.rate, t.errors) = (r.rate(), r.errors);
        }
        Mode::Bpftrace => {
            let b = Bpftrace::start()?;
            let r = storm::storm(addr, opts.threads, opts.storm)?;
            (t.rate, t.errors) = (r.rate(), r.errors);
            t.bpftrace_events = Some(b.stop()?);
        }
        Mode::Agent | Mode::AgentAlt => {
            let alt = mode == Mode::AgentAlt;
            let agent = match opts.alt_agent_bin.as_ref().filter(|_| alt) {
                // The harness appends its agent binary and the arguments:
                // drop the former, exec the other build with the latter.
                Some(bin) => Agent::start_wrapped(
                    &[
                        "sh".into(),
                        "-c".into(),
                        "shift; exec \"$0\" \"$@\"".into(),
                        bin.to_string_lossy().into(),
                    ],
                    agent_mode(opts, alt)?,
                )?,
                None => Agent::start(agent_mode(opts, alt)?)?,
            };
            let before = AgentSample::read(&agent)?;
            let r = storm::storm(addr, opts.threads, opts.storm)?;
            (t.rate, t.errors) = (r.rate(), r.errors);
            let after = quiesce(&agent, Duration::from_secs(10))?;
            t.agent = Some(after.minus(before));
            if !agent.stop()? {
                bail!("agent exited with an error");
            }
        }
    }
    Ok(t)
}

/// The storm rounds: every mode once per round, order rotated each round.
pub fn storms(opts: &BenchOptions, progress: impl Fn(&Trial)) -> anyhow::Result<Vec<Trial>> {
    let listeners = storm::Listeners::start(1)?;
    let addr = listeners.addrs[0];
    // Warm-up (caches, listener backlog, page cache of the binaries).
    storm::storm(addr, opts.threads, Duration::from_secs(1))?;
    let modes = &opts.modes;
    let mut trials = Vec::new();
    for round in 0..opts.rounds {
        for k in 0..modes.len() {
            let t = trial(modes[(round + k) % modes.len()], round, addr, opts)?;
            progress(&t);
            trials.push(t);
        }
    }
    listeners.stop();
    Ok(trials)
}

/// Agent memory with `opts.hold` tracked connections open at once, then
/// released. The connections are held by worker processes (`worker`: this
/// program re-run with arguments that call [`storm::hold_worker`]), since
/// one process may not hold that many fds here; the listeners never accept.
pub fn hold(
    opts: &BenchOptions,
    worker: &dyn Fn(&[SocketAddr], usize) -> Command,
) -> anyhow::Result<HoldResult> {
    let n = opts.hold;
    let _lock = KernelLock::take()?;
    let agent = Agent::start(agent_mode(opts, false)?)?;
    let before = AgentSample::read(&agent)?;
    let tracked = |a: &Agent| -> anyhow::Result<f64> {
        Ok(metric_sum(&a.http_get("/metrics")?, "egress_flows_tracked", &[]))
    };
    // Accept queues of 4096 (somaxconn) each, with room to spare.
    let listeners = storm::queue_listeners(n.div_ceil(3000).max(1))?;
    let addrs: Vec<SocketAddr> =
        listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let mut workers = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(storm::PER_PROCESS);
        left -= k;
        let mut c = worker(&addrs, k);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning a hold worker")?;
        let out = child.stdout.take().context("worker stdout")?;
        workers.push((child, BufReader::new(out)));
    }
    let mut opened = 0;
    for (child, out) in &mut workers {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let Some(k) = line.trim().strip_prefix("held ").and_then(|v| v.parse::<usize>().ok())
        else {
            let _ = child.kill();
            bail!("hold worker failed: {line:?}");
        };
        opened += k;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = tracked(&agent)?;
    while seen < opened as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = tracked(&agent)?;
    }
    let (rss_held, _) = procfs::memory(agent.pid())?;
    for (mut child, _) in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    drop(listeners);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = tracked(&agent)?;
    while after > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = tracked(&agent)?;
    }
    let (rss_released, peak_rss) = procfs::memory(agent.pid())?;
    let events = quiesce(&agent, Duration::from_secs(10))?.minus(before);
    if !agent.stop()? {
        bail!("agent exited with an error");
    }
    Ok(HoldResult {
        sockets: opened,
        tracked: seen,
        rss_held,
        peak_rss,
        rss_released,
        tracked_after: after,
        events,
    })
}
