//! Which records a user asked to see: the filters shared by `watch`,
//! `flows` (and the target match of `explain`).
use std::{
    net::IpAddr,
    str::FromStr,
    time::{Duration, SystemTime},
};

use clap::Args;

use crate::{
    config::{AddrError, Cidr, parse_duration},
    records::{
        AggregateRecord, ChainRecord, DnsRecord, FlowRecord, Reason, Record, Verdict, parse_rfc3339,
    },
};

#[derive(Debug, Clone, Default, Args)]
pub struct FlowFilter {
    /// Only records with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<Verdict>,
    /// Only records with this reason.
    #[arg(long, value_enum)]
    pub reason: Option<Reason>,
    /// Only flows from pods in this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces and host processes (the default; overrides -n).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only flows from this pod (name, or UID as found in the cgroup path).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows from this workload: `Kind/name` or just `name`.
    #[arg(long)]
    pub workload: Option<String>,
    /// Only flows to this hop of the chain (a hop name, `internet` or `direct`);
    /// for chains, those that passed through it.
    #[arg(long)]
    pub hop: Option<String>,
    /// Only flows to this destination: an address, a CIDR, or a name (a
    /// CONNECT target's host, a Service `name` or `namespace/name`).
    #[arg(long, value_name = "HOST|CIDR")]
    pub dst: Option<DstMatch>,
    /// Only flows to this destination port (or CONNECT target port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Only records newer than this (e.g. 30s, 5m, 1h30m; at most 3650d).
    #[arg(long, value_parser = parse_since, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// Only the last N matching records of the history (at most 10000000).
    #[arg(long, value_name = "N", value_parser = parse_last)]
    pub last: Option<usize>,
}

/// Longest `--since`: ten years (the history is in the agent's memory; a
/// longer look-back is a typo, and past the Unix epoch it means nothing).
pub const MAX_SINCE: Duration = Duration::from_secs(3650 * 86_400);
/// Largest `--last`: more records than any agent keeps.
pub const MAX_LAST: usize = 10_000_000;

/// `--since`: the duration grammar, at most [`MAX_SINCE`]. clap turns an
/// error into exit code 2 with the message.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_SINCE {
        return Err(format!(
            "`{s}` is longer than 3650d: the agent keeps its history in memory; omit --since to see all of it"
        ));
    }
    Ok(d)
}

/// `--last`: a count up to [`MAX_LAST`].
pub fn parse_last(s: &str) -> Result<usize, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n <= MAX_LAST as u64 => Ok(n as usize),
        Ok(_) | Err(_) if s.trim().bytes().all(|b| b.is_ascii_digit()) && !s.trim().is_empty() => {
            Err(format!("`{s}` is more than {MAX_LAST}: no agent keeps that many records"))
        }
        _ => Err(format!("`{s}` is not a count (0 to {MAX_LAST})")),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DstMatchError {
    #[error("empty destination")]
    Empty,
    #[error(transparent)]
    Cidr(#[from] AddrError),
}

/// A destination to match: by address range or by name.
#[derive(Debug, Clone)]
pub enum DstMatch {
    Cidr(Cidr),
    Name(String),
}

impl FromStr for DstMatch {
    type Err = DstMatchError;
    fn from_str(s: &str) -> Result<Self, DstMatchError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DstMatchError::Empty);
        }
        if s.contains('/') && s.split_once('/').is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok()) {
            return Ok(Self::Cidr(s.parse()?));
        }
        match s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Ok(Self::Cidr(ip.to_string().parse()?)),
            Err(_) => Ok(Self::Name(s.to_ascii_lowercase())),
        }
    }
}

impl DstMatch {
    fn matches(
        &self,
        ips: &[Option<IpAddr>],
        target: Option<&str>,
        dst_name: Option<&str>,
    ) -> bool {
        match self {
            Self::Cidr(c) => {
                ips.iter().flatten().any(|ip| c.contains(*ip))
                    || target
                        .and_then(|t| split_target(t).0.parse().ok())
                        .is_some_and(|ip| c.contains(ip))
            }
            Self::Name(n) => {
                target.is_some_and(|t| split_target(t).0.eq_ignore_ascii_case(n))
                    || dst_name.is_some_and(|d| {
                        let d = d.rsplit_once(':').map_or(d, |(a, _)| a);
                        d.eq_ignore_ascii_case(n)
                            || d.split_once('/').is_some_and(|(_, svc)| svc.eq_ignore_ascii_case(n))
                    })
            }
        }
    }
}

/// `host:port`, `[v6]:port` or `host` → (host, port).
pub fn split_target(t: &str) -> (&str, Option<u16>) {
    if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest.split_once(']').unwrap_or((rest, ""));
        return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match t.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (t, None),
    }
}

impl FlowFilter {
    fn recent(&self, time: &str, now: SystemTime) -> bool {
        match self.since {
            None => true,
            // No overflow whatever the duration: a bound past the clock's
            // range keeps the record.
            Some(d) => {
                parse_rfc3339(time).is_some_and(|t| t.checked_add(d).is_none_or(|e| e >= now))
            }
        }
    }

