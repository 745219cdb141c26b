//! `cargo xtask bench`: the cost of observing, measured against not
//! observing and against a bpftrace counter, alternating A/B in one run so
//! that other load on the machine hits every mode alike.
//!
//! Every trial that loads eBPF (and the no-tracing baseline, so that no other
//! helper's kernel test runs under it) holds `/tmp/egress-kernel.lock`.
pub mod bpfstats;
pub mod load;
pub mod procfs;
pub mod report;
pub mod storm;

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::agent::{Agent, AgentMode, free_port, metric_sum};

pub use report::{Report, Stats};
pub use storm::StormResult;

/// The reference peer: counts the same two tracepoints in the kernel, nothing more.
pub const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state { @set_state = count(); } tracepoint:tcp:tcp_retransmit_skb { @retransmit = count(); }";

pub use crate::kernel_lock::{KERNEL_LOCK, KernelLock};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A/B/C rounds (each: no tracing, agent, bpftrace, in rotating order).
    pub rounds: usize,
    pub storm: Duration,
    pub threads: usize,
    /// After each traced storm, a storm this long with the kernel's
    /// per-program run-time accounting on (zero: none).
    pub cost_window: Duration,
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

/// What the tracer's kernel programs ran during a cost window.
#[derive(Debug, Clone, Default)]
pub struct KernelCost {
    /// Connections the window's storm made.
    pub connects: u64,
    /// Per program: (name, run time ns, runs), busiest first.
    pub programs: Vec<(String, u64, u64)>,
}

impl KernelCost {
    /// Program CPU per connection, µs.
    pub fn us_per_connect(&self) -> f64 {
        self.programs.iter().map(|p| p.1).sum::<u64>() as f64 / self.connects.max(1) as f64 / 1e3
    }
}

#[derive(Debug, Clone)]
pub struct Trial {
    pub mode: Mode,
    pub round: usize,
    pub rate: f64,
    pub errors: u64,
    /// The throughput storm itself (rate, its threads' CPU).
    pub storm: StormResult,
    pub agent: Option<AgentSample>,
    /// Events bpftrace counted (set_state + retransmit).
    pub bpftrace_events: Option<u64>,
    /// The tracer's kernel programs, from a window after the throughput storm.
    pub kernel: Option<KernelCost>,
}

impl Trial {
    /// The agent's user+sys CPU per connection of the storm, µs.
    pub fn agent_us_per_connect(&self) -> Option<f64> {
        self.agent.map(|a| a.cpu_s / self.storm.connects.max(1) as f64 * 1e6)
    }
}

