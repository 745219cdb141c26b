//! Stitching: the legs of one request through the proxy chain, joined into a
//! chain record whose verdict names the hop that broke.
//!
//! Legs are joined by CONNECT target and by time (an upstream leg starts
//! inside its downstream leg's life), never by thread ids, and never by the
//! order their records arrive in: a record may wait for its conntrack entry
//! (up to `NAT_WAIT`) or for its proxy's answer, so a client leg can overtake
//! its own upstream legs. A client leg's chain is judged once it has
//! settled ([`SETTLE_NS`] after its record); an upstream leg that comes
//! later still, but within [`AMEND_NS`], amends the chain it belongs to: the
//! chain record goes out again with the same `chain_id` and a higher
//! `revision`.
//!
//! A hop's accepted connection (`vantage: hop`) roots a chain of its own,
//! from that hop on (`"vantage":"hop"`), unless this agent also saw the
//! other end of that link: a local leg whose `(src, dst_actual)` (or its
//! SNAT source) is the accepted connection's `(peer, local)` — an exact
//! join key, not a time window. Then the chain rooted at the client's leg
//! already holds that link, and the accepted connection adds nothing.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::{
    flow_table::HOP_VANTAGE,
    judge::{hop_chain, judge},
};
use crate::{
    config::{DIRECT, INTERNET},
    records::{ChainRecord, DnsRecord, FlowRecord, LegSummary, Phase, Reason, Verdict, rfc3339},
};

/// How long upstream legs wait to be claimed by a client leg.
const KEEP_NS: u64 = 120_000_000_000;
const KEEP_MAX: usize = 8192;
/// The destination of a link known by its client end alone.
const ANY_END: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
/// How long a client leg waits for legs that trail it before its chain is
/// judged: longer than a record's wait for its conntrack entry.
pub const SETTLE_NS: u64 = 300_000_000;
/// How long a judged chain may still be amended by a late upstream leg.
pub const AMEND_NS: u64 = 5_000_000_000;
/// Chains waiting to settle, or open to amendment, at most.
const OPEN_MAX: usize = 4096;

/// Where a chain's walk stands: the hop it reached, that leg's life, and
/// what the next leg must match.
#[derive(Debug, Clone)]
struct Walk {
    from: String,
    lo: u64,
    hi: u64,
    port: Option<u16>,
    target: Option<String>,
    /// The client's TLS server name (an SNI router's origin leg has no
    /// CONNECT line, and may connect to another port).
    sni: Option<String>,
}

impl Walk {
    fn of(r: &FlowRecord) -> Self {
        Self {
            from: r.hop.clone().unwrap_or_default(),
            lo: r.start_mono_ns,
            hi: r.record_mono_ns,
            // Through an SNI router (a server name, no proxy answer) the
            // target's port is where the client connected: the origin's
            // port is not known.
            port: target_port(r.target.as_deref())
                .filter(|_| r.sni.is_none() || r.proxy_status.is_some()),
            target: r.target.clone(),
            sni: r.sni.clone(),
        }
    }

    /// Whether `u` is the next leg of this walk.
    fn next(&self, u: &FlowRecord) -> bool {
        // Every kept upstream leg is tried for every walk: the time bounds
        // first, and the leg's name compared in place (a `format!` here was
        // a third of the agent's allocations under a proxy's load).
        u.start_mono_ns >= self.lo
            && u.start_mono_ns <= self.hi
            && u.leg.as_deref().is_some_and(|l| {
                l.strip_prefix(self.from.as_str()).is_some_and(|rest| rest.starts_with("->"))
            })
            && match (&u.target, &self.target) {
                (Some(a), Some(b)) => a == b,
                // A connect to the next proxy that failed never sent its
                // CONNECT line: time and hop are all there is.
                (None, _) if u.hop.as_deref() != Some(INTERNET) => true,
                // An origin connect has no CONNECT line: match its server
                // name (a TLS origin's), else its port.
                (None, _) => match (&u.sni, &self.sni) {
                    (Some(a), Some(b)) => a == b,
                    _ => self.port.is_none_or(|p| u.dst.is_some_and(|d| d.port() == p)),
                },
                _ => false,
            }
    }

