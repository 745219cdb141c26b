//! Active probes through the proxy chain: a passive observer is blind when
//! nothing is sent, so for each configured target the agent opens a CONNECT
//! tunnel through the first hop, exactly as an application would, on an
//! interval with jitter and a timeout. Its flows are observed by the kernel
//! programs like any other, tagged `synthetic` (the agent's own process), and
//! stitched by the same machinery. The per-hop verdict of a failed probe is
//! the deeper of two judgements of it: its chain record's (every leg this
//! node sees) and its client leg's client-vantage verdict (the proxy's
//! answer and its headers: `X-Squid-Error`, `Via`, …), which names a hop
//! past the first one where this node sees no leg beyond the client's (a
//! hop on another machine). Sequential (one probe in flight), bounded, off
//! unless `probes:` is configured.
//!
//! With `probes.tls`, a tunnel the proxy granted carries a TLS handshake
//! with the target ([`tls`]): a failed handshake is `tls_failed` with a
//! detail (the alert, the certificate error), apart from the proxy's own
//! failures (a `403` stays `proxy_denied`, a `503` `proxy_upstream_error`).
mod once;
pub mod tls;
#[cfg(test)]
mod tls_tests;

use std::{
    net::SocketAddr,
    sync::mpsc::{Receiver, RecvTimeoutError, SyncSender},
    time::{Duration, Instant},
};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use crate::{
    config::ProbeSettings,
    pipeline::{judge, vantage::VANTAGE},
    records::{ChainRecord, FlowRecord, Phase, Reason, Record, Verdict},
    sinks::register::{self as reg, MetricError},
};

/// Gap between two probes, whatever the schedule says.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How long the chain record of a probe may trail its end.
const CHAIN_WAIT: Duration = Duration::from_secs(3);
pub use self::{
    once::probe_once,
    tls::{ProbeTlsError, TlsProbe},
};

/// Probe metrics (registered only when probes are configured).
pub struct ProbeMetrics {
    success: IntGaugeVec,
    duration: GaugeVec,
    last_failure: IntGaugeVec,
    last_failure_time: GaugeVec,
    probes: IntCounterVec,
    /// Synthetic chain records the prober could not take (its queue was full).
    pub records_dropped: IntCounter,
}

impl ProbeMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            success: reg::gauge_vec(
                r,
                "egress_probe_success",
                "1 if the last probe of the target got its tunnel (CONNECT 200) and, with probes.tls, completed the TLS handshake in it, within the timeout.",
                &["target"],
            )?,
            duration: reg::float_gauge_vec(
                r,
                "egress_probe_duration_seconds",
                "Last probe: its time to the end (hop=\"total\": the CONNECT answer, or with probes.tls the handshake's end) and connect time of each leg to a hop.",
                &["target", "hop"],
            )?,
            last_failure: reg::gauge_vec(
                r,
                "egress_probe_last_failure_hop",
                "Info (always 1): the hop and reason of the target's last failed probe; detail: why a TLS handshake failed (reason=\"tls_failed\"), else empty.",
                &["target", "hop", "reason", "detail"],
            )?,
            last_failure_time: reg::float_gauge_vec(
                r,
                "egress_probe_last_failure_timestamp_seconds",
                "Unix time of the target's last failed probe.",
                &["target"],
            )?,
            probes: reg::counter_vec(
                r,
                "egress_probes_total",
                "Probes run, by result (success, failure).",
                &["target", "result"],
            )?,
            records_dropped: reg::counter(
                r,
                "egress_probe_records_dropped_total",
                "Synthetic chain records the prober's queue could not take.",
            )?,
        })
    }
}

/// What the prober itself saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Local address of the probe's socket (the key to its chain record).
    pub local: Option<SocketAddr>,
    pub elapsed: Duration,
    /// The proxy's CONNECT status, if it answered.
    pub status: Option<u16>,
    /// Why there was no answer.
    pub error: Option<Reason>,
    /// With `probes.tls`, after a `200`: the handshake's outcome (Err: why
    /// it failed, in words).
    pub tls: Option<Result<(), String>>,
}

impl Attempt {
    /// The tunnel, and with `probes.tls` the handshake in it.
    pub fn ok(&self) -> bool {
        self.status == Some(200) && self.tls_failure().is_none()
    }

