//! DNS lookups of local processes: the kernel hands over the first bytes of
//! every DNS query and response (UDP and TCP) with the socket's cookie and
//! cgroup; this joins each query to its response (or to its timeout) into a
//! [`DnsRecord`] with a verdict ([`super::judge::lookup`]). The enrich stage
//! names the pod and the hop ([`super::legs::dns_hop`]).
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use egress_common::{DIR_EGRESS, DnsEvent, IPPROTO_TCP};

use super::{
    dns_wire::{self as wire, WireError},
    judge,
};
use crate::{
    kernel::decode,
    records::{Clock, DNS_TIMEOUT, DnsRecord, Verdict, rfc3339},
};

/// The rcode of a lookup still unanswered when the agent stopped.
pub const DNS_PENDING: &str = "pending";

#[derive(Debug, Clone)]
struct Pending {
    ts: u64,
    ev_cgroup: u64,
    msg: wire::Message,
    server: Option<SocketAddr>,
    client: Option<SocketAddr>,
    tcp: bool,
}

/// Query key: socket, its local port (cookie 0 on some paths), id, type.
type Key = (u64, u16, u16, u16);

/// What the tracker noticed that is not a record (counted by the caller).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsStats {
    /// Responses whose query was not seen (lost, or before the agent started).
    pub unmatched: u64,
    /// Queries dropped unanswered because the table was full.
    pub evicted: u64,
}

/// Open queries, bounded; owned by the pipeline task.
pub struct DnsTracker {
    timeout_ns: u64,
    max: usize,
    clock: Clock,
    pending: HashMap<Key, Pending>,
    order: VecDeque<(Key, u64)>,
    pub stats: DnsStats,
}

