//! The socket table: joins kernel events of one active open into flow
//! records. Owned by the pipeline task alone: no locks.
use std::collections::{HashMap, VecDeque};

use egress_common::{ConnectStart, FLOW_FLAG_HAS_INTENDED, FLOW_FLAG_RESET, FlowEnd};

use crate::{
    events::{self, Event},
    record::{Clock, FlowRecord, Phase, rfc3339},
    verdict::{self, Facts, Verdict},
};


#[derive(Debug, Clone)]
pub struct FlowSettings {
    /// Retransmits at or above which a flow is `degraded` (0 = never).
    pub degraded_retransmits: u32,
    /// Flows held in userspace at most; beyond, the oldest is evicted and counted.
    pub max_flows: usize,
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
struct Flow {
    start: ConnectStart,
    connect_verdict: Option<Verdict>,
}

pub struct FlowTable {
    settings: FlowSettings,
    clock: Clock,
    flows: HashMap<u64, Flow>,
    /// Insertion order for eviction: (skaddr, start_ns).
    order: VecDeque<(u64, u64)>,
    pub stats: TableStats,
}

impl FlowTable {
    pub fn new(settings: FlowSettings, clock: Clock) -> Self {
        Self { settings, clock, flows: HashMap::new(), order: VecDeque::new(), stats: TableStats::default() }
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
                let flow = self.flows.get_mut(&e.skaddr).filter(|f| f.start.hdr.ts_ns == e.start_ns);
                let (owner, found) = match flow {
                    Some(f) => (f.start, true),
                    None => (orphan_start(e), false),
                };
                let (v, reason) = verdict::connected(&facts(e, 0), threshold);
                if found {
                    if let Some(f) = self.flows.get_mut(&e.skaddr) {
                        f.connect_verdict = Some(v);
                    }
                } else {
                    self.stats.orphans += 1;
                }
                Some(self.record(&owner, e, Phase::Connect, v, reason, 0))
            }
            Event::ConnectFailed(e) => {
                let owner = self.take(e);
                // sk_err first; the reported error survives getsockopt(SO_ERROR).
                let errno = [e.sk_err, e.reported_err, e.sk_err_soft].into_iter().find(|&x| x != 0).unwrap_or(0);
                Some(self.failure(&owner, e, errno))
            }
            Event::Closed(e) => {
                let connect_verdict = self.flows.get(&e.skaddr).filter(|f| f.start.hdr.ts_ns == e.start_ns).and_then(|f| f.connect_verdict);
                let owner = self.take(e);
                let (v, reason) = verdict::closed(&facts(e, e.sk_err), self.settings.degraded_retransmits);
                // One shown record per flow unless it got worse after the connect.
                let mut rec = self.record(&owner, e, Phase::Close, v, reason, e.sk_err);
                rec.quiet = Some(v) == connect_verdict || v == Verdict::Ok;
                Some(rec)
            }
        }
    }

    fn failure(&self, owner: &ConnectStart, e: &FlowEnd, errno: i32) -> FlowRecord {
        let reason = verdict::connect_failure(&facts(e, errno));
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
        if self.flows.insert(s.skaddr, Flow { start: s, connect_verdict: None }).is_some() {
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
            Some(f) if f.start.hdr.ts_ns == e.start_ns => self.flows.remove(&e.skaddr).map(|f| f.start).unwrap_or_default(),
            _ => {
                self.stats.orphans += 1;
                orphan_start(e)
            }
        }
    }

    fn record(&self, s: &ConnectStart, e: &FlowEnd, phase: Phase, verdict: Verdict, reason: Option<verdict::Reason>, errno: i32) -> FlowRecord {
        let start = e.start_ns;
        let connect_end = if e.established_ns != 0 { e.established_ns } else { e.hdr.ts_ns };
        let actual = events::dst(&e.tuple);
        let intended = (s.flags & FLOW_FLAG_HAS_INTENDED != 0).then(|| events::intended(&s.intended)).flatten();
        FlowRecord {
            time: rfc3339(self.clock.wall(e.hdr.ts_ns)),
            phase,
            pid: s.tgid,
            tid: s.pid,
            comm: events::comm(&s.comm),
            cgroup_id: s.cgroup_id,
            netns: s.netns,
            src: events::src(&e.tuple),
            dst: intended.or(actual),
            dst_actual: actual,
            verdict,
            reason,
            errno,
            latency_ms: ms(connect_end.saturating_sub(start)),
            retransmits: e.retransmits,
            syn_retransmits: e.syn_retransmits,
            duration_ms: (phase == Phase::Close && e.established_ns != 0).then(|| ms(e.hdr.ts_ns.saturating_sub(e.established_ns))),
            flow_id: format!("{:x}-{:x}", e.skaddr, e.start_ns),
            ..FlowRecord::default()
        }
    }
}