    /// Why the TLS handshake in the tunnel failed, if it did.
    pub fn tls_failure(&self) -> Option<&str> {
        match &self.tls {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// What the pipeline said about one probe, found by its socket's port.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// Its chain record: every leg this node sees, judged together.
    pub chain: Option<ChainRecord>,
    /// Its client leg's connect record, judged from the client vantage.
    pub client_leg: Option<FlowRecord>,
}

impl Judged {
    /// Whether `r` is one of the records [`Judged`] keeps: a synthetic
    /// chain record, or a synthetic client leg's connect record.
    pub fn wants(r: &Record) -> bool {
        match r {
            Record::Chain(c) => c.synthetic,
            Record::Flow(f) => {
                f.synthetic && f.phase == Phase::Connect && f.vantage.as_deref() == Some(VANTAGE)
            }
            _ => false,
        }
    }
}

/// The hop and reason of a failed probe.
///
/// Two judgements of it may come: the chain record's and the client leg's
/// (client vantage). Where both say `failed`, the one naming the deeper hop
/// of `hops` (`internet` past the last) decides, as in the assembled view:
/// a node that sees only the client leg judges the chain from the legs
/// alone as "the first hop answered 503", where the answer's headers say
/// which hop past it broke and why (`ERR_CONNECT_FAIL 111` from hop 1:
/// hop 2 refused). At the same depth the chain's verdict stands (its legs'
/// own errno). Without either, what the prober saw (a failed connect is at
/// the first hop).
///
/// A tunnel the proxy granted whose TLS handshake failed is `tls_failed`,
/// whatever the legs say of it (an origin's reset after the ClientHello
/// is the handshake's failure): at the hop a judgement names, else past
/// the last hop (`internet`, the origin).
pub fn failure_of(a: &Attempt, judged: &Judged, hops: &[String]) -> Option<(String, Reason)> {
    let depth = |h: &str| {
        if h == crate::config::INTERNET {
            Some(hops.len())
        } else {
            hops.iter().position(|n| n == h)
        }
    };
    let chain = judged
        .chain
        .as_ref()
        .filter(|c| c.verdict == Verdict::Failed)
        .and_then(|c| Some((c.failed_hop.clone()?, c.reason?)));
    let client = judged
        .client_leg
        .as_ref()
        .filter(|f| f.verdict == Verdict::Failed)
        .and_then(|f| Some((f.failed_hop.clone()?, f.reason?)));
    let judgement = match (chain, client) {
        (Some(c), Some(v)) => {
            let deeper = matches!((depth(&v.0), depth(&c.0)), (Some(dv), Some(dc)) if dv > dc);
            Some(if deeper { v } else { c })
        }
        (Some(j), None) | (None, Some(j)) => Some(j),
        (None, None) => None,
    };
    if a.status == Some(200) && a.tls_failure().is_some() {
        let hop = judgement.map_or_else(|| crate::config::INTERNET.to_string(), |(h, _)| h);
        return Some((hop, Reason::TlsFailed));
    }
    if judgement.is_some() {
        return judgement;
    }
    if a.ok() {
        return None;
    }
    let reason = match (a.status, a.error) {
        (Some(s), _) => judge::proxy_status(s).1.unwrap_or(Reason::Other),
        (None, Some(r)) => r,
        (None, None) => Reason::Other,
    };
    Some((hops.first().cloned().unwrap_or_default(), reason))
}

/// A running prober thread; stopped and joined on drop.
pub struct Prober {
    stop: Option<SyncSender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Small xorshift: jitter needs no cryptographic randomness.
fn next_rand(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] ProbeTlsError),
}

/// Start probing on a thread of its own (in `plan.netns` if set). The
/// records [`Judged::wants`] arrive on `chains`. With `probes.tls` the
/// handshake's configuration is built here (the system's roots read, the
/// `tls_ca` file too): an unreadable file stops the start.
pub fn spawn(
    plan: ProbeSettings,
    metrics: std::sync::Arc<ProbeMetrics>,
    chains: Receiver<Record>,
) -> Result<Prober, SpawnError> {
    let tls = plan.tls.as_ref().map(TlsProbe::new).transpose()?;
    if plan.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
        tracing::warn!(
            "probes.tls_insecure_skip_verify: the targets' certificates are not verified"
        );
    }
    let netns = plan.netns.as_ref().map(std::fs::File::open).transpose()?;
    let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let handle = std::thread::Builder::new().name("egress-prober".into()).spawn(move || {
        if let Some(f) = netns {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                tracing::error!(
                    "prober: setns {:?}: {}; probes off",
                    plan.netns,
                    std::io::Error::last_os_error()
                );
                return;
            }
        }
        run(&plan, tls.as_ref(), &metrics, &chains, &stop_rx);
    })?;
    Ok(Prober { stop: Some(stop_tx), handle: Some(handle) })
}

