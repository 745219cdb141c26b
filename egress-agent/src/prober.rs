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
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    sync::mpsc::{Receiver, RecvTimeoutError, SyncSender},
    time::{Duration, Instant},
};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Registry};

use crate::{
    config::ProbeSettings,
    pipeline::{judge, proxy_http, vantage::VANTAGE},
    records::{ChainRecord, FlowRecord, Phase, Reason, Record, Verdict},
    sinks::register::{self as reg, MetricError},
};

/// Gap between two probes, whatever the schedule says.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How long the chain record of a probe may trail its end.
const CHAIN_WAIT: Duration = Duration::from_secs(3);
/// Bytes of the proxy's answer read at most.
const MAX_ANSWER: usize = 4096;

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
                "1 if the last probe of the target got its tunnel (CONNECT 200) within the timeout.",
                &["target"],
            )?,
            duration: reg::float_gauge_vec(
                r,
                "egress_probe_duration_seconds",
                "Last probe: time to the CONNECT answer (hop=\"total\") and connect time of each leg to a hop.",
                &["target", "hop"],
            )?,
            last_failure: reg::gauge_vec(
                r,
                "egress_probe_last_failure_hop",
                "Info (always 1): the hop and reason of the target's last failed probe.",
                &["target", "hop", "reason"],
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
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.status == Some(200)
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
    match (chain, client) {
        (Some(c), Some(v)) => {
            let deeper = matches!((depth(&v.0), depth(&c.0)), (Some(dv), Some(dc)) if dv > dc);
            return Some(if deeper { v } else { c });
        }
        (Some(j), None) | (None, Some(j)) => return Some(j),
        (None, None) => {}
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

fn io_reason(e: &std::io::Error) -> Reason {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Reason::Refused,
        K::TimedOut | K::WouldBlock => Reason::Timeout,
        K::HostUnreachable | K::NetworkUnreachable => Reason::Unreachable,
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof => Reason::Reset,
        _ => Reason::Other,
    }
}

/// One probe: connect to `proxy` (resolved now), send CONNECT, read the answer.
pub fn probe_once(proxy: &str, target: &str, timeout: Duration) -> Attempt {
    let t0 = Instant::now();
    let mut a = Attempt { local: None, elapsed: Duration::ZERO, status: None, error: None };
    let r = (|| -> std::io::Result<u16> {
        let addr = proxy.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "proxy name has no address")
        })?;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // Bind first: the local port is known even when the connect fails.
        let any: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        sock.bind(&any.into())?;
        a.local = sock.local_addr()?.as_socket();
        sock.connect_timeout(&addr.into(), timeout)?;
        let mut s: TcpStream = sock.into();
        let left = |t0: Instant| timeout.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
        s.set_write_timeout(Some(left(t0)))?;
        // One write, one segment: the kernel reads the request line from the
        // first payload packet (write! would issue a write per piece).
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: egress-agent-probe\r\n\r\n").as_bytes())?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_ANSWER {
            s.set_read_timeout(Some(left(t0)))?;
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        proxy_http::parse_response(&buf)
            .map(|r| r.status)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no status line"))
    })();
    match r {
        Ok(s) => a.status = Some(s),
        Err(e) => a.error = Some(io_reason(&e)),
    }
    a.elapsed = t0.elapsed();
    a
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

/// Start probing on a thread of its own (in `plan.netns` if set). The
/// records [`Judged::wants`] arrive on `chains`.
pub fn spawn(
    plan: ProbeSettings,
    metrics: std::sync::Arc<ProbeMetrics>,
    chains: Receiver<Record>,
) -> std::io::Result<Prober> {
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
        run(&plan, &metrics, &chains, &stop_rx);
    })?;
    Ok(Prober { stop: Some(stop_tx), handle: Some(handle) })
}

fn run(plan: &ProbeSettings, m: &ProbeMetrics, chains: &Receiver<Record>, stop: &Receiver<()>) {
    let mut rng = (std::process::id() as u64) << 32 | 0x9e37_79b9;
    let n = plan.targets.len() as u32;
    let start = Instant::now();
    // Targets spread over one interval.
    let mut due: Vec<Instant> = (0..n).map(|i| start + plan.interval * i / n).collect();
    let mut last_failure: Vec<Option<(String, Reason)>> = vec![None; plan.targets.len()];
    tracing::info!(targets = n, interval = ?plan.interval, proxy = %plan.proxy, "prober running");
    loop {
        let Some((i, &when)) = due.iter().enumerate().min_by_key(|(_, d)| **d) else { return };
        match stop.recv_timeout(when.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return, // stopped (or the agent dropped the sender)
        }
        let target = &plan.targets[i];
        let a = probe_once(&plan.proxy, target, plan.timeout);
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
    last: &mut Option<(String, Reason)>,
) {
    m.success.with_label_values(&[target]).set(i64::from(a.ok()));
    m.probes.with_label_values(&[target, if a.ok() { "success" } else { "failure" }]).inc();
    m.duration.with_label_values(&[target, "total"]).set(a.elapsed.as_secs_f64());
    for leg in judged.chain.as_ref().map(|c| c.legs.as_slice()).unwrap_or_default() {
        m.duration.with_label_values(&[target, leg.hop.as_str()]).set(leg.latency_ms / 1000.0);
    }
    if let Some((hop, reason)) = failure_of(a, judged, &plan.hops) {
        if let Some((h, r)) = last.take() {
            let _ = m.last_failure.remove_label_values(&[target, &h, r.as_str()]);
        }
        m.last_failure.with_label_values(&[target, &hop, reason.as_str()]).set(1);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        m.last_failure_time.with_label_values(&[target]).set(now.as_secs_f64());
        tracing::info!(%target, %hop, reason = reason.as_str(), "probe failed");
        *last = Some((hop, reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_hop_is_the_deeper_judgement() {
        let hops = ["gke-squid".to_string(), "gce-proxy".to_string()];
        let a = Attempt { local: None, elapsed: Duration::ZERO, status: Some(503), error: None };
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
        let ok = Attempt { status: Some(200), ..refused };
        assert_eq!(failure_of(&ok, &none, &hops), None);
        // Only synthetic chains and synthetic client-vantage connect records.
        let mut f = leg("gce-proxy", Reason::Refused);
        assert!(!Judged::wants(&Record::Flow(f.clone())));
        f.synthetic = true;
        assert!(Judged::wants(&Record::Flow(f.clone())));
        f.phase = Phase::Close;
        assert!(!Judged::wants(&Record::Flow(f)));
        assert!(!Judged::wants(&Record::Chain(ChainRecord::default())));
    }

    #[test]
    fn probe_against_a_local_proxy_stand_in() {
        // A loopback listener answering like a proxy, then a closed port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut b = [0u8; 256];
            let n = s.read(&mut b).expect("read");
            let req = String::from_utf8_lossy(&b[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("write");
            req
        });
        let a = probe_once(&addr.to_string(), "login.example.test:443", Duration::from_secs(2));
        assert!(a.ok(), "{a:?}");
        assert!(a.local.is_some_and(|l| l.port() != 0));
        assert!(
            srv.join().expect("join").starts_with("CONNECT login.example.test:443 HTTP/1.1\r\n")
        );
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let a = probe_once(&closed.to_string(), "x.test:443", Duration::from_secs(2));
        assert_eq!((a.ok(), a.error), (false, Some(Reason::Refused)));
    }
}