    /// Step onto `u`; false when the walk is done (it reached the internet).
    fn step(&mut self, u: &FlowRecord) -> bool {
        self.from = u.hop.clone().unwrap_or_default();
        (self.lo, self.hi) = (u.start_mono_ns, u.record_mono_ns);
        self.port = self.port.or_else(|| target_port(u.target.as_deref()));
        self.from != INTERNET
    }
}

fn target_port(t: Option<&str>) -> Option<u16> {
    t.and_then(|t| t.rsplit_once(':')).and_then(|(_, p)| p.parse::<u16>().ok())
}

/// A judged chain still open to late legs.
struct Open {
    chain: ChainRecord,
    client: FlowRecord,
    walk: Option<Walk>,
    until: u64,
}

/// A leg of a chain record, from its flow record.
pub fn summary(r: &FlowRecord) -> LegSummary {
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
        syn_retransmits: r.syn_retransmits,
    }
}

/// A failed lookup by a hop's own process: (hop, name, when).
type DnsFailure = (String, String, u64);

#[derive(Default)]
pub struct Stitcher {
    /// Upstream legs (`A->B`, `A->internet`), oldest first.
    upstream: VecDeque<FlowRecord>,
    /// Client legs waiting to settle: (when, the client leg), in order.
    pending: VecDeque<(u64, FlowRecord)>,
    /// Judged chains a late leg may still amend, oldest first.
    open: VecDeque<Open>,
    /// Recent failed lookups by hops, oldest first.
    dns_failures: VecDeque<DnsFailure>,
    /// A hop's accepted connections waiting to settle: (when, the record).
    accepted: VecDeque<(u64, FlowRecord)>,
    /// Links whose client end this agent saw: (source, destination) →
    /// when, and their order for expiry.
    links: HashMap<(SocketAddr, SocketAddr), u64>,
    link_order: VecDeque<(u64, (SocketAddr, SocketAddr))>,
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

    /// Feed a shown record. A bypass is a chain of one at once; a client
    /// leg gets its chain id now and its chain once it settled
    /// ([`Self::tick`]); an upstream leg waits to be claimed, or amends a
    /// judged chain it belongs to (that chain comes out again).
    pub fn on_record(&mut self, r: &mut FlowRecord) -> Option<ChainRecord> {
        let leg = r.leg.clone()?;
        let accepted = r.vantage.as_deref() == Some(HOP_VANTAGE);
        if !accepted {
            self.note_link(r);
        }
        if r.quiet {
            return None;
        }
        if accepted {
            // Only the accepted connection's answer roots a hop chain: its
            // close (worse than its connect: a reset, or data retransmits,
            // which a slow machine makes on a healthy path) is its own
            // record, not a second request.
            if r.phase != Phase::Connect {
                return None;
            }
            r.chain_id = Some(self.next_id(r));
            while self.accepted.len() >= OPEN_MAX {
                self.accepted.pop_front();
            }
            self.accepted.push_back((r.record_mono_ns.saturating_add(SETTLE_NS), r.clone()));
            return None;
        }
        if leg == DIRECT {
            let id = self.next_id(r);
            return Some(self.finish(
                r,
                id,
                vec![summary(r)],
                Verdict::Failed,
                Some(DIRECT.into()),
                Some(Reason::Bypass),
            ));
        }
        if leg.starts_with("client->") {
            r.chain_id = Some(self.next_id(r));
            if self.pending.len() >= OPEN_MAX {
                // Judged early rather than held without bound.
                if let Some((_, c)) = self.pending.pop_front() {
                    let chain = self.judge_chain(c);
                    return Some(chain);
                }
            }
            self.pending.push_back((r.record_mono_ns.saturating_add(SETTLE_NS), r.clone()));
            return None;
        }
        if let Some(chain) = self.amend(r) {
            return Some(chain);
        }
        while self
            .upstream
            .front()
            .is_some_and(|o| r.record_mono_ns.saturating_sub(o.record_mono_ns) > KEEP_NS)
            || self.upstream.len() >= KEEP_MAX
        {
            self.upstream.pop_front();
        }
        self.upstream.push_back(r.clone());
        None
    }

