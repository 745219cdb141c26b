//! The soak: the real agent, as deployed (`run` with the chain config,
//! Kubernetes metadata from the fake API server through a kubeconfig,
//! conntrack followed in the lab's NAT namespaces, the local API), under
//! everything a node does to it for a long time at once ([`drivers`]):
//! a few hundred connections a second through the chain lab (ok, failed,
//! DNS), pods added and removed, transient units, API clients attaching and
//! leaving, conntrack flushed, and agent restarts (SIGTERM, then a new
//! agent on the same port). Every `sample_every` it logs RSS, fds, tracked
//! flows, conntrack entries, metric series and label values, lost events
//! (DNS budget cuts apart: one tenant's flood, cut on purpose); at the end it fits
//! the samples after warm-up ([`report::judge`]) and lists the series that
//! appeared after warm-up, by metric.
//!
//! `cargo xtask soak --duration D` runs it (release agent); the CI form is
//! `tests/tests/soak.rs` (100 s, inside `cargo xtask test`).
pub mod drivers;
pub mod report;
mod sockets;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use self::{
    drivers::{NODE, Rates, Tallies, Tally},
    report::{Fit, Sample},
    sockets::{active_open_sockets, sockets_snapshot},
};
use crate::{
    Agent, AgentMode,
    agent::{free_port, metric_sum},
    bench::procfs,
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, SquidIdle, netns_path},
    fake_apiserver::{FakeApiServer, Kubeconfig, objects},
    faults::agent_config,
    image::TempDir,
    kernel_lock::KernelLock,
};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long the load runs (the drain comes after).
    pub duration: Duration,
    pub sample_every: Duration,
    /// After the last restart: samples before it are not fitted.
    pub warmup: Duration,
    /// When to restart the agent (since the start).
    pub restarts: Vec<Duration>,
    /// Traffic rate multiplier ([`Rates::scaled`]).
    pub rate: f64,
    pub pod_every: Duration,
    pub unit_every: Duration,
    pub api_every: Duration,
    pub flush_every: Duration,
    /// After the load stops, how long tracked flows may take to drain to
    /// the agent's own connections (the baseline before the load, plus
    /// [`DRAIN_SLACK`]). Longer than every timeout of the lab's flows
    /// (tunnels 25 s, the client's 10 s, Squid's idle connections).
    pub drain: Duration,
    /// Samples while draining.
    pub drain_every: Duration,
}

/// Tracked flows above the baseline that still count as drained (a scrape's
/// own connection, an API client's, a watch reconnecting).
pub const DRAIN_SLACK: f64 = 3.0;

impl SoakOptions {
    /// A soak of `minutes` (see [`Self::new`]).
    pub fn minutes(minutes: u64) -> Self {
        Self::new(Duration::from_secs(minutes * 60))
    }

    /// A soak of `duration` under load, then up to [`Self::drain`] without.
    /// Below 5 minutes (the CI form): samples every 10 s, one restart at a
    /// third, fitted from 30 s after it, drain within 45 s. Longer: samples
    /// every 30 s (every minute from 20 minutes), restarts at 1/12 and 1/6
    /// of the run, fitted from 2 minutes after the last (5 from 25
    /// minutes), drain within 2 minutes.
    pub fn new(duration: Duration) -> Self {
        let min = Duration::from_secs(60);
        let short = duration < 5 * min;
        let restarts = if short { vec![duration / 3] } else { vec![duration / 12, duration / 6] };
        Self {
            duration,
            sample_every: Duration::from_secs(if short {
                10
            } else if duration < 20 * min {
                30
            } else {
                60
            }),
            warmup: if short {
                Duration::from_secs(30)
            } else if duration < 25 * min {
                2 * min
            } else {
                5 * min
            },
            restarts,
            rate: 1.0,
            pod_every: Duration::from_secs(2),
            unit_every: Duration::from_secs(5),
            api_every: Duration::from_secs(3),
            flush_every: Duration::from_secs(if short { 30 } else { 60 }),
            drain: if short { Duration::from_secs(45) } else { 2 * min },
            drain_every: Duration::from_secs(5),
        }
    }
}

