//! `egress-agent explain HOST[:PORT]`: the recent attempts to reach one
//! target, hop by hop, and a one-line conclusion an on-call engineer can
//! paste into a ticket.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use clap::Args;
use serde::Serialize;

use super::attempt::{Attempt, Step};
use super::{
    args::{ApiArgs, EXIT_NO_DATA},
    assemble,
    filter::{parse_last, parse_since, split_target},
    peer_args::AssembleArgs,
    table::{addr, fit, latency, printable},
};
use crate::{
    api::{client, wire::Message},
    records::{
        ChainRecord, DnsRecord, FlowRecord, Reason, Record, Verdict, parse_rfc3339, rfc3339,
    },
};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The destination: a CONNECT target's host, a Service name, or an
    /// address; with `:PORT` only that port.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// How far back to look (at most 3650d).
    #[arg(long, value_parser = parse_since, default_value = "1h", value_name = "DURATION")]
    pub since: Duration,
    /// How many of the most recent attempts to print hop by hop.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = parse_last)]
    pub last: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainFormat::Table)]
    pub output: ExplainFormat,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub peers: AssembleArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub target: String,
    pub since: String,
    pub attempts: usize,
    pub failures: usize,
    /// `failing`, `degraded` or `healthy`.
    pub state: &'static str,
    pub hop: Option<String>,
    pub reason: Option<Reason>,
    pub proxy_status: Option<u16>,
    /// When the current state began (the first attempt of the current run).
    pub state_since: Option<String>,
    pub conclusion: String,
    /// The most recent attempts, newest last.
    pub recent: Vec<Attempt>,
}

fn who(ns: Option<&str>, pod: Option<&str>, unit: Option<&str>, comm: &str) -> String {
    match (ns, pod, unit) {
        (Some(ns), Some(p), _) => format!("{ns}/{p}"),
        (_, Some(p), _) => p.to_string(),
        (_, _, Some(u)) => u.to_string(),
        _ => comm.to_string(),
    }
}

fn from_chain(c: &ChainRecord) -> Attempt {
    Attempt {
        time: c.time.clone(),
        who: who(c.namespace.as_deref(), c.pod.as_deref(), c.unit.as_deref(), &c.comm),
        pid: c.pid,
        comm: c.comm.clone(),
        chain_id: Some(c.chain_id.clone()),
        target: c.target.clone(),
        sni: c.sni.clone(),
        verdict: c.verdict,
        failed_hop: c.failed_hop.clone(),
        reason: c.reason,
        proxy_status: c.proxy_status,
        vantage: "full",
        client_view: None,
        policy_verdict: None,
        policy: None,
        flow_id: c.legs.first().map(|l| l.flow_id.clone()),
        assembled: None,
        hops: c
            .legs
            .iter()
            .map(|l| Step {
                hop: l.hop.clone(),
                leg: Some(l.leg.clone()),
                verdict: l.verdict,
                reason: l.reason,
                proxy_status: l.proxy_status,
                latency_ms: l.latency_ms,
                retransmits: l.retransmits,
                dst: l.dst,
                dst_actual: l.dst_actual,
                snat: l.snat,
            })
            .collect(),
    }
}

fn from_flow(r: &FlowRecord) -> Attempt {
    let hop = r.hop.clone().unwrap_or_else(|| "-".into());
    Attempt {
        time: r.time.clone(),
        who: who(r.namespace.as_deref(), r.pod.as_deref(), r.unit.as_deref(), &r.comm),
        pid: r.pid,
        comm: r.comm.clone(),
        chain_id: r.chain_id.clone(),
        // A TLS flow's destination is its server name, on the port it went to.
        target: r
            .target
            .clone()
            .or_else(|| {
                r.sni
                    .as_ref()
                    .map(|n| r.dst.map_or_else(|| n.clone(), |d| format!("{n}:{}", d.port())))
            })
            .or_else(|| r.dst.map(|d| d.to_string())),
        sni: r.sni.clone(),
        verdict: r.verdict,
        failed_hop: r.hop.clone().filter(|_| r.verdict != Verdict::Ok),
        reason: r.reason,
        proxy_status: r.proxy_status,
        vantage: if r.vantage.is_some() { "client" } else { "full" },
        client_view: r.evidence.clone(),
        policy_verdict: r.policy_verdict,
        policy: r.policy.clone(),
        flow_id: Some(r.flow_id.clone()),
        assembled: None,
        hops: vec![Step {
            hop,
            leg: r.leg.clone(),
            verdict: r.verdict,
            reason: r.reason,
            proxy_status: r.proxy_status,
            latency_ms: r.latency_ms,
            retransmits: r.retransmits,
            dst: r.dst,
            dst_actual: r.dst_actual,
            snat: r.snat,
        }],
    }
}

