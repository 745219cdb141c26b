//! Stitching: the legs of one request through the proxy chain, joined into a
//! chain record whose verdict names the hop that broke.
//!
//! Causality makes this simple: a proxy answers its client only after its
//! own upstream connection resolved, so when the client leg's record arrives
//! (at the first hop's answer), the upstream legs' records are already here.
//! They are joined by CONNECT target and by time (an upstream leg starts
//! inside its downstream leg's life), never by thread ids.
use std::collections::VecDeque;

use super::judge::judge;
use crate::{
    config::{DIRECT, INTERNET},
    records::{ChainRecord, DnsRecord, FlowRecord, LegSummary, Reason, Verdict, rfc3339},
};

/// How long upstream legs wait to be claimed by a client leg.
const KEEP_NS: u64 = 120_000_000_000;
const KEEP_MAX: usize = 8192;

fn summary(r: &FlowRecord) -> LegSummary {
    LegSummary {
        leg: r.leg.clone().unwrap_or_default(),
        hop: r.hop.clone().unwrap_or_default(),
        flow_id: r.flow_id.clone(),
        dst: r.dst,
        dst_actual: r.dst_actual,
        snat: r.snat,
        verdict: r.verdict,
        reason: r.reason,
        proxy_status: r.proxy_status,
        latency_ms: r.latency_ms,
        retransmits: r.retransmits,
    }
}

/// A failed lookup by a hop's own process: (hop, name, when).
type DnsFailure = (String, String, u64);

#[derive(Default)]
pub struct Stitcher {
    /// Upstream legs (`A->B`, `A->internet`), oldest first.
    upstream: VecDeque<FlowRecord>,
    /// Recent failed lookups by hops, oldest first.
    dns_failures: VecDeque<DnsFailure>,
    seq: u64,
}

impl Stitcher {
    /// Remember a hop's failed lookup: a proxy that cannot resolve the
    /// target answers 5xx with no upstream leg, and this says why.
    pub fn on_dns(&mut self, d: &DnsRecord) {
        let (Some(hop), Reason::DnsFailed) = (&d.asked_by, d.reason.unwrap_or(Reason::Other))
        else {
            return;
        };
        while self
            .dns_failures
            .front()
            .is_some_and(|f| d.record_mono_ns.saturating_sub(f.2) > KEEP_NS)
            || self.dns_failures.len() >= KEEP_MAX
        {
            self.dns_failures.pop_front();
        }
        self.dns_failures.push_back((hop.clone(), d.name.clone(), d.record_mono_ns));
    }

    /// `dns_failed` instead of `proxy_upstream_error` (or `other` for a 500) when the hop that
    /// answered failed to resolve the target's host during the request.
    fn dns_explains(&self, hop: &str, target: Option<&str>, lo: u64, hi: u64) -> bool {
        let Some(host) = target.map(|t| {
            t.rsplit_once(':').map_or(t, |(h, _)| h).trim_matches(['[', ']']).to_ascii_lowercase()
        }) else {
            return false;
        };
        self.dns_failures.iter().any(|(h, n, ts)| h == hop && *n == host && *ts >= lo && *ts <= hi)
    }