/// A restart: SIGTERM to exit, and the new agent's start to attached.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub at: Duration,
    pub stopped_in: Duration,
    pub clean_exit: bool,
    pub started_in: Duration,
}

pub struct SoakReport {
    pub options: SoakOptions,
    pub rates: Rates,
    pub samples: Vec<Sample>,
    /// Tracked flows of the first agent before any load: its own connections.
    pub baseline_tracked: f64,
    /// Samples after the load stopped (and how long after), until drained
    /// or [`SoakOptions::drain`].
    pub drain: Vec<(Duration, Sample)>,
    /// When they did not drain: the TCP sockets still open, per network
    /// namespace (`ss`), to tell flows still open from flows the agent
    /// missed the end of.
    pub open_sockets: String,
    /// How long after the load stopped the tracked flows were back at the
    /// baseline (+ [`DRAIN_SLACK`]); `None`: not within the drain time.
    pub drained_in: Option<Duration>,
    pub fit: Fit,
    pub failures: Vec<String>,
    /// Series present at the end but not at the end of warm-up, per metric.
    pub new_series: BTreeMap<String, Vec<String>>,
    /// (driver, attempts, as expected, otherwise)
    pub tallies: Vec<(&'static str, u64, u64, u64)>,
    pub restarts: Vec<Restart>,
    /// Sums at the end: (name, value), e.g. lost events, decode errors.
    pub totals: Vec<(String, f64)>,
}

/// One look at the agent: the sample and the series it exports.
fn look(agent: &Agent, at: Duration, run: u32) -> anyhow::Result<(Sample, Vec<String>)> {
    let pid = agent.pid();
    let (rss, _) = procfs::memory(pid)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let text = agent.http_get("/metrics")?;
    let series: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect();
    let sum = |name| metric_sum(&text, name, &[]);
    let dns_cut = metric_sum(&text, "egress_events_lost_total", &[("stage", "dns_budget")]);
    let sample = Sample {
        at,
        run,
        rss,
        fds,
        tracked: sum("egress_flows_tracked"),
        open: active_open_sockets(),
        conntrack: sum("egress_conntrack_entries"),
        series: series.len(),
        label_values: report::label_values(&series),
        lost: sum("egress_events_lost_total") - dns_cut,
        dns_cut,
        produced: sum("egress_events_produced_total"),
        connections: sum("egress_connections_total"),
        pods: metric_sum(&text, "egress_kube_objects", &[("resource", "pods")]),
    };
    Ok((sample, series))
}

fn row(s: &Sample) -> String {
    report::table(std::slice::from_ref(s)).lines().nth(2).unwrap_or_default().to_string()
}

/// Run the soak (holds the kernel lock throughout).
pub fn run(opts: &SoakOptions) -> anyhow::Result<SoakReport> {
    let _lock = KernelLock::take()?;
    let hop1 = TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 1901)?;
    let hop2 = TestCgroup::new(Layout::Unit, 1902)?;
    let cfg = ChainLabConfig {
        hop1_cgroup: Some(hop1.path().to_path_buf()),
        hop2_cgroup: Some(hop2.path().to_path_buf()),
        // Refused origins answer 503 through hop 2 all the time: Squid #1 must
        // not take that for a dead parent.
        peer_connect_fail_limit: 1_000_000,
        // Squid's idle connections and tunnels end within 40 s of the load
        // stopping (by default: 1 min, 2 min, 15 min), so the drain can
        // tell a flow the agent lost from one still open (measured: with the
        // defaults, 22 tunnels to the origin were still open a minute after
        // the load stopped; with these, in FIN-WAIT-1 for lack of NAT).
        squid_idle: Some(SquidIdle {
            pconn: Duration::from_secs(10),
            read: Duration::from_secs(40),
        }),
        // The conntrack flushes leave NATed connections without a mapping:
        // once closed, their FINs go unanswered. They end after 1 retry
        // (FIN-WAIT-2 after 10 s) instead of ≈100 s.
        orphan_linger: Some((1, 10)),
        ..ChainLabConfig::default()
    };
    let lab = Arc::new(ChainLab::new(cfg.clone()).context("chain lab")?);
    let api = Arc::new(FakeApiServer::with([
        objects::node(NODE, &cfg.node_gce_ip.to_string(), None),
        objects::service(
            "intra-proxy",
            "squid-proxy",
            &cfg.cluster_ip.to_string(),
            cfg.proxy_port,
            None,
        ),
        objects::endpoint_slice(
            "intra-proxy",
            "squid-proxy-x1",
            "squid-proxy",
            cfg.proxy_port,
            &[(&cfg.proxy_pod_ip.to_string(), None)],
        ),
    ]));
    let kubeconfig = Kubeconfig::write(api.addr);
    let tmp = TempDir::new("soak")?;
    let conf = tmp.path().join("agent.yaml");
    std::fs::write(&conf, agent_config(&cfg, &hop1, &hop2))?;
    let socket = tmp.path().join("api.sock");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let extra: Vec<String> = [
        "--config",
        &conf.display().to_string(),
        "--kube",
        "true",
        "--kubeconfig",
        &kubeconfig.0.display().to_string(),
        "--node-name",
        NODE,
        "--conntrack",
        "true",
        "--conntrack-netns",
        &netns_path(&lab.ns.node).display().to_string(),
        "--conntrack-netns",
        &netns_path(&lab.ns.nat).display().to_string(),
        "--api-socket",
        &socket.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let start_agent = || Agent::start(AgentMode::Daemon { metrics, extra: extra.clone() });
    let mut agent = start_agent().context("agent")?;
    // The agent's own connections (its watches on the API server) before
    // any load: what the tracked flows must come back to once it stops.
    std::thread::sleep(Duration::from_secs(3));
    let baseline_tracked = look(&agent, Duration::ZERO, 1).context("baseline sample")?.0.tracked;

    let rates = Rates::scaled(opts.rate);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tallies: Tallies = Vec::new();
    let threads = drivers::traffic(&lab, rates, &stop, &mut tallies)?;
    let mut side = Vec::new();
    let mut tally = |name: &'static str| {
        let t = Arc::new(Tally::default());
        tallies.push((name, t.clone()));
        t
    };
    side.push(drivers::pod_churn(
        lab.clone(),
        api,
        opts.pod_every,
        20,
        stop.clone(),
        tally("pods added (one request each)"),
    ));
    side.push(drivers::unit_churn(
        lab.clone(),
        opts.unit_every,
        stop.clone(),
        tally("transient units (one request each)"),
    ));
    side.push(drivers::api_clients(
        socket,
        opts.api_every,
        stop.clone(),
        tally("API clients (flows, watch)"),
    ));
    side.push(drivers::conntrack_flush(
        vec![lab.ns.node.name.clone(), lab.ns.nat.name.clone()],
        opts.flush_every,
        stop.clone(),
        tally("conntrack flushes"),
    ));