fn run(
    plan: &ProbeSettings,
    tls: Option<&TlsProbe>,
    m: &ProbeMetrics,
    chains: &Receiver<Record>,
    stop: &Receiver<()>,
) {
    let mut rng = (std::process::id() as u64) << 32 | 0x9e37_79b9;
    let n = plan.targets.len() as u32;
    let start = Instant::now();
    // Targets spread over one interval.
    let mut due: Vec<Instant> = (0..n).map(|i| start + plan.interval * i / n).collect();
    let mut last_failure: Vec<Option<[String; 3]>> = vec![None; plan.targets.len()];
    tracing::info!(targets = n, interval = ?plan.interval, proxy = %plan.proxy, tls = tls.is_some(), "prober running");
    loop {
        let Some((i, &when)) = due.iter().enumerate().min_by_key(|(_, d)| **d) else { return };
        match stop.recv_timeout(when.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return, // stopped (or the agent dropped the sender)
        }
        let target = &plan.targets[i];
        let a = probe_once(&plan.proxy, target, plan.timeout, tls);
        let judged = wait_judged(chains, a.local, stop);
        record(m, plan, target, &a, &judged, &mut last_failure[i]);
        let j = 1.0 + plan.jitter * (2.0 * next_rand(&mut rng) - 1.0);
        due[i] = (when + plan.interval.mul_f64(j)).max(Instant::now() + MIN_GAP);
    }
}

/// The records of the probe whose socket was `local`, until its chain
/// record came (its client leg comes before it), waited for a bounded time.
fn wait_judged(
    chains: &Receiver<Record>,
    local: Option<SocketAddr>,
    stop: &Receiver<()>,
) -> Judged {
    let mut j = Judged::default();
    let Some(port) = local.map(|l| l.port()) else { return j };
    let mine = |src: Option<SocketAddr>| src.is_some_and(|s| s.port() == port);
    let deadline = Instant::now() + CHAIN_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || matches!(stop.try_recv(), Ok(()) | Err(std::sync::mpsc::TryRecvError::Disconnected))
        {
            return j;
        }
        // Records of earlier probes that came too late are dropped here.
        match chains.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(Record::Chain(c)) if mine(c.src) => {
                j.chain = Some(c);
                return j;
            }
            Ok(Record::Flow(f)) if mine(f.src) => j.client_leg = Some(f),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return j,
        }
    }
}