/// A client's failed lookup (not a hop's: those are in the chain records
/// they broke) is an attempt that failed before any connection.
fn from_dns(d: &DnsRecord) -> Option<Attempt> {
    if d.verdict != Verdict::Failed || d.asked_by.is_some() {
        return None;
    }
    Some(Attempt {
        time: d.time.clone(),
        who: who(
            d.namespace.as_deref(),
            d.pod.as_deref(),
            d.unit.as_deref(),
            d.cgroup.as_deref().unwrap_or("?"),
        ),
        pid: 0,
        comm: "dns".into(),
        chain_id: None,
        target: Some(d.name.clone()),
        sni: None,
        verdict: Verdict::Failed,
        failed_hop: d.hop.clone(),
        reason: d.reason,
        proxy_status: None,
        // The client's own lookup: what its node alone saw.
        vantage: "client",
        client_view: None,
        policy_verdict: None,
        policy: None,
        flow_id: None,
        assembled: None,
        hops: vec![Step {
            hop: d.hop.clone().unwrap_or_else(|| "dns".into()),
            leg: Some(format!("dns {} {}", d.qtype, d.rcode)),
            verdict: Verdict::Failed,
            reason: d.reason,
            proxy_status: None,
            latency_ms: d.latency_ms,
            retransmits: 0,
            dst: d.server,
            dst_actual: None,
            snat: None,
        }],
    })
}

/// What the user asked about.
pub struct Wanted {
    host: String,
    ip: Option<IpAddr>,
    port: Option<u16>,
}

impl Wanted {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (host, port) = split_target(s.trim());
        anyhow::ensure!(!host.is_empty(), "empty target {s:?}: expected HOST[:PORT]");
        if s.rsplit_once(':').is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_err()) {
            anyhow::bail!("bad port in {s:?}: expected HOST[:PORT] with PORT 1-65535");
        }
        Ok(Self { host: host.to_ascii_lowercase(), ip: host.parse().ok(), port })
    }

    fn target(&self, t: Option<&str>) -> bool {
        t.is_some_and(|t| {
            let (h, p) = split_target(t);
            h.eq_ignore_ascii_case(&self.host) && self.port.is_none_or(|w| p == Some(w))
        })
    }

    fn addr(&self, a: Option<SocketAddr>) -> bool {
        a.is_some_and(|a| Some(a.ip()) == self.ip && self.port.is_none_or(|p| p == a.port()))
    }

    fn chain(&self, c: &ChainRecord) -> bool {
        self.target(c.target.as_deref())
            || c.legs.iter().any(|l| self.addr(l.dst) || self.addr(l.dst_actual))
    }

    fn flow(&self, r: &FlowRecord) -> bool {
        let name = r.dst_name.as_deref().map(|d| d.rsplit_once(':').map_or(d, |(a, _)| a));
        let by_name = name.is_some_and(|n| {
            n.eq_ignore_ascii_case(&self.host)
                || n.split_once('/').is_some_and(|(_, s)| s.eq_ignore_ascii_case(&self.host))
        }) && self.port.is_none_or(|p| r.dst.is_some_and(|d| d.port() == p));
        // A TLS server name matches its host (its port is the destination's).
        let by_sni = r.sni.as_deref().is_some_and(|n| {
            n.eq_ignore_ascii_case(&self.host)
                && self.port.is_none_or(|p| r.dst_actual.or(r.dst).is_some_and(|d| d.port() == p))
        });
        self.target(r.target.as_deref())
            || self.addr(r.dst)
            || self.addr(r.dst_actual)
            || by_name
            || by_sni
    }
}