    let started = Instant::now();
    let last_restart = opts.restarts.iter().max().copied().unwrap_or_default();
    let warm = last_restart + opts.warmup;
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    let mut restarts = Vec::new();
    let mut pending: Vec<Duration> = opts.restarts.clone();
    pending.sort();
    pending.reverse();
    let (mut run, mut before, mut after) = (1u32, Vec::new(), Vec::new());
    eprintln!(
        "soak: {:?}, ≈{:.0} connections/s + {:.0} lookups/s, restarts at {:?}, fitted from {:?}\n{}",
        opts.duration,
        rates.connections_per_s(),
        rates.dns,
        opts.restarts,
        warm,
        report::TABLE_HEADER
    );
    let mut next = opts.sample_every;
    while started.elapsed() < opts.duration {
        if pending.last().is_some_and(|&r| started.elapsed() >= r) {
            pending.pop();
            let at = started.elapsed();
            let pid = agent.pid();
            let t = Instant::now();
            let clean_exit = agent.stop().unwrap_or(false);
            let stopped_in = t.elapsed();
            let t = Instant::now();
            agent = start_agent()
                .with_context(|| format!("agent restart at {at:?} (old pid {pid})"))?;
            run += 1;
            restarts.push(Restart { at, stopped_in, clean_exit, started_in: t.elapsed() });
            if !clean_exit {
                failures.push(format!("the agent did not exit 0 on SIGTERM at {at:?}"));
            }
            eprintln!(
                "soak: restart at {at:?}: stopped in {stopped_in:?}, new agent attached in {:?}",
                t.elapsed()
            );
        }
        if started.elapsed() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next += opts.sample_every;
        if !agent.alive() {
            failures.push(format!(
                "the agent exited at {:?}: {}",
                started.elapsed(),
                agent.stderr_text()
            ));
            break;
        }
        match look(&agent, started.elapsed(), run) {
            Ok((s, series)) => {
                eprintln!("{}", row(&s));
                if s.at >= warm && before.is_empty() {
                    before = series.clone();
                }
                after = series;
                samples.push(s);
            }
            Err(e) => failures.push(format!("sample at {:?}: {e:#}", started.elapsed())),
        }
    }
    let load_stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("traffic driver: {e:#}")),
            Err(_) => failures.push("a traffic driver panicked".into()),
        }
    }
    for t in side {
        if t.join().is_err() {
            failures.push("a churn driver panicked".into());
        }
    }
    // No load: every flow the load opened must end, and the agent must see
    // it end, within the lab's timeouts.
    let drain_target = baseline_tracked + DRAIN_SLACK;
    let mut drain = Vec::new();
    let mut drained_in = None;
    eprintln!(
        "soak: load stopped; tracked flows must drain to ≤ {drain_target} (baseline {baseline_tracked} + {DRAIN_SLACK}) within {:?}",
        opts.drain
    );
    loop {
        if !agent.alive() {
            failures.push(format!("the agent exited while draining: {}", agent.stderr_text()));
            break;
        }
        match look(&agent, started.elapsed(), run) {
            Ok((s, _)) => {
                eprintln!(
                    "{} (+{:.0} s without load)",
                    row(&s),
                    load_stopped.elapsed().as_secs_f64()
                );
                let done = s.tracked <= drain_target;
                drain.push((load_stopped.elapsed(), s));
                if done {
                    drained_in = Some(load_stopped.elapsed());
                    break;
                }
            }
            Err(e) => failures.push(format!("drain sample: {e:#}")),
        }
        if load_stopped.elapsed() >= opts.drain {
            break;
        }
        std::thread::sleep(opts.drain_every);
    }
    let mut open_sockets = String::new();
    if drained_in.is_none() {
        open_sockets = sockets_snapshot();
        failures.push(format!(
            "tracked flows did not drain: {} {:?} after the load stopped (target ≤ {drain_target})",
            drain.last().map_or(f64::NAN, |(_, s)| s.tracked),
            load_stopped.elapsed()
        ));
    }
    let final_text = agent.http_get("/metrics").unwrap_or_default();
    let totals = [
        "egress_events_lost_total",
        "egress_decode_errors_total",
        "egress_orphan_events_total",
        "egress_api_records_dropped_total",
        "egress_conntrack_lost_total",
        "egress_kube_watch_errors_total",
        "egress_http_rejected_total",
    ]
    .iter()
    .map(|n| (n.to_string(), metric_sum(&final_text, n, &[])))
    .chain(std::iter::once((
        "of which egress_events_lost_total{stage=\"dns_budget\"}".to_string(),
        metric_sum(&final_text, "egress_events_lost_total", &[("stage", "dns_budget")]),
    )))
    .collect::<Vec<_>>();
    if metric_sum(&final_text, "egress_decode_errors_total", &[]) > 0.0 {
        failures.push("ring records failed to decode".into());
    }
    if !agent.stop().unwrap_or(false) {
        failures.push("the agent did not exit 0 on the final SIGTERM".into());
    }
    let (fit, judged) = report::judge(&samples, warm);
    failures.extend(judged);
    let tallies: Vec<_> = tallies
        .iter()
        .map(|(n, t)| {
            let (a, e, u) = t.get();
            (*n, a, e, u)
        })
        .collect();
    for (name, attempts, expected, _) in &tallies {
        if *attempts == 0 || *expected * 2 < *attempts {
            failures.push(format!(
                "{name}: {expected} of {attempts} as expected: the lab did not carry the load"
            ));
        }
    }
    drop(kubeconfig);
    Ok(SoakReport {
        options: opts.clone(),
        rates,
        samples,
        baseline_tracked,
        drain,
        drained_in,
        open_sockets,
        fit,
        failures,
        new_series: report::new_series(&before, &after),
        tallies,
        restarts,
        totals,
    })
}