fn facts(e: &FlowEnd, errno: i32) -> Facts {
    Facts { errno, reset_seen: e.flags & FLOW_FLAG_RESET != 0, syn_retransmits: e.syn_retransmits, retransmits: e.retransmits }
}

/// Owner unknown (its start event was lost and counted): keep the tuple.
fn orphan_start(e: &FlowEnd) -> ConnectStart {
    ConnectStart { skaddr: e.skaddr, tuple: e.tuple, comm: *b"?\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", ..ConnectStart::default() }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

#[cfg(test)]
mod tests {
    use egress_common::{AF_INET, EVENT_CLOSED, EVENT_CONNECT_FAILED, EVENT_CONNECT_START, EVENT_CONNECTED, EventHeader, Tuple};

    use super::*;
    use crate::verdict::Reason;

    fn table(max: usize) -> FlowTable {
        FlowTable::new(FlowSettings { degraded_retransmits: 3, max_flows: max }, Clock::new())
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
        let mut e = FlowEnd { hdr: EventHeader { kind, size: 112, ts_ns: ts }, skaddr: sk, start_ns: start, tuple: tuple(), ..FlowEnd::default() };
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
        let r = t.on_event(&Event::Connected(end(EVENT_CONNECTED, 1, 100, 2_000_100, |e| e.established_ns = 2_000_100))).expect("record");
        assert_eq!((r.verdict, r.pid, r.comm.as_str(), r.latency_ms), (Verdict::Ok, 77, "curl", 2.0));
        assert_eq!(r.dst, Some("192.0.2.7:443".parse().expect("addr")));
        let close = t.on_event(&Event::Closed(end(EVENT_CLOSED, 1, 100, 9_000_000, |_| {}))).expect("close");
        assert!(close.quiet && close.phase == Phase::Close && close.duration_ms.is_some());
        assert!(t.is_empty());
        assert_eq!(t.stats, TableStats::default());
    }

    #[test]
    fn refused_and_degraded_close() {
        let mut t = table(16);
        t.on_event(&start(1, 100));
        let r = t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 1, 100, 500, |e| { e.sk_err = libc::ECONNREFUSED; e.flags = FLOW_FLAG_RESET; }))).expect("r");
        assert_eq!((r.verdict, r.reason, r.errno), (Verdict::Failed, Some(Reason::Refused), libc::ECONNREFUSED));
        t.on_event(&start(2, 200));
        t.on_event(&Event::Connected(end(EVENT_CONNECTED, 2, 200, 300, |e| e.established_ns = 300)));
        let r = t.on_event(&Event::Closed(end(EVENT_CLOSED, 2, 200, 900, |e| e.retransmits = 5))).expect("degraded");
        assert_eq!((r.phase, r.verdict, r.reason, r.retransmits), (Phase::Close, Verdict::Degraded, Some(Reason::Retransmits), 5));
    }

    #[test]
    fn reported_error_used_when_sk_err_was_consumed() {
        let mut t = table(16);
        t.on_event(&start(1, 100));
        let r = t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 1, 100, 500, |e| e.reported_err = libc::EHOSTUNREACH))).expect("r");
        assert_eq!((r.reason, r.errno), (Some(Reason::Unreachable), libc::EHOSTUNREACH));
        t.on_event(&start(2, 600));
        let r = t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 2, 600, 900, |e| e.sk_err_soft = libc::ENETUNREACH))).expect("r");
        assert_eq!(r.reason, Some(Reason::Unreachable));
    }

    #[test]
    fn lost_start_gives_orphan_record_and_count() {
        let mut t = table(16);
        let r = t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 9, 100, 500, |e| e.sk_err = libc::ETIMEDOUT))).expect("r");
        assert_eq!((r.comm.as_str(), r.reason), ("?", Some(Reason::Timeout)));
        assert_eq!(t.stats.orphans, 1);
        // A reused socket address with a different start is not the same flow.
        t.on_event(&start(3, 100));
        t.on_event(&Event::ConnectFailed(end(EVENT_CONNECT_FAILED, 3, 999, 1000, |e| e.sk_err = libc::ECONNREFUSED)));
        assert_eq!(t.stats.orphans, 2);
        assert_eq!(t.len(), 1);
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