impl DnsTracker {
    pub fn new(timeout: Duration, max: usize, clock: Clock) -> Self {
        Self {
            timeout_ns: timeout.as_nanos() as u64,
            max: max.max(1),
            clock,
            pending: HashMap::new(),
            order: VecDeque::new(),
            stats: DnsStats::default(),
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feed one kernel DNS event: a record comes out for a response.
    pub fn on_event(&mut self, ev: &DnsEvent) -> Result<Option<DnsRecord>, WireError> {
        let cap = (ev.caplen as usize).min(ev.data.len());
        let tcp = ev.proto == u32::from(IPPROTO_TCP);
        let msg = wire::parse(&ev.data[..cap], tcp, ev.len as usize)?;
        let local =
            decode::ip(ev.key.family, &ev.key.laddr).map(|a| SocketAddr::new(a, ev.key.lport));
        let remote =
            decode::ip(ev.key.family, &ev.key.raddr).map(|a| SocketAddr::new(a, ev.key.rport));
        let key = (ev.cookie, ev.key.lport, msg.id, msg.qtype);
        if ev.direction == DIR_EGRESS && !msg.response {
            // A retransmitted query keeps its first timestamp.
            if !self.pending.contains_key(&key) {
                if self.pending.len() >= self.max {
                    self.evict_oldest();
                }
                self.order.push_back((key, ev.hdr.ts_ns));
                self.pending.insert(
                    key,
                    Pending {
                        ts: ev.hdr.ts_ns,
                        ev_cgroup: ev.cgroup_id,
                        msg,
                        server: remote,
                        client: local,
                        tcp,
                    },
                );
            }
            return Ok(None);
        }
        if ev.direction == DIR_EGRESS || !msg.response {
            return Ok(None); // a server's traffic on this host: not a lookup of ours
        }
        let Some(p) = self.pending.remove(&key) else {
            self.stats.unmatched += 1;
            return Ok(None);
        };
        let mut r = self.record(&p, ev.hdr.ts_ns, wire::rcode_name(msg.rcode));
        r.answers = msg.answers;
        r.server = remote.or(p.server);
        Ok(Some(r))
    }

    /// Queries unanswered for longer than the timeout, as failed lookups.
    pub fn expire(&mut self, now_ns: u64) -> Vec<DnsRecord> {
        let mut out = Vec::new();
        while let Some(&(key, ts)) = self.order.front() {
            if now_ns.saturating_sub(ts) < self.timeout_ns {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.get(&key).filter(|p| p.ts == ts).cloned() {
                self.pending.remove(&key);
                out.push(self.record(&p, ts + self.timeout_ns, DNS_TIMEOUT));
            }
        }
        out
    }

    /// Lookups waiting for their answer.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// At shutdown: every lookup still unanswered, as a record with verdict
    /// `unknown` (the agent stopped watching; the lookup may yet succeed).
    pub fn finish(&mut self, now_ns: u64) -> Vec<DnsRecord> {
        let mut out = Vec::new();
        while let Some((key, ts)) = self.order.pop_front() {
            if let Some(p) = self.pending.get(&key).filter(|p| p.ts == ts).cloned() {
                self.pending.remove(&key);
                let mut r = self.record(&p, now_ns.max(ts), DNS_PENDING);
                (r.verdict, r.reason) = (Verdict::Unknown, None);
                out.push(r);
            }
        }
        out
    }

    fn evict_oldest(&mut self) {
        while let Some((key, ts)) = self.order.pop_front() {
            if self.pending.get(&key).is_some_and(|p| p.ts == ts) {
                self.pending.remove(&key);
                self.stats.evicted += 1;
                return;
            }
        }
    }

    fn record(&self, p: &Pending, end_ns: u64, rcode: &'static str) -> DnsRecord {
        let (verdict, reason) = judge::lookup(rcode);
        DnsRecord {
            time: rfc3339(self.clock.wall(end_ns)),
            cgroup_id: p.ev_cgroup,
            name: p.msg.qname.clone(),
            qtype: wire::qtype_name(p.msg.qtype).into(),
            rcode: rcode.into(),
            server: p.server,
            client: p.client,
            proto: if p.tcp { "tcp" } else { "udp" }.into(),
            latency_ms: (end_ns.saturating_sub(p.ts) as f64 / 1e4).round() / 100.0,
            verdict,
            reason,
            start_mono_ns: p.ts,
            record_mono_ns: end_ns,
            ..DnsRecord::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use egress_common::{AF_INET, DIR_INGRESS, EVENT_DNS, EventHeader, IPPROTO_UDP, TupleKey};

    use super::*;
    use crate::records::{Reason, Verdict};

    fn ev(dir: u32, ts: u64, msg: &[u8]) -> DnsEvent {
        let mut k = TupleKey { family: AF_INET, lport: 40000, rport: 53, ..TupleKey::default() };
        k.laddr[..4].copy_from_slice(&[10, 0, 1, 10]);
        k.raddr[..4].copy_from_slice(&[10, 0, 3, 10]);
        let mut e = DnsEvent {
            hdr: EventHeader { kind: EVENT_DNS, size: 344, ts_ns: ts },
            cookie: 7,
            cgroup_id: 42,
            direction: dir,
            proto: u32::from(IPPROTO_UDP),
            key: k,
            len: msg.len() as u32,
            caplen: msg.len() as u32,
            ..DnsEvent::default()
        };
        e.data[..msg.len()].copy_from_slice(msg);
        e
    }

    #[test]
    fn query_response_and_timeout() {
        let mut t = DnsTracker::new(Duration::from_secs(1), 16, Clock::new());
        assert!(matches!(
            t.on_event(&ev(DIR_EGRESS, 1_000, &wire::query(5, "squid.lab.test", 1, 0x0100))),
            Ok(None)
        ));
        let r = t
            .on_event(&ev(DIR_INGRESS, 2_001_000, &wire::query(5, "squid.lab.test", 1, 0x8183)))
            .expect("parse")
            .expect("record");
        assert_eq!(
            (r.name.as_str(), &*r.qtype, &*r.rcode, r.latency_ms, r.cgroup_id),
            ("squid.lab.test", "A", "NXDOMAIN", 2.0, 42)
        );
        assert_eq!((r.verdict, r.reason), (Verdict::Failed, Some(Reason::DnsFailed)));
        assert_eq!(r.server, Some("10.0.3.10:53".parse().expect("addr")));
        // NOERROR with no answer (NODATA, e.g. AAAA of a v4-only name) is not a failure.
        t.on_event(&ev(DIR_EGRESS, 3_000, &wire::query(6, "squid.lab.test", 28, 0x0100)))
            .expect("q");
        let r = t
            .on_event(&ev(DIR_INGRESS, 4_000, &wire::query(6, "squid.lab.test", 28, 0x8180)))
            .expect("p")
            .expect("r");
        assert_eq!(r.verdict, Verdict::Ok);
        // Unanswered: a failed lookup at the timeout, not before.
        t.on_event(&ev(DIR_EGRESS, 10_000, &wire::query(7, "a.test", 1, 0x0100))).expect("q");
        t.on_event(&ev(DIR_EGRESS, 20_000, &wire::query(7, "a.test", 1, 0x0100)))
            .expect("retransmit");
        assert!(t.expire(900_000_000).is_empty());
        let x = t.expire(1_000_010_000);
        assert_eq!(x.len(), 1);
        assert_eq!(
            (&*x[0].rcode, x[0].verdict, x[0].latency_ms),
            (DNS_TIMEOUT, Verdict::Failed, 1000.0)
        );
        assert!(!t.has_pending());
        // At shutdown a lookup still open is a record, verdict unknown.
        t.on_event(&ev(DIR_EGRESS, 30_000, &wire::query(8, "c.test", 1, 0x0100))).expect("q");
        let x = t.finish(50_000);
        assert_eq!(x.len(), 1);
        assert_eq!(
            (&*x[0].rcode, x[0].verdict, x[0].reason),
            (DNS_PENDING, Verdict::Unknown, None)
        );
        assert!(!t.has_pending() && t.finish(60_000).is_empty());
        // A response nobody asked for is counted.
        t.on_event(&ev(DIR_INGRESS, 5, &wire::query(99, "b.test", 1, 0x8180))).expect("p");
        assert_eq!(t.stats.unmatched, 1);
    }

    #[test]
    fn bounded() {
        let mut t = DnsTracker::new(Duration::from_secs(1), 2, Clock::new());
        for i in 0..5 {
            t.on_event(&ev(DIR_EGRESS, i, &wire::query(i as u16, "a.test", 1, 0x0100))).expect("q");
        }
        assert_eq!((t.pending.len(), t.stats.evicted), (2, 3));
        assert!(
            t.on_event(&ev(DIR_EGRESS, 1, &[0; 4])).is_err(),
            "decode errors surface to the caller"
        );
    }
}