    fn who(
        &self,
        namespace: Option<&str>,
        pod: Option<&str>,
        pod_uid: Option<&str>,
        workload: Option<&str>,
    ) -> bool {
        if !self.all_namespaces
            && let Some(ns) = &self.namespace
            && namespace != Some(ns.as_str())
        {
            return false;
        }
        if let Some(p) = &self.pod
            && pod != Some(p.as_str())
            && pod_uid != Some(p.as_str())
        {
            return false;
        }
        if let Some(w) = &self.workload
            && !workload
                .is_some_and(|x| x == w || x.split_once('/').is_some_and(|(_, name)| name == w))
        {
            return false;
        }
        true
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.matches_at(r, SystemTime::now())
    }

    pub fn matches_at(&self, r: &FlowRecord, now: SystemTime) -> bool {
        self.verdict.is_none_or(|v| v == r.verdict)
            && self.reason.is_none_or(|x| Some(x) == r.reason)
            && self.who(
                r.namespace.as_deref(),
                r.pod.as_deref(),
                r.pod_uid.as_deref(),
                r.workload.as_deref(),
            )
            && self.hop.as_deref().is_none_or(|h| r.hop.as_deref() == Some(h))
            && self.dst.as_ref().is_none_or(|d| {
                d.matches(
                    &[r.dst.map(|a| a.ip()), r.dst_actual.map(|a| a.ip())],
                    r.target.as_deref(),
                    r.dst_name.as_deref(),
                )
            })
            && self.port.is_none_or(|p| {
                r.dst.is_some_and(|d| d.port() == p)
                    || r.target.as_deref().is_some_and(|t| split_target(t).1 == Some(p))
            })
            && self.recent(&r.time, now)
    }

    /// A DNS record: verdict, reason, who, hop, `--dst NAME` against the
    /// name asked (`--dst CIDR` and `--port` against the server), `--since`.
    pub fn matches_dns(&self, d: &DnsRecord) -> bool {
        self.verdict.is_none_or(|v| d.verdict == v)
            && self.reason.is_none_or(|r| d.reason == Some(r))
            && self.who(
                d.namespace.as_deref(),
                d.pod.as_deref(),
                d.pod_uid.as_deref(),
                d.workload.as_deref(),
            )
            && self.hop.as_deref().is_none_or(|h| d.hop.as_deref() == Some(h))
            && self.dst.as_ref().is_none_or(|m| match m {
                DstMatch::Name(n) => d.name.trim_end_matches('.').eq_ignore_ascii_case(n),
                DstMatch::Cidr(c) => d.server.is_some_and(|a| c.contains(a.ip())),
            })
            && self.port.is_none_or(|p| d.server.is_some_and(|a| a.port() == p))
            && self.recent(&d.time, SystemTime::now())
    }

    /// Any record kind.
    pub fn matches_record(&self, r: &Record) -> bool {
        match r {
            Record::Flow(f) => self.matches(f),
            Record::Chain(c) => self.matches_chain(c),
            Record::Dns(d) => self.matches_dns(d),
            Record::Aggregate(a) => self.matches_aggregate(a),
        }
    }

    /// A counted row, as the flows it counts would match (no pid, comm or
    /// target: the kernel counts by owner cgroup and destination).
    pub fn matches_aggregate(&self, a: &AggregateRecord) -> bool {
        let ips = [a.dst.map(|d| d.ip())];
        self.verdict.is_none_or(|v| v == a.verdict)
            && self.reason.is_none_or(|x| Some(x) == a.reason)
            && self.who(
                a.namespace.as_deref(),
                a.pod.as_deref(),
                a.pod_uid.as_deref(),
                a.workload.as_deref(),
            )
            && self.hop.as_deref().is_none_or(|h| a.hop.as_deref() == Some(h))
            && self.dst.as_ref().is_none_or(|d| d.matches(&ips, None, a.dst_name.as_deref()))
            && self.port.is_none_or(|p| a.dst.is_some_and(|d| d.port() == p))
            && self.recent(&a.time, SystemTime::now())
    }

    pub fn matches_chain(&self, c: &ChainRecord) -> bool {
        self.matches_chain_at(c, SystemTime::now())
    }

