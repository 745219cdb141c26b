//! kernel ring → decode → flow table → verdict → sink. One task, no locks.
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::event_kind_name;
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    chains::{ChainRecord, Stitcher},
    dns::{DnsRecord, DnsTracker},
    enrich::Enricher,
    events::{Event, decode},
    flows::{FlowTable, TableStats},
    metrics::Metrics,
    record::FlowRecord,
};

/// How long a connect record may wait for its conntrack entry (NEW comes
/// through another socket and may trail the ring by a few milliseconds).
const NAT_WAIT: Duration = Duration::from_millis(150);
/// Records held for NAT at most; beyond, the oldest goes out without NAT.
const NAT_HELD_MAX: usize = 4096;
const TICK: Duration = Duration::from_millis(20);

/// What leaves the pipeline: every flow record, and a chain record when the
/// legs of one request through the proxy chain have been stitched.
pub enum Output<'a> {
    Flow(&'a FlowRecord),
    Chain(&'a ChainRecord),
    /// A DNS lookup (query and response, or its timeout).
    Dns(&'a DnsRecord),
}

pub struct Pipeline<S> {
    ring: AsyncFd<RingBuf<MapData>>,
    table: FlowTable,
    enricher: Enricher,
    metrics: Arc<Metrics>,
    sink: S,
    seen: TableStats,
    stitcher: Stitcher,
    /// Records waiting for their conntrack entry, oldest first.
    held: VecDeque<(Instant, FlowRecord)>,
    /// Test hook: do not read the ring for this long after start.
    stall: Option<Duration>,
    dns: DnsTracker,
    dns_seen: crate::dns::DnsStats,
}

impl<S: FnMut(Output<'_>)> Pipeline<S> {
    pub fn new(ring: RingBuf<MapData>, table: FlowTable, enricher: Enricher, metrics: Arc<Metrics>, sink: S, stall: Option<Duration>, dns: DnsTracker) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map fd, which stays open and unchanged
        // for as long as the AsyncFd owns the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(Self { ring, table, enricher, metrics, sink, seen: TableStats::default(), stitcher: Stitcher::default(), held: VecDeque::new(), stall, dns, dns_seen: Default::default() })
    }

    /// Run until `shutdown` turns true, then drain what the ring still holds.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        if let Some(d) = self.stall.take() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.changed() => {}
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    let (mut out, mut dns) = (Vec::new(), Vec::new());
                    let n = Self::drain(guard.get_inner_mut(), &mut self.table, &self.metrics, &mut out, &mut dns);
                    guard.clear_ready();
                    for rec in out {
                        self.enrich_and_send(rec);
                    }
                    self.on_dns(dns);
                    if n > 0 { self.account(); }
                }
                _ = tick.tick(), if !self.held.is_empty() || self.dns.has_pending() => {
                    self.release(false);
                    self.on_dns(Vec::new());
                }
                _ = shutdown.changed() => {}
            }
        }
        let (mut out, mut dns) = (Vec::new(), Vec::new());
        Self::drain(self.ring.get_mut(), &mut self.table, &self.metrics, &mut out, &mut dns);
        for rec in out {
            self.enrich_and_send(rec);
        }
        self.on_dns(dns);
        self.release(true);
        self.account();
        Ok(())
    }

    fn enrich_and_send(&mut self, mut rec: FlowRecord) {
        self.enricher.enrich(&mut rec);
        if self.enricher.nat_pending(&rec) {
            if self.held.len() >= NAT_HELD_MAX
                && let Some((_, old)) = self.held.pop_front()
            {
                self.send(old);
            }
            self.held.push_back((Instant::now() + NAT_WAIT, rec));
            return;
        }
        self.send(rec);
    }

    /// Send held records whose NAT entry arrived or whose wait is over, in order.
    fn release(&mut self, all: bool) {
        let now = Instant::now();
        while let Some((deadline, mut rec)) = self.held.pop_front() {
            if self.enricher.nat(&mut rec) || all || deadline <= now {
                self.send(rec);
            } else {
                self.held.push_front((deadline, rec));
                break;
            }
        }
    }

    fn send(&mut self, mut rec: FlowRecord) {
        let chain = self.stitcher.on_record(&mut rec);
        self.metrics.observe(&rec);
        (self.sink)(Output::Flow(&rec));
        if let Some(c) = chain {
            self.metrics.observe_chain(&c);
            (self.sink)(Output::Chain(&c));
        }
    }


    /// DNS events → lookups (and expired queries) → enrich → sinks.
    fn on_dns(&mut self, events: Vec<egress_common::DnsEvent>) {
        let mut recs = Vec::new();
        for ev in events {
            match self.dns.on_event(&ev) {
                Ok(Some(r)) => recs.push(r),
                Ok(None) => {}
                Err(e) => self.metrics.dns.decode_errors.with_label_values(&[e.label()]).inc(),
            }
        }
        recs.extend(self.dns.expire(crate::dns::mono_now_ns()));
        for mut r in recs {
            self.enricher.enrich_dns(&mut r);
            self.stitcher.on_dns(&r);
            self.metrics.observe_dns(&r);
            (self.sink)(Output::Dns(&r));
        }
        let s = self.dns.stats;
        self.metrics.dns.unmatched.inc_by(s.unmatched - self.dns_seen.unmatched);
        self.metrics.dns.evicted.inc_by(s.evicted - self.dns_seen.evicted);
        self.dns_seen = s;
    }

    /// Consume every item currently in the ring into records. Returns how many items.
    fn drain(ring: &mut RingBuf<MapData>, table: &mut FlowTable, metrics: &Metrics, out: &mut Vec<FlowRecord>, dns: &mut Vec<egress_common::DnsEvent>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            match decode(&item) {
                Ok(ev) => {
                    metrics.events_delivered.with_label_values(&[event_kind_name(ev.kind())]).inc();
                    drop(item);
                    if let Event::Dns(d) = ev {
                        dns.push(*d);
                        continue;
                    }
                    if let Some(rec) = table.on_event(&ev) {
                        out.push(rec);
                    }
                }
                Err(e) => {
                    metrics.decode_errors.with_label_values(&[e.label()]).inc();
                    tracing::debug!("decode: {e}");
                }
            }
        }
        n
    }

    fn account(&mut self) {
        let s = self.table.stats;
        self.metrics.orphan_events.inc_by(s.orphans - self.seen.orphans);
        let evicted = s.evicted - self.seen.evicted;
        if evicted > 0 {
            self.metrics.events_lost.with_label_values(&["flow_table", "connect_start"]).inc_by(evicted);
        }
        self.seen = s;
        self.metrics.flows_tracked.set(self.table.len() as i64);
    }
}