/// The attempts to `want` in `records` newer than `since`, oldest first.
pub fn attempts(records: &[Record], want: &Wanted, since: SystemTime) -> Vec<Attempt> {
    let in_chains: HashSet<&str> = records
        .iter()
        .filter_map(|r| if let Record::Chain(c) = r { Some(c) } else { None })
        .flat_map(|c| c.legs.iter().map(|l| l.flow_id.as_str()))
        .collect();
    // A chain amended by a late leg: its last revision stands.
    let mut latest: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for r in records {
        if let Record::Chain(c) = r {
            let e = latest.entry(c.chain_id.as_str()).or_insert(c.revision);
            *e = (*e).max(c.revision);
        }
    }
    // The client leg of each chain: what the client's node alone says.
    let client_of: std::collections::HashMap<&str, &FlowRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) if f.vantage.is_some() => Some((f.chain_id.as_deref()?, f)),
            _ => None,
        })
        .collect();
    let recent = |t: &str| parse_rfc3339(t).is_some_and(|t| t >= since);
    let mut out: Vec<Attempt> = records
        .iter()
        .filter_map(|r| match r {
            Record::Chain(c)
                if recent(&c.time)
                    && want.chain(c)
                    && latest.get(c.chain_id.as_str()) == Some(&c.revision) =>
            {
                let mut a = from_chain(c);
                if let Some(f) = client_of.get(c.chain_id.as_str()) {
                    a.client_view = Some(client_line(f));
                    a.policy_verdict = f.policy_verdict;
                    a.policy = f.policy.clone();
                }
                Some(a)
            }
            Record::Flow(f)
                if recent(&f.time)
                    && !in_chains.contains(f.flow_id.as_str())
                    && f.chain_id.is_none()
                    && !from_a_hop(f)
                    && want.flow(f) =>
            {
                Some(from_flow(f))
            }
            Record::Dns(d)
                if recent(&d.time)
                    && d.name.trim_end_matches('.').eq_ignore_ascii_case(&want.host) =>
            {
                from_dns(d)
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.time.cmp(&b.time));
    out
}

/// A leg a hop's own process opened (`gke-squid->gce-proxy`): part of some
/// request's chain, which speaks for it (it may still be settling), never
/// an attempt of its own.
fn from_a_hop(f: &FlowRecord) -> bool {
    f.leg.as_deref().is_some_and(|l| l.split_once("->").is_some_and(|(from, _)| from != "client"))
}

/// `failed at gce-proxy: proxy_denied — 403 Forbidden made by gce-proxy (…)`.
fn client_line(f: &FlowRecord) -> String {
    let verdict = match (&f.failed_hop, f.reason) {
        (Some(h), Some(r)) => format!("{} at {h}: {}", f.verdict.as_str(), r.as_str()),
        (None, Some(r)) => format!("{}: {}", f.verdict.as_str(), r.as_str()),
        _ => f.verdict.as_str().to_string(),
    };
    match &f.evidence {
        Some(e) => format!("{verdict} — {e}"),
        None => verdict,
    }
}

fn hhmmss(t: &str) -> &str {
    t.get(11..19).unwrap_or(t)
}

/// The conclusion over `attempts` (oldest first, not empty).
pub fn explain(target: &str, since: SystemTime, attempts: &[Attempt], keep: usize) -> Explanation {
    let total = attempts.len();
    let failures = attempts.iter().filter(|a| a.verdict == Verdict::Failed).count();
    let last = attempts.last();
    let key = |a: &Attempt| (a.verdict, a.failed_hop.clone(), a.reason, a.proxy_status);
    let (state, hop, reason, status, state_since, conclusion) = match last {
        Some(l) if l.verdict != Verdict::Ok => {
            let k = key(l);
            let run_start = attempts
                .iter()
                .rev()
                .take_while(|a| key(a) == k)
                .last()
                .map_or(l.time.as_str(), |a| a.time.as_str());
            let same = attempts.iter().filter(|a| key(a) == k).count();
            let state = if l.verdict == Verdict::Failed { "failing" } else { "degraded" };
            let what = match (l.proxy_status, l.reason) {
                (Some(s), Some(r)) if s >= 400 => format!("{s} {}", r.as_str()),
                (_, Some(r)) => r.as_str().to_string(),
                _ => l.verdict.as_str().to_string(),
            };
            let mut at =
                l.failed_hop.as_deref().map_or_else(String::new, |h| format!(" at hop {h}"));
            if l.reason == Some(Reason::PolicyDenied)
                && let Some(p) = &l.policy
            {
                at.push_str(&format!(" (NetworkPolicy {})", p.replace(',', ", ")));
            }
            let text = format!(
                "{state}{at}: {what} since {}, {same} of {total} attempts",
                hhmmss(run_start)
            );
            (
                state,
                l.failed_hop.clone(),
                l.reason,
                l.proxy_status,
                Some(run_start.to_string()),
                text,
            )
        }
        Some(l) => {
            let oks: Vec<f64> = attempts
                .iter()
                .filter(|a| a.verdict == Verdict::Ok)
                .filter_map(|a| a.hops.first().map(|h| h.latency_ms))
                .collect();
            let mut sorted = oks.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            let via: Vec<&str> = l.hops.iter().map(|h| h.hop.as_str()).collect();
            let mut text = format!(
                "healthy: last attempt ok via {}; {} of {total} attempts ok, median connect {}",
                via.join(" > "),
                oks.len(),
                latency(median)
            );
            if let Some(f) = attempts.iter().rev().find(|a| a.verdict != Verdict::Ok) {
                text.push_str(&format!(
                    "; last problem at {}: {} at hop {}",
                    hhmmss(&f.time),
                    f.reason.map_or(f.verdict.as_str(), |r| r.as_str()),
                    f.failed_hop.as_deref().unwrap_or("-")
                ));
            }
            let run_start = attempts
                .iter()
                .rev()
                .take_while(|a| a.verdict == Verdict::Ok)
                .last()
                .map(|a| a.time.clone());
            ("healthy", None, None, None, run_start, text)
        }
        None => ("healthy", None, None, None, None, String::new()),
    };
    Explanation {
        target: target.to_string(),
        since: rfc3339(since),
        attempts: total,
        failures,
        state,
        hop,
        reason,
        proxy_status: status,
        state_since,
        conclusion,
        recent: attempts[total.saturating_sub(keep)..].to_vec(),
    }
}

pub fn render(e: &Explanation) -> String {
    let mut o = format!(
        "{}: {} attempts since {} ({} failed)\n",
        e.target, e.attempts, e.since, e.failures
    );
    for a in &e.recent {
        let verdict = match (&a.failed_hop, a.reason) {
            (Some(h), Some(r)) if a.verdict != Verdict::Ok => {
                format!("{} at {h}: {}", a.verdict.as_str(), r.as_str())
            }
            (None, Some(r)) => format!("{}: {}", a.verdict.as_str(), r.as_str()),
            _ => a.verdict.as_str().to_string(),
        };
        o.push_str(&format!(
            "\n{}  {} ({} pid {})  {}  => {verdict}\n",
            a.time.get(11..23).unwrap_or(&a.time),
            a.who,
            a.comm,
            a.pid,
            a.target.as_deref().unwrap_or("-")
        ));
        if let Some(w) = &a.assembled {
            o.push_str(&assemble::render(w));
            continue;
        }
        o.push_str(&format!(
            "  {:<14} {:<28} {:<9} {:<21} {:<6} {:<9} {:<4} {}\n",
            "HOP", "LEG", "VERDICT", "REASON", "STATUS", "LATENCY", "RETX", "DST -> ACTUAL (SNAT)"
        ));
        for h in &a.hops {
            let mut dst = addr(h.dst);
            if h.dst_actual.is_some() && h.dst_actual != h.dst {
                dst.push_str(&format!(" -> {}", addr(h.dst_actual)));
            }
            if let Some(s) = h.snat {
                dst.push_str(&format!(" (snat {s})"));
            }
            o.push_str(&format!(
                "  {:<14} {:<28} {:<9} {:<21} {:<6} {:<9} {:<4} {dst}\n",
                fit(&h.hop, 14),
                fit(h.leg.as_deref().unwrap_or("-"), 28),
                h.verdict.as_str(),
                h.reason.map_or("-", |r| r.as_str()),
                h.proxy_status.map_or_else(|| "-".into(), |s| s.to_string()),
                latency(h.latency_ms),
                h.retransmits,
            ));
        }
        if let Some(n) = &a.sni {
            o.push_str(&format!("  tls: server name (SNI) {n}\n"));
        }
        if let Some(c) = &a.client_view {
            o.push_str(&format!("  client node alone: {c}\n"));
        }
        if let Some(p) = a.policy_line() {
            o.push_str(&format!("  {p}\n"));
        }
    }
    o.push_str(&format!("\nConclusion: {}\n", e.conclusion));
    o
}

/// `1h30m`, `45s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let parts = [(s / 86_400, "d"), (s / 3600 % 24, "h"), (s / 60 % 60, "m"), (s % 60, "s")];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect()
}

pub async fn run(args: ExplainArgs) -> anyhow::Result<u8> {
    let want = Wanted::parse(&args.target)?;
    let records: Vec<Record> = client::snapshot(&args.api.api_socket)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            Message::Record(r) => Some(r),
            Message::Control(_) => None,
        })
        .collect();
    let since = SystemTime::now().checked_sub(args.since).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut found = attempts(&records, &want, since);
    if args.peers.assemble && !found.is_empty() {
        found = assemble::assemble(&records, found, &args.peers).await?;
    }
    if found.is_empty() {
        eprintln!(
            "no recent flows to {} in the last {} (the agent holds {} records; widen --since, or check the name: targets are matched by CONNECT host, Service name or address)",
            args.target,
            human(args.since),
            records.len()
        );
        return Ok(EXIT_NO_DATA);
    }
    let e = explain(&args.target, since, &found, args.last.max(1));
    match args.output {
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&e)?),
        // Names, targets and hops come from the traffic: control characters
        // are escaped (the JSON above is exact).
        ExplainFormat::Table => {
            for line in render(&e).lines() {
                println!("{}", printable(line));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