fn record(
    m: &ProbeMetrics,
    plan: &ProbeSettings,
    target: &str,
    a: &Attempt,
    judged: &Judged,
    last: &mut Option<[String; 3]>,
) {
    m.success.with_label_values(&[target]).set(i64::from(a.ok()));
    m.probes.with_label_values(&[target, if a.ok() { "success" } else { "failure" }]).inc();
    m.duration.with_label_values(&[target, "total"]).set(a.elapsed.as_secs_f64());
    for leg in judged.chain.as_ref().map(|c| c.legs.as_slice()).unwrap_or_default() {
        m.duration.with_label_values(&[target, leg.hop.as_str()]).set(leg.latency_ms / 1000.0);
    }
    if let Some((hop, reason)) = failure_of(a, judged, &plan.hops) {
        let detail = match reason {
            Reason::TlsFailed => a.tls_failure().unwrap_or_default(),
            _ => "",
        };
        if let Some([h, r, d]) = last.take() {
            let _ = m.last_failure.remove_label_values(&[target, &h, &r, &d]);
        }
        m.last_failure.with_label_values(&[target, &hop, reason.as_str(), detail]).set(1);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        m.last_failure_time.with_label_values(&[target]).set(now.as_secs_f64());
        tracing::info!(%target, %hop, reason = reason.as_str(), detail, "probe failed");
        *last = Some([hop, reason.as_str().to_string(), detail.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_hop_is_the_deeper_judgement() {
        let hops = ["gke-squid".to_string(), "gce-proxy".to_string()];
        let a = Attempt {
            local: None,
            elapsed: Duration::ZERO,
            status: Some(503),
            error: None,
            tls: None,
        };
        let none = Judged::default();
        assert_eq!(
            failure_of(&a, &none, &hops),
            Some(("gke-squid".into(), Reason::ProxyUpstreamError))
        );
        let chain = |hop: &str, reason| ChainRecord {
            verdict: Verdict::Failed,
            failed_hop: Some(hop.into()),
            reason: Some(reason),
            ..ChainRecord::default()
        };
        let leg = |hop: &str, reason| FlowRecord {
            verdict: Verdict::Failed,
            failed_hop: Some(hop.into()),
            reason: Some(reason),
            vantage: Some(VANTAGE.into()),
            ..FlowRecord::default()
        };
        // Every leg seen here (one machine): the chain's verdict.
        let j = Judged { chain: Some(chain("gce-proxy", Reason::Refused)), client_leg: None };
        assert_eq!(failure_of(&a, &j, &hops), Some(("gce-proxy".into(), Reason::Refused)));
        // Hop 2 on another machine: this node's chain is the client leg
        // alone (hop 1 answered 503); the answer's X-Squid-Error
        // ERR_CONNECT_FAIL 111 from hop 1 names hop 2, refused.
        let j = Judged {
            chain: Some(chain("gke-squid", Reason::ProxyUpstreamError)),
            client_leg: Some(leg("gce-proxy", Reason::Refused)),
        };
        assert_eq!(failure_of(&a, &j, &hops), Some(("gce-proxy".into(), Reason::Refused)));
        // The same hop: the chain's (its legs' own errno).
        let j = Judged {
            chain: Some(chain("gce-proxy", Reason::Timeout)),
            client_leg: Some(leg("gce-proxy", Reason::ProxyUpstreamError)),
        };
        assert_eq!(failure_of(&a, &j, &hops), Some(("gce-proxy".into(), Reason::Timeout)));
        // Deeper still: past the last hop.
        let j = Judged {
            chain: Some(chain("gce-proxy", Reason::ProxyUpstreamError)),
            client_leg: Some(leg("internet", Reason::Refused)),
        };
        assert_eq!(failure_of(&a, &j, &hops), Some(("internet".into(), Reason::Refused)));
        // The client leg alone (the chain record did not come in time).
        let j = Judged { chain: None, client_leg: Some(leg("gce-proxy", Reason::Refused)) };
        assert_eq!(failure_of(&a, &j, &hops), Some(("gce-proxy".into(), Reason::Refused)));
        let refused = Attempt { status: None, error: Some(Reason::Refused), ..a };
        assert_eq!(failure_of(&refused, &none, &hops), Some(("gke-squid".into(), Reason::Refused)));
        let ok = Attempt { status: Some(200), ..refused.clone() };
        assert_eq!(failure_of(&ok, &none, &hops), None);
        // probes.tls: a granted tunnel whose handshake failed is tls_failed,
        // past the last hop unless a judgement names where it broke.
        let tls_ok = Attempt { tls: Some(Ok(())), ..ok };
        assert!(tls_ok.ok());
        assert_eq!(failure_of(&tls_ok, &none, &hops), None);
        let alert =
            Attempt { tls: Some(Err("received fatal alert: HandshakeFailure".into())), ..ok };
        assert!(!alert.ok());
        assert_eq!(alert.tls_failure(), Some("received fatal alert: HandshakeFailure"));
        assert_eq!(failure_of(&alert, &none, &hops), Some(("internet".into(), Reason::TlsFailed)));
        let j = Judged { chain: Some(chain("internet", Reason::Reset)), client_leg: None };
        assert_eq!(failure_of(&alert, &j, &hops), Some(("internet".into(), Reason::TlsFailed)));
        let j = Judged { chain: Some(chain("gce-proxy", Reason::Reset)), client_leg: None };
        assert_eq!(failure_of(&alert, &j, &hops), Some(("gce-proxy".into(), Reason::TlsFailed)));
        // The proxy's own answers stay the proxy's: no handshake is tried.
        let denied = Attempt { status: Some(403), ..refused };
        assert_eq!(
            failure_of(&denied, &none, &hops),
            Some(("gke-squid".into(), Reason::ProxyDenied))
        );
        // Only synthetic chains and synthetic client-vantage connect records.
        let mut f = leg("gce-proxy", Reason::Refused);
        assert!(!Judged::wants(&Record::Flow(f.clone())));
        f.synthetic = true;
        assert!(Judged::wants(&Record::Flow(f.clone())));
        f.phase = Phase::Close;
        assert!(!Judged::wants(&Record::Flow(f)));
        assert!(!Judged::wants(&Record::Chain(ChainRecord::default())));
    }
}
