//! The flow stage: a socket table that joins the kernel events of one active
//! open into flow records, with their verdicts. Owned by the pipeline task
//! alone: no locks.
use std::collections::{HashMap, VecDeque};

use egress_common::{
    ConnectStart, DIR_EGRESS, FLOW_FLAG_HAS_INTENDED, FLOW_FLAG_RESET, FlowEnd, PayloadEvent,
};

use super::{
    judge::{self, Facts},
    proxy_http::{self, ProxyRequest},
};
use crate::{
    kernel::decode::{self, Event},
    records::{Clock, FlowRecord, Phase, Reason, Verdict, rfc3339},
};

#[derive(Debug, Clone)]
pub struct FlowSettings {
    /// Retransmits at or above which a flow is `degraded` (0 = never).
    pub degraded_retransmits: u32,
    /// Flows held in userspace at most; beyond, the oldest is evicted and counted.
    pub max_flows: usize,
    /// Remote ports of proxies: a flow to one is reported when the proxy
    /// answers (status line), not at connect.
    pub proxy_ports: Vec<u16>,
}

/// What the table noticed that is not a record (counted by the caller).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// Events for a socket whose start was never seen (its start was lost).
    pub orphans: u64,
    /// Flows evicted because the table was full.
    pub evicted: u64,
}

#[derive(Debug, Clone)]
/// One open flow. Kept small: the table holds one per open connection
/// (100k open sockets must fit in tens of MiB), so what only proxy flows
/// carry is boxed.
struct Flow {
    start: ConnectStart,
    connect_verdict: Option<Verdict>,
    request: Option<Box<ProxyRequest>>,
    /// A proxy flow's connect record, waiting for the proxy's answer.
    held: Option<Box<FlowRecord>>,
}

pub struct FlowTable {
    settings: FlowSettings,
    clock: Clock,
    /// Boxed: the hash table holds 16-byte slots, so when it doubles it
    /// copies pointers, not entries (with entries inline, a doubling at 57k
    /// flows briefly held both tables: +11 MiB of peak RSS with 100k flows).
    flows: HashMap<u64, Box<Flow>>,
    /// Insertion order for eviction: (skaddr, start_ns).
    order: VecDeque<(u64, u64)>,
    pub stats: TableStats,
}