impl SoakReport {
    /// Everything for a person: the per-sample table, the fit, the new
    /// series, the drivers' tallies, restarts, totals, failures.
    pub fn render(&self) -> String {
        let f = &self.fit;
        let mut out = report::table(&self.samples);
        out.push_str(&format!(
            "\nAfter warm-up ({} samples over {:.1} min of the last agent run):\n\
             - RSS {:.1} → {:.1} MiB; slope {:+.2} MiB/10 min (least squares), {:+.2} (Theil–Sen); limit +{:.1}\n\
             - fds {} → {} ({:+.1}/10 min); metric series {} → {} ({:+.2}/min); label values {} → {} ({:+.1}/10 min)\n\
             - tracked flows {} → {} ({:+.1}/10 min) under load; {} before it\n",
            f.samples,
            f.window.as_secs_f64() / 60.0,
            f.rss_first_mib,
            f.rss_last_mib,
            f.rss_slope_mib_per_10min,
            f.rss_theil_sen_mib_per_10min,
            report::RSS_SLOPE_LIMIT_MIB_PER_10MIN,
            f.fds_first,
            f.fds_last,
            f.fds_slope_per_10min,
            f.series_first,
            f.series_last,
            f.series_slope_per_10min / 10.0,
            f.label_values_first,
            f.label_values_last,
            f.label_values_slope_per_10min,
            f.tracked_first,
            f.tracked_last,
            f.tracked_slope_per_10min,
            self.baseline_tracked,
        ));
        let steps: Vec<String> = self
            .drain
            .iter()
            .map(|(t, s)| format!("{} at +{:.0} s", s.tracked, t.as_secs_f64()))
            .collect();
        out.push_str(&format!(
            "- after the load stopped, tracked flows: {}; {}\n",
            steps.join(", "),
            match self.drained_in {
                Some(d) => format!(
                    "drained (≤ baseline {} + {DRAIN_SLACK}) in {:.0} s",
                    self.baseline_tracked,
                    d.as_secs_f64()
                ),
                None => format!("NOT drained within {:?}", self.options.drain),
            }
        ));
        if !self.drain.is_empty() {
            let drain: Vec<Sample> = self.drain.iter().map(|(_, s)| s.clone()).collect();
            out.push_str("\nAfter the load stopped:\n\n");
            out.push_str(&report::table(&drain));
        }
        if !self.open_sockets.is_empty() {
            out.push_str("\nTCP sockets open when the drain gave up:\n\n```\n");
            out.push_str(&self.open_sockets);
            out.push_str("```\n");
        }
        let new: Vec<String> =
            self.new_series.iter().map(|(n, c)| format!("{n} +{}", c.len())).collect();
        out.push_str(&format!(
            "- series new after warm-up: {}\n",
            if new.is_empty() { "none".into() } else { new.join(", ") }
        ));
        for s in self.new_series.values().flatten().take(30) {
            out.push_str(&format!("  - {s}\n"));
        }
        out.push_str("\nDrivers (attempts / as expected / otherwise):\n");
        for (n, a, e, u) in &self.tallies {
            out.push_str(&format!("- {n}: {a} / {e} / {u}\n"));
        }
        for r in &self.restarts {
            out.push_str(&format!(
                "- restart at {:.1} min: SIGTERM → exit {:?} ({}), new agent attached in {:?}\n",
                r.at.as_secs_f64() / 60.0,
                r.stopped_in,
                if r.clean_exit { "exit 0" } else { "NOT exit 0" },
                r.started_in
            ));
        }
        let totals: Vec<String> = self.totals.iter().map(|(n, v)| format!("{n} {v}")).collect();
        out.push_str(&format!("- at the end: {}\n", totals.join(", ")));
        if self.failures.is_empty() {
            out.push_str("\nsoak: passed\n");
        } else {
            out.push_str(&format!("\nsoak: FAILED\n- {}\n", self.failures.join("\n- ")));
        }
        out
    }

    /// Write [`Self::render`] to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(path, self.render()).with_context(|| format!("writing {}", path.display()))
    }
}