    /// Remember the link a local leg's client end is on (with its SNAT
    /// source too: the far end sees that one).
    ///
    /// The client end alone is kept too (its destination [`ANY_END`]): where
    /// a DNAT on this machine is not known (conntrack off, or its entry not
    /// yet read) the leg's `dst_actual` is the Service address while the hop
    /// saw the pod's; the client's own source address and port still name
    /// that one socket on this machine exactly.
    fn note_link(&mut self, r: &FlowRecord) {
        let (Some(dst), now) = (r.dst_actual.or(r.dst), r.record_mono_ns) else { return };
        for src in [r.src, r.snat].into_iter().flatten().filter(|s| s.port() != 0) {
            for key in [(src, dst), (src, ANY_END)] {
                // Every sighting goes in the expiry order: a key seen again
                // (a flow's close after its connect) carries the newer time,
                // and only the entry with that time removes it. Queued only
                // when new, a key seen twice was never removed.
                if self.links.insert(key, now) != Some(now) {
                    self.link_order.push_back((now, key));
                }
            }
        }
        while self.link_order.front().is_some_and(|(t, _)| now.saturating_sub(*t) > KEEP_NS)
            || self.link_order.len() > KEEP_MAX
        {
            if let Some((t, k)) = self.link_order.pop_front()
                && self.links.get(&k) == Some(&t)
            {
                self.links.remove(&k);
            }
        }
    }

    /// Whether this agent saw the client end of `r`'s link.
    fn seen_locally(&self, r: &FlowRecord) -> bool {
        let (Some(peer), Some(local)) = (r.src, r.dst_actual.or(r.dst)) else { return false };
        self.links.contains_key(&(peer, local)) || self.links.contains_key(&(peer, ANY_END))
    }

    /// Whether a client leg or an accepted connection waits to settle.
    pub fn waiting(&self) -> bool {
        !self.pending.is_empty() || !self.accepted.is_empty()
    }