impl FlowTable {
    pub fn new(settings: FlowSettings, clock: Clock) -> Self {
        Self {
            settings,
            clock,
            flows: HashMap::new(),
            order: VecDeque::new(),
            stats: TableStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Feed one event; a record is returned when a flow reached an outcome.
    pub fn on_event(&mut self, ev: &Event) -> Option<FlowRecord> {
        match ev {
            Event::ConnectStart(s) => {
                self.insert(*s);
                None
            }
            Event::SynRetransmit(_) => None, // counted in the kernel; the totals come with the outcome
            Event::Connected(e) => {
                let threshold = self.settings.degraded_retransmits;
                let flow =
                    self.flows.get_mut(&e.skaddr).filter(|f| f.start.hdr.ts_ns == e.start_ns);
                let (owner, found) = match flow {
                    Some(f) => (f.start, true),
                    None => (orphan_start(e), false),
                };
                let (v, reason) = judge::connected(&facts(e, 0), threshold);
                let rec = self.record(&owner, e, Phase::Connect, v, reason, 0);
                if !found {
                    self.stats.orphans += 1;
                    return Some(rec);
                }
                let is_proxy = self.settings.proxy_ports.contains(&e.tuple.dport);
                let f = self.flows.get_mut(&e.skaddr)?;
                f.connect_verdict = Some(v);
                if is_proxy {
                    f.held = Some(Box::new(rec));
                    return None;
                }
                Some(rec)
            }
            Event::Payload(p) => self.on_payload(p),
            Event::Dns(_) => None, // the pipeline's DNS tracker takes these
            Event::NatMapping(_) => None, // the pipeline gives these to the NAT table
            Event::ConnectFailed(e) => {
                let owner = self.take(e);
                // sk_err first; the reported error survives getsockopt(SO_ERROR).
                let errno = [e.sk_err, e.reported_err, e.sk_err_soft]
                    .into_iter()
                    .find(|&x| x != 0)
                    .unwrap_or(0);
                Some(self.failure(&owner, e, errno))
            }
            Event::Closed(e) => {
                let flow =
                    self.flows.get_mut(&e.skaddr).filter(|f| f.start.hdr.ts_ns == e.start_ns);
                let connect_verdict = flow.as_ref().and_then(|f| f.connect_verdict);
                if let Some(mut held) = flow.and_then(|f| f.held.take()) {
                    // A proxy flow closed before its proxy answered: that is
                    // its record, with the close's evidence.
                    self.take(e);
                    let (v, reason) =
                        judge::closed(&facts(e, e.sk_err), self.settings.degraded_retransmits);
                    let (v, reason) = if v == Verdict::Ok && held.target.is_some() {
                        (Verdict::Failed, Some(Reason::Other))
                    } else {
                        (v, reason)
                    };
                    held.verdict = v;
                    held.reason = reason;
                    held.retransmits = e.retransmits;
                    held.duration_ms = Some(ms(e.hdr.ts_ns.saturating_sub(e.established_ns)));
                    return Some(*held);
                }
                let owner = self.take(e);
                let (v, reason) =
                    judge::closed(&facts(e, e.sk_err), self.settings.degraded_retransmits);
                // One shown record per flow unless it got worse after the connect.
                let mut rec = self.record(&owner, e, Phase::Close, v, reason, e.sk_err);
                rec.quiet = Some(v) == connect_verdict || v == Verdict::Ok;
                Some(rec)
            }
        }
    }

    /// First payload of a proxy flow: the request line out, the status in.
    fn on_payload(&mut self, p: &PayloadEvent) -> Option<FlowRecord> {
        let f = self.flows.get_mut(&p.skaddr).filter(|f| f.start.hdr.ts_ns == p.start_ns)?;
        let bytes = &p.data[..(p.len as usize).min(p.data.len())];
        if p.direction == DIR_EGRESS {
            f.request = proxy_http::parse_request(bytes).map(Box::new);
            if let Some(h) = f.held.as_mut() {
                h.target = f.request.as_ref().map(|r| r.target.clone());
            }
            return None;
        }
        let resp = proxy_http::parse_response(bytes)?;
        let mut rec = *f.held.take()?;
        let (v, reason) = judge::proxy_status(resp.status);
        // A tunnel that connected slowly stays degraded even when it opened.
        if !(v == Verdict::Ok && rec.verdict == Verdict::Degraded) {
            rec.verdict = v;
            rec.reason = reason;
        }
        f.connect_verdict = Some(rec.verdict);
        rec.target = f.request.as_ref().map(|r| r.target.clone());
        rec.proxy_status = Some(resp.status);
        rec.proxy_error = resp.error;
        rec.proxy_via = resp.via;
        rec.time = rfc3339(self.clock.wall(p.hdr.ts_ns));
        rec.record_mono_ns = p.hdr.ts_ns;
        Some(rec)
    }

    fn failure(&self, owner: &ConnectStart, e: &FlowEnd, errno: i32) -> FlowRecord {
        let reason = judge::connect_failure(&facts(e, errno));
        self.record(owner, e, Phase::Connect, Verdict::Failed, Some(reason), errno)
    }

    fn insert(&mut self, s: ConnectStart) {
        if self.flows.len() >= self.settings.max_flows {
            while let Some((sk, ts)) = self.order.pop_front() {
                if self.flows.get(&sk).is_some_and(|f| f.start.hdr.ts_ns == ts) {
                    self.flows.remove(&sk);
                    self.stats.evicted += 1;
                    break;
                }
            }
        }
        if self
            .flows
            .insert(
                s.skaddr,
                Box::new(Flow { start: s, connect_verdict: None, request: None, held: None }),
            )
            .is_some()
        {
            // The previous socket at this address ended without us seeing it.
            self.stats.orphans += 1;
        }
        self.order.push_back((s.skaddr, s.hdr.ts_ns));
        if self.order.len() > 2 * self.settings.max_flows.max(1024) {
            let flows = &self.flows;
            self.order.retain(|(sk, ts)| flows.get(sk).is_some_and(|f| f.start.hdr.ts_ns == *ts));
        }
    }

    /// Remove and return the owner of the flow `e` ends (or a stand-in if unseen).
    fn take(&mut self, e: &FlowEnd) -> ConnectStart {
        match self.flows.get(&e.skaddr) {
            Some(f) if f.start.hdr.ts_ns == e.start_ns => {
                self.flows.remove(&e.skaddr).map(|f| f.start).unwrap_or_default()
            }
            _ => {
                self.stats.orphans += 1;
                orphan_start(e)
            }
        }
    }

    fn record(
        &self,
        s: &ConnectStart,
        e: &FlowEnd,
        phase: Phase,
        verdict: Verdict,
        reason: Option<Reason>,
        errno: i32,
    ) -> FlowRecord {
        let start = e.start_ns;
        let connect_end = if e.established_ns != 0 { e.established_ns } else { e.hdr.ts_ns };
        let actual = decode::dst(&e.tuple);
        let intended = (s.flags & FLOW_FLAG_HAS_INTENDED != 0)
            .then(|| decode::intended(&s.intended))
            .flatten();
        FlowRecord {
            time: rfc3339(self.clock.wall(e.hdr.ts_ns)),
            phase,
            pid: s.tgid,
            tid: s.pid,
            comm: decode::comm(&s.comm),
            cgroup_id: s.cgroup_id,
            netns: s.netns,
            src: decode::src(&e.tuple),
            dst: intended.or(actual),
            dst_actual: actual,
            verdict,
            reason,
            errno,
            latency_ms: ms(connect_end.saturating_sub(start)),
            retransmits: e.retransmits,
            syn_retransmits: e.syn_retransmits,
            duration_ms: (phase == Phase::Close && e.established_ns != 0)
                .then(|| ms(e.hdr.ts_ns.saturating_sub(e.established_ns))),
            flow_id: format!("{:x}-{:x}", e.skaddr, e.start_ns),
            start_mono_ns: e.start_ns,
            record_mono_ns: e.hdr.ts_ns,
            ..FlowRecord::default()
        }
    }
}

fn facts(e: &FlowEnd, errno: i32) -> Facts {
    Facts {
        errno,
        reset_seen: e.flags & FLOW_FLAG_RESET != 0,
        syn_retransmits: e.syn_retransmits,
        retransmits: e.retransmits,
    }
}

/// Owner unknown (its start event was lost and counted): keep the tuple.
fn orphan_start(e: &FlowEnd) -> ConnectStart {
    ConnectStart {
        skaddr: e.skaddr,
        tuple: e.tuple,
        comm: *b"?\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ..ConnectStart::default()
    }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

#[cfg(test)]
mod tests {
    use egress_common::{
        AF_INET, EVENT_CLOSED, EVENT_CONNECT_FAILED, EVENT_CONNECT_START, EVENT_CONNECTED,
        EventHeader, Tuple,
    };

    use super::*;

    fn table(max: usize) -> FlowTable {
        FlowTable::new(
            FlowSettings { degraded_retransmits: 3, max_flows: max, proxy_ports: vec![3128] },
            Clock::new(),
        )
    }

    fn tuple() -> Tuple {
        let mut t = Tuple { family: AF_INET, sport: 40000, dport: 443, ..Tuple::default() };
        t.daddr[..4].copy_from_slice(&[192, 0, 2, 7]);
        t
    }

    fn start(sk: u64, ts: u64) -> Event {
        Event::ConnectStart(ConnectStart {
            hdr: EventHeader { kind: EVENT_CONNECT_START, size: 136, ts_ns: ts },
            skaddr: sk,
            tgid: 77,
            pid: 78,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            tuple: tuple(),
            ..ConnectStart::default()
        })
    }

    fn end(kind: u32, sk: u64, start: u64, ts: u64, f: impl FnOnce(&mut FlowEnd)) -> FlowEnd {
        let mut e = FlowEnd {
            hdr: EventHeader { kind, size: 112, ts_ns: ts },
            skaddr: sk,
            start_ns: start,
            tuple: tuple(),
            ..FlowEnd::default()
        };
        if kind == EVENT_CLOSED {
            e.established_ns = start + 1_000_000;
        }
        f(&mut e);
        e
    }

    #[test]
    fn ok_connect_then_quiet_close_is_one_record() {
        let mut t = table(16);
        assert!(t.on_event(&start(1, 100)).is_none());
        let r = t
            .on_event(&Event::Connected(end(EVENT_CONNECTED, 1, 100, 2_000_100, |e| {
                e.established_ns = 2_000_100
            })))
            .expect("record");
        assert_eq!(
            (r.verdict, r.pid, r.comm.as_str(), r.latency_ms),
            (Verdict::Ok, 77, "curl", 2.0)
        );
        assert_eq!(r.dst, Some("192.0.2.7:443".parse().expect("addr")));
        let close = t
            .on_event(&Event::Closed(end(EVENT_CLOSED, 1, 100, 9_000_000, |_| {})))
            .expect("close");
        assert!(close.quiet && close.phase == Phase::Close && close.duration_ms.is_some());
        assert!(t.is_empty());
        assert_eq!(t.stats, TableStats::default());
    }

    #[test]
    fn refused_and_degraded_close() {
        let mut t = table(16);
        t.on_event(&start(1, 100));
        let r = t
            .on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 1, 100, 500, |e| {
                e.sk_err = libc::ECONNREFUSED;
                e.flags = FLOW_FLAG_RESET;
            })))
            .expect("r");
        assert_eq!(
            (r.verdict, r.reason, r.errno),
            (Verdict::Failed, Some(Reason::Refused), libc::ECONNREFUSED)
        );
        t.on_event(&start(2, 200));
        t.on_event(&Event::Connected(end(EVENT_CONNECTED, 2, 200, 300, |e| {
            e.established_ns = 300
        })));
        let r = t
            .on_event(&Event::Closed(end(EVENT_CLOSED, 2, 200, 900, |e| e.retransmits = 5)))
            .expect("degraded");
        assert_eq!(
            (r.phase, r.verdict, r.reason, r.retransmits),
            (Phase::Close, Verdict::Degraded, Some(Reason::Retransmits), 5)
        );
    }