/// A storm of `opts.cost_window` with run-time accounting on, counting what
/// the programs of process `pid` ran.
fn kernel_cost(
    pid: u32,
    listener: &TcpListener,
    opts: &BenchOptions,
) -> anyhow::Result<Option<KernelCost>> {
    if opts.cost_window.is_zero() {
        return Ok(None);
    }
    let window = bpfstats::StatsWindow::enable()?;
    let before = bpfstats::snapshot(pid)?;
    let r = storm::storm(listener, opts.threads, opts.cost_window)?;
    let after = bpfstats::snapshot(pid)?;
    drop(window);
    Ok(Some(KernelCost { connects: r.connects, programs: bpfstats::delta(&before, &after) }))
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
    fn pid(&self) -> u32 {
        self.child.id()
    }

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

/// One storm under one mode, the kernel lock held throughout; for a
/// tracer, then a cost window.
fn trial(
    mode: Mode,
    round: usize,
    listener: &TcpListener,
    opts: &BenchOptions,
) -> anyhow::Result<Trial> {
    let _lock = KernelLock::take()?;
    let storm = || storm::storm(listener, opts.threads, opts.storm);
    let mut t = Trial {
        mode,
        round,
        rate: 0.0,
        errors: 0,
        storm: StormResult::default(),
        agent: None,
        bpftrace_events: None,
        kernel: None,
    };
    match mode {
        Mode::None => t.storm = storm()?,
        Mode::Bpftrace => {
            let b = Bpftrace::start()?;
            t.storm = storm()?;
            t.kernel = kernel_cost(b.pid(), listener, opts)?;
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
            t.storm = storm()?;
            let after = quiesce(&agent, Duration::from_secs(10))?;
            t.agent = Some(after.minus(before));
            t.kernel = kernel_cost(agent.pid(), listener, opts)?;
            if !agent.stop()? {
                bail!("agent exited with an error");
            }
        }
    }
    (t.rate, t.errors) = (t.storm.rate(), t.storm.errors);
    Ok(t)
}

/// The storm rounds: every mode once per round, order rotated each round.
pub fn storms(opts: &BenchOptions, progress: impl Fn(&Trial)) -> anyhow::Result<Vec<Trial>> {
    let listener = storm::storm_listener()?;
    // Warm-up (caches, listener backlog, page cache of the binaries).
    storm::storm(&listener, opts.threads, Duration::from_secs(1))?;
    let modes = &opts.modes;
    let mut trials = Vec::new();
    for round in 0..opts.rounds {
        for k in 0..modes.len() {
            let t = trial(modes[(round + k) % modes.len()], round, &listener, opts)?;
            progress(&t);
            trials.push(t);
        }
    }
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
        // Active opens the kernel holds state for (the agent's own flow
        // table holds only flows to proxies).
        Ok(metric_sum(&a.http_get("/metrics")?, "egress_kernel_flows_tracked", &[]))
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

/// The agent at the realistic node load ([`load`]).
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    pub counts: load::LoadCounts,
    /// The measured window (the workers' pacing time).
    pub window: Duration,
    /// Connections per second the workers made.
    pub rate: f64,
    /// The agent's user+sys over the window, in % of one core.
    pub agent_cpu_pct: f64,
    /// Its kernel programs' run time over the window, in % of one core.
    pub kernel_cpu_pct: f64,
    pub kernel: KernelCost,
    pub agent: AgentSample,
}

/// The realistic node load under the agent as deployed, run-time
/// accounting on for the window (at this rate its own cost is noise).
pub fn realistic_load(
    opts: &BenchOptions,
    lo: &load::LoadOptions,
    worker_cmd: &dyn Fn(usize, f64, f64) -> Vec<String>,
) -> anyhow::Result<LoadResult> {
    let _lock = KernelLock::take()?;
    let agent = Agent::start(agent_mode(opts, false)?)?;
    let (counts, _, (window, agent_sample, programs)) = load::run(lo, worker_cmd, |d| {
        let stats = bpfstats::StatsWindow::enable()?;
        let before = AgentSample::read(&agent)?;
        let progs = bpfstats::snapshot(agent.pid())?;
        let t0 = Instant::now();
        std::thread::sleep(d);
        let window = t0.elapsed();
        let after = AgentSample::read(&agent)?;
        let progs_after = bpfstats::snapshot(agent.pid())?;
        drop(stats);
        Ok((window, after.minus(before), bpfstats::delta(&progs, &progs_after)))
    })?;
    let settled = quiesce(&agent, Duration::from_secs(10))?;
    if !agent.stop()? {
        bail!("agent exited with an error");
    }
    let secs = window.as_secs_f64();
    let kernel = KernelCost { connects: counts.connects(), programs };
    let kernel_ns: u64 = kernel.programs.iter().map(|p| p.1).sum();
    Ok(LoadResult {
        counts,
        window,
        rate: counts.connects() as f64 / secs,
        agent_cpu_pct: agent_sample.cpu_s / secs * 100.0,
        kernel_cpu_pct: kernel_ns as f64 / 1e9 / secs * 100.0,
        kernel,
        agent: AgentSample {
            lost_ring: settled.lost_ring,
            lost_other: settled.lost_other,
            ..agent_sample
        },
    })
}