    pub fn matches_chain_at(&self, c: &ChainRecord, now: SystemTime) -> bool {
        let ips: Vec<Option<IpAddr>> = c
            .legs
            .iter()
            .flat_map(|l| [l.dst.map(|a| a.ip()), l.dst_actual.map(|a| a.ip())])
            .collect();
        self.verdict.is_none_or(|v| v == c.verdict)
            && self.reason.is_none_or(|x| Some(x) == c.reason)
            && self.who(c.namespace.as_deref(), c.pod.as_deref(), None, c.workload.as_deref())
            && self.hop.as_deref().is_none_or(|h| c.legs.iter().any(|l| l.hop == h))
            && self.dst.as_ref().is_none_or(|d| d.matches(&ips, c.target.as_deref(), None))
            && self.port.is_none_or(|p| {
                c.target.as_deref().is_some_and(|t| split_target(t).1 == Some(p))
                    || c.legs.first().and_then(|l| l.dst).is_some_and(|d| d.port() == p)
            })
            && self.recent(&c.time, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> FlowRecord {
        FlowRecord {
            time: "2026-11-21T22:00:00.000Z".into(),
            namespace: Some("app".into()),
            pod: Some("web-1".into()),
            pod_uid: Some("u1".into()),
            workload: Some("Deployment/web".into()),
            verdict: Verdict::Failed,
            reason: Some(Reason::ProxyDenied),
            hop: Some("gke-squid".into()),
            dst: Some("10.96.0.10:3128".parse().expect("a")),
            dst_actual: Some("10.1.2.3:3128".parse().expect("a")),
            dst_name: Some("intra-proxy/squid:3128".into()),
            target: Some("login.example.test:443".into()),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn every_filter() {
        let r = rec();
        let f =
            |f: FlowFilter| f.matches_at(&r, parse_rfc3339("2026-11-21T22:00:30.000Z").expect("t"));
        assert!(f(FlowFilter::default()));
        assert!(f(FlowFilter { verdict: Some(Verdict::Failed), ..Default::default() }));
        assert!(!f(FlowFilter { verdict: Some(Verdict::Ok), ..Default::default() }));
        assert!(f(FlowFilter { reason: Some(Reason::ProxyDenied), ..Default::default() }));
        assert!(!f(FlowFilter { reason: Some(Reason::Timeout), ..Default::default() }));
        assert!(f(FlowFilter { namespace: Some("app".into()), ..Default::default() }));
        assert!(!f(FlowFilter { namespace: Some("kube-system".into()), ..Default::default() }));
        assert!(f(FlowFilter {
            namespace: Some("kube-system".into()),
            all_namespaces: true,
            ..Default::default()
        }));
        assert!(
            f(FlowFilter { pod: Some("web-1".into()), ..Default::default() })
                && f(FlowFilter { pod: Some("u1".into()), ..Default::default() })
        );
        assert!(!f(FlowFilter { pod: Some("web-2".into()), ..Default::default() }));
        assert!(
            f(FlowFilter { workload: Some("web".into()), ..Default::default() })
                && f(FlowFilter { workload: Some("Deployment/web".into()), ..Default::default() })
        );
        assert!(!f(FlowFilter { workload: Some("api".into()), ..Default::default() }));
        assert!(f(FlowFilter { hop: Some("gke-squid".into()), ..Default::default() }));
        assert!(!f(FlowFilter { hop: Some("gce-proxy".into()), ..Default::default() }));
        for d in ["10.96.0.0/16", "10.1.2.3", "login.example.test", "squid", "intra-proxy/squid"] {
            assert!(
                f(FlowFilter { dst: Some(d.parse().expect("dst")), ..Default::default() }),
                "{d}"
            );
        }
        for d in ["192.168.0.0/16", "10.1.2.4", "other.test", "intra-proxy"] {
            assert!(
                !f(FlowFilter { dst: Some(d.parse().expect("dst")), ..Default::default() }),
                "{d}"
            );
        }
        assert!(
            f(FlowFilter { port: Some(3128), ..Default::default() })
                && f(FlowFilter { port: Some(443), ..Default::default() })
        );
        assert!(!f(FlowFilter { port: Some(80), ..Default::default() }));
        assert!(f(FlowFilter { since: Some(Duration::from_secs(60)), ..Default::default() }));
        assert!(!f(FlowFilter { since: Some(Duration::from_secs(10)), ..Default::default() }));
    }

    #[test]
    fn absurd_since_and_last_are_usage_errors() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_since("3650d"), Ok(MAX_SINCE));
        for bad in ["18446744073709551615", "3651d", "99999999999999d", "1e9", "-1s", ""] {
            assert!(parse_since(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_since("3651d").expect_err("too long").contains("omit --since"));
        assert_eq!(parse_last("20"), Ok(20));
        assert_eq!(parse_last("0"), Ok(0));
        for bad in ["18446744073709551615", "99999999999999999999999", "10000001", "-1", "x", ""] {
            assert!(parse_last(bad).is_err(), "{bad:?} accepted");
        }
        // The bound itself never overflows, whatever the record's time.
        let f = FlowFilter { since: Some(MAX_SINCE), ..Default::default() };
        let far = FlowRecord { time: "9999-12-31T23:59:59.999Z".into(), ..FlowRecord::default() };
        assert!(f.matches_at(&far, SystemTime::now()));
        let f = FlowFilter { since: Some(Duration::MAX), ..Default::default() };
        assert!(f.matches_at(&rec(), SystemTime::now()));
    }

    #[test]
    fn targets() {
        assert_eq!(split_target("a.test:443"), ("a.test", Some(443)));
        assert_eq!(split_target("[fd00::1]:443"), ("fd00::1", Some(443)));
        assert_eq!(split_target("a.test"), ("a.test", None));
        assert!("10.0.0.0/99".parse::<DstMatch>().is_err());
    }
}