    #[test]
    fn reported_error_used_when_sk_err_was_consumed() {
        let mut t = table(16);
        t.on_event(&start(1, 100));
        let r = t
            .on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 1, 100, 500, |e| {
                e.reported_err = libc::EHOSTUNREACH
            })))
            .expect("r");
        assert_eq!((r.reason, r.errno), (Some(Reason::Unreachable), libc::EHOSTUNREACH));
        t.on_event(&start(2, 600));
        let r = t
            .on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 2, 600, 900, |e| {
                e.sk_err_soft = libc::ENETUNREACH
            })))
            .expect("r");
        assert_eq!(r.reason, Some(Reason::Unreachable));
    }

    #[test]
    fn lost_start_gives_orphan_record_and_count() {
        let mut t = table(16);
        let r = t
            .on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 9, 100, 500, |e| {
                e.sk_err = libc::ETIMEDOUT
            })))
            .expect("r");
        assert_eq!((r.comm.as_str(), r.reason), ("?", Some(Reason::Timeout)));
        assert_eq!(t.stats.orphans, 1);
        // A reused socket address with a different start is not the same flow.
        t.on_event(&start(3, 100));
        t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 3, 999, 1000, |e| {
            e.sk_err = libc::ECONNREFUSED
        })));
        assert_eq!(t.stats.orphans, 2);
        assert_eq!(t.len(), 1);
    }

    fn payload(sk: u64, start: u64, dir: u32, text: &[u8]) -> Event {
        let mut p = PayloadEvent {
            hdr: EventHeader { kind: 6, size: 424, ts_ns: start + 50 },
            skaddr: sk,
            start_ns: start,
            direction: dir,
            len: text.len() as u32,
            ..PayloadEvent::default()
        };
        p.data[..text.len()].copy_from_slice(text);
        Event::Payload(Box::new(p))
    }

    fn proxy_start(sk: u64, ts: u64) -> Event {
        let Event::ConnectStart(mut s) = start(sk, ts) else { unreachable!() };
        s.tuple.dport = 3128;
        Event::ConnectStart(s)
    }

    fn proxy_end(kind: u32, sk: u64, start: u64, ts: u64) -> FlowEnd {
        end(kind, sk, start, ts, |e| {
            e.tuple.dport = 3128;
            e.established_ns = start + 10;
        })
    }

    #[test]
    fn proxy_flow_reported_when_the_proxy_answers() {
        use egress_common::DIR_INGRESS;
        let mut t = table(16);
        t.on_event(&proxy_start(1, 100));
        assert!(
            t.on_event(&Event::Connected(proxy_end(EVENT_CONNECTED, 1, 100, 110))).is_none(),
            "held until the status line"
        );
        assert!(
            t.on_event(&payload(
                1,
                100,
                DIR_EGRESS,
                b"CONNECT login.example.test:443 HTTP/1.1\r\n"
            ))
            .is_none()
        );
        let r = t
            .on_event(&payload(
                1,
                100,
                DIR_INGRESS,
                b"HTTP/1.1 403 Forbidden\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\n",
            ))
            .expect("record");
        assert_eq!(
            (r.verdict, r.reason, r.proxy_status),
            (Verdict::Failed, Some(Reason::ProxyDenied), Some(403))
        );
        assert_eq!(r.target.as_deref(), Some("login.example.test:443"));
        assert_eq!(r.proxy_error.as_deref(), Some("ERR_ACCESS_DENIED 0"));
        // The close repeats the verdict: quiet.
        let c = t.on_event(&Event::Closed(proxy_end(EVENT_CLOSED, 1, 100, 900))).expect("close");
        assert!(c.quiet || c.verdict == Verdict::Failed);
    }

    #[test]
    fn proxy_flow_closed_without_answer() {
        let mut t = table(16);
        t.on_event(&proxy_start(2, 100));
        t.on_event(&Event::Connected(proxy_end(EVENT_CONNECTED, 2, 100, 110)));
        t.on_event(&payload(2, 100, DIR_EGRESS, b"CONNECT a.test:443 HTTP/1.1\r\n"));
        let r = t.on_event(&Event::Closed(proxy_end(EVENT_CLOSED, 2, 100, 900))).expect("record");
        assert_eq!(
            (r.verdict, r.target.as_deref(), r.proxy_status),
            (Verdict::Failed, Some("a.test:443"), None)
        );
    }

    #[test]
    fn flow_entry_stays_small() {
        // 100k open flows: entry + key + hash table overhead must stay well
        // under the 64 MiB agent budget, even while the table doubles.
        assert!(size_of::<Flow>() <= 168, "Flow is {} bytes", size_of::<Flow>());
    }

    #[test]
    fn table_is_bounded_and_evictions_counted() {
        let mut t = table(2);
        for i in 0..5 {
            t.on_event(&start(i, i * 10));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats.evicted, 3);
    }
}