    /// Time passed (`now`, CLOCK_MONOTONIC ns; `None`: everything is due):
    /// chains of settled client legs, judged.
    pub fn tick(&mut self, now: Option<u64>) -> Vec<ChainRecord> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|(due, _)| now.is_none_or(|n| *due <= n)) {
            let Some((_, client)) = self.pending.pop_front() else { break };
            out.push(self.judge_chain(client));
        }
        while self.accepted.front().is_some_and(|(due, _)| now.is_none_or(|n| *due <= n)) {
            let Some((_, a)) = self.accepted.pop_front() else { break };
            if !self.seen_locally(&a) {
                out.push(self.judge_chain(a));
            }
        }
        if let Some(n) = now {
            while self.open.front().is_some_and(|o| o.until <= n) {
                self.open.pop_front();
            }
        }
        out
    }

    /// Walk the chain from a client leg over the upstream legs here, judge
    /// it, and keep it open to late legs.
    fn judge_chain(&mut self, client: FlowRecord) -> ChainRecord {
        let mut legs = vec![summary(&client)];
        let mut walk = Some(Walk::of(&client));
        self.extend(&mut walk, &mut legs);
        let chain = self.judged(&client, legs);
        while self.open.len() >= OPEN_MAX {
            self.open.pop_front();
        }
        self.open.push_back(Open {
            chain: chain.clone(),
            until: client.record_mono_ns.saturating_add(AMEND_NS),
            client,
            walk,
        });
        chain
    }

    /// Take every upstream leg that continues `walk`, in chain order.
    fn extend(&mut self, walk: &mut Option<Walk>, legs: &mut Vec<LegSummary>) {
        while let Some(w) = walk.as_mut() {
            let Some(i) = self.upstream.iter().position(|u| w.next(u)) else { break };
            let Some(u) = self.upstream.remove(i) else { break };
            legs.push(summary(&u));
            if !w.step(&u) {
                *walk = None;
            }
        }
    }

    /// A late upstream leg that continues a judged chain: the chain again,
    /// amended (same id, next revision).
    fn amend(&mut self, r: &FlowRecord) -> Option<ChainRecord> {
        let i = self.open.iter().position(|o| o.walk.as_ref().is_some_and(|w| w.next(r)))?;
        let mut o = self.open.remove(i)?;
        let mut legs = std::mem::take(&mut o.chain.legs);
        legs.push(summary(r));
        if let Some(w) = o.walk.as_mut()
            && !w.step(r)
        {
            o.walk = None;
        }
        self.extend(&mut o.walk, &mut legs);
        let mut chain = self.judged(&o.client, legs);
        chain.chain_id = o.chain.chain_id.clone();
        chain.revision = o.chain.revision + 1;
        o.chain = chain.clone();
        self.open.push_back(o);
        Some(chain)
    }

    /// The chain of `client` over `legs`, with its verdict.
    fn judged(&self, client: &FlowRecord, legs: Vec<LegSummary>) -> ChainRecord {
        let (verdict, hop, mut reason) = if client.vantage.as_deref() == Some(HOP_VANTAGE) {
            let own = (client.verdict, client.failed_hop.clone(), client.reason);
            hop_chain(own, legs.iter().skip(1), || judge(&legs))
        } else {
            judge(&legs)
        };
        // Squid answers a failed lookup with 500 or 503 (ERR_DNS_FAIL), no upstream leg.
        let answered_5xx = client.proxy_status.is_some_and(|s| s >= 500)
            && matches!(reason, Some(Reason::ProxyUpstreamError | Reason::Other));
        if answered_5xx
            && hop.as_deref().is_some_and(|h| {
                self.dns_explains(
                    h,
                    client.target.as_deref(),
                    client.start_mono_ns,
                    client.record_mono_ns,
                )
            })
        {
            reason = Some(Reason::DnsFailed);
        }
        let id = client.chain_id.clone().unwrap_or_default();
        self.finish(client, id, legs, verdict, hop, reason)
    }

    fn next_id(&mut self, r: &FlowRecord) -> String {
        self.seq += 1;
        format!("{:x}-{}", r.start_mono_ns, self.seq)
    }

    fn finish(
        &self,
        r: &FlowRecord,
        chain_id: String,
        legs: Vec<LegSummary>,
        verdict: Verdict,
        failed_hop: Option<String>,
        reason: Option<Reason>,
    ) -> ChainRecord {
        // A hop's chain: the requester is its peer (`src`); the owner
        // fields would name the hop itself.
        let hop_root = r.vantage.as_deref() == Some(HOP_VANTAGE);
        let own = |v: &Option<String>| if hop_root { None } else { v.clone() };
        ChainRecord {
            chain_id,
            revision: 0,
            time: if r.time.is_empty() {
                rfc3339(std::time::SystemTime::now())
            } else {
                r.time.clone()
            },
            target: r.target.clone(),
            sni: r.sni.clone(),
            namespace: own(&r.namespace),
            pod: own(&r.pod),
            workload: own(&r.workload),
            unit: own(&r.unit),
            comm: if hop_root { String::new() } else { r.comm.clone() },
            pid: if hop_root { 0 } else { r.pid },
            proxy_status: r.proxy_status,
            legs,
            verdict,
            failed_hop,
            reason,
            src: r.src,
            synthetic: r.synthetic,
            vantage: hop_root.then(|| HOP_VANTAGE.to_string()),
        }
    }
}

#[cfg(test)]
#[path = "stitch_tests.rs"]
mod tests;