    /// Feed a shown record; a chain record comes out for client legs and bypasses.
    pub fn on_record(&mut self, r: &mut FlowRecord) -> Option<ChainRecord> {
        let leg = r.leg.clone()?;
        if r.quiet {
            return None;
        }
        if leg == DIRECT {
            return Some(self.finish(
                r,
                vec![summary(r)],
                Verdict::Failed,
                Some(DIRECT.into()),
                Some(Reason::Bypass),
            ));
        }
        if !leg.starts_with("client->") {
            while self
                .upstream
                .front()
                .is_some_and(|o| r.record_mono_ns.saturating_sub(o.record_mono_ns) > KEEP_NS)
                || self.upstream.len() >= KEEP_MAX
            {
                self.upstream.pop_front();
            }
            self.upstream.push_back(r.clone());
            return None;
        }
        // Walk the chain from the client leg: each next leg starts from the
        // hop this one went to, inside this leg's life, for the same target.
        let mut legs = vec![summary(r)];
        let mut from = r.hop.clone().unwrap_or_default();
        let (mut lo, mut hi) = (r.start_mono_ns, r.record_mono_ns);
        let mut port = r
            .target
            .as_deref()
            .and_then(|t| t.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok());
        while let Some(i) = self.upstream.iter().position(|u| {
            u.leg.as_deref().is_some_and(|l| l.starts_with(&format!("{from}->")))
                && u.start_mono_ns >= lo
                && u.start_mono_ns <= hi
                && match (&u.target, &r.target) {
                    (Some(a), Some(b)) => a == b,
                    // A connect to the next proxy that failed never sent its
                    // CONNECT line: time and hop are all there is.
                    (None, _) if u.hop.as_deref() != Some(INTERNET) => true,
                    // An origin connect has no CONNECT line: match its port.
                    (None, _) => port.is_none_or(|p| u.dst.is_some_and(|d| d.port() == p)),
                    _ => false,
                }
        }) {
            let Some(u) = self.upstream.remove(i) else { break };
            legs.push(summary(&u));
            from = u.hop.clone().unwrap_or_default();
            (lo, hi) = (u.start_mono_ns, u.record_mono_ns);
            if from == INTERNET {
                break;
            }
            port = port.or_else(|| {
                u.target
                    .as_deref()
                    .and_then(|t| t.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
            });
        }
        let (verdict, hop, mut reason) = judge(&legs);
        // Squid answers a failed lookup with 500 or 503 (ERR_DNS_FAIL), no upstream leg.
        let answered_5xx = r.proxy_status.is_some_and(|s| s >= 500)
            && matches!(reason, Some(Reason::ProxyUpstreamError | Reason::Other));
        if answered_5xx
            && hop.as_deref().is_some_and(|h| {
                self.dns_explains(h, r.target.as_deref(), r.start_mono_ns, r.record_mono_ns)
            })
        {
            reason = Some(Reason::DnsFailed);
        }
        let c = self.finish(r, legs, verdict, hop, reason);
        r.chain_id = Some(c.chain_id.clone());
        Some(c)
    }

    fn finish(
        &mut self,
        r: &FlowRecord,
        legs: Vec<LegSummary>,
        verdict: Verdict,
        failed_hop: Option<String>,
        reason: Option<Reason>,
    ) -> ChainRecord {
        self.seq += 1;
        ChainRecord {
            chain_id: format!("{:x}-{}", r.start_mono_ns, self.seq),
            time: if r.time.is_empty() {
                rfc3339(std::time::SystemTime::now())
            } else {
                r.time.clone()
            },
            target: r.target.clone(),
            namespace: r.namespace.clone(),
            pod: r.pod.clone(),
            workload: r.workload.clone(),
            unit: r.unit.clone(),
            comm: r.comm.clone(),
            pid: r.pid,
            proxy_status: r.proxy_status,
            legs,
            verdict,
            failed_hop,
            reason,
            src: r.src,
            synthetic: r.synthetic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "client->gke-squid";
    const H: &str = "gke-squid->gce-proxy";
    const O: &str = "gce-proxy->internet";

    fn rec(
        leg: &str,
        hop: &str,
        start: u64,
        end: u64,
        target: Option<&str>,
        status: Option<u16>,
        verdict: Verdict,
    ) -> FlowRecord {
        FlowRecord {
            leg: Some(leg.into()),
            hop: Some(hop.into()),
            start_mono_ns: start,
            record_mono_ns: end,
            target: target.map(str::to_string),
            proxy_status: status,
            verdict,
            dst: Some("203.0.113.5:443".parse().expect("addr")),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn stitches_by_target_and_time() {
        use Verdict::{Failed, Ok};
        let mut s = Stitcher::default();
        let t = Some("login.example.test:443");
        // Another request's legs, outside the time window: not joined.
        assert!(s.on_record(&mut rec(H, "gce-proxy", 5, 6, t, Some(200), Ok)).is_none());
        assert!(s.on_record(&mut rec(O, "internet", 120, 130, None, None, Failed)).is_none());
        assert!(s.on_record(&mut rec(H, "gce-proxy", 110, 140, t, Some(503), Failed)).is_none());
        let mut client = rec(C, "gke-squid", 100, 150, t, Some(503), Failed);
        let c = s.on_record(&mut client).expect("chain");
        assert_eq!(c.legs.len(), 3, "{c:?}");
        assert_eq!(c.failed_hop.as_deref(), Some("internet"));
        assert_eq!(client.chain_id.as_deref(), Some(c.chain_id.as_str()));
        assert_eq!(s.upstream.len(), 1, "the unrelated leg stays");
        // The next proxy refused the connect: no CONNECT line on that leg.
        assert!(s.on_record(&mut rec(H, "gce-proxy", 210, 211, None, None, Failed)).is_none());
        let c =
            s.on_record(&mut rec(C, "gke-squid", 200, 260, t, Some(503), Failed)).expect("chain");
        assert_eq!((c.legs.len(), c.failed_hop.as_deref()), (2, Some("gce-proxy")));
        // hop 2 answers 503 because it could not resolve the target: dns_failed.
        let dns = DnsRecord {
            asked_by: Some("gce-proxy".into()),
            name: "login.example.test".into(),
            reason: Some(Reason::DnsFailed),
            record_mono_ns: 305,
            ..Default::default()
        };
        s.on_dns(&dns);
        assert!(s.on_record(&mut rec(H, "gce-proxy", 302, 310, t, Some(500), Failed)).is_none());
        let c =
            s.on_record(&mut rec(C, "gke-squid", 300, 320, t, Some(500), Failed)).expect("chain");
        assert_eq!(
            (c.failed_hop.as_deref(), c.reason),
            (Some("gce-proxy"), Some(Reason::DnsFailed))
        );
        // The same 503 without a failed lookup stays an upstream error.
        assert!(s.on_record(&mut rec(H, "gce-proxy", 402, 410, t, Some(503), Failed)).is_none());
        let c =
            s.on_record(&mut rec(C, "gke-squid", 400, 420, t, Some(503), Failed)).expect("chain");
        assert_eq!(c.reason, Some(Reason::ProxyUpstreamError));
        // A bypass is a chain of one.
        let c = s.on_record(&mut rec(DIRECT, DIRECT, 1, 2, None, None, Failed)).expect("chain");
        assert_eq!((c.failed_hop.as_deref(), c.reason), (Some("direct"), Some(Reason::Bypass)));
    }
}
