//! The processor: everything after the ring, on one task, no locks. One
//! ring record is decoded, joined into its flow, enriched, stitched into its
//! chain and counted before the records that come out go to the sink.
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::{AggKey, AggValue, event_kind_name};

use super::{
    aggregate, client_leg,
    dns_tracker::{DnsStats, DnsTracker},
    dns_wire::WireError,
    enrich::Enricher,
    flow_table::{AnswerEvidence, FlowTable, Out, TableStats},
    gateway::GatewayVantage,
    stitch::Stitcher,
    vantage::HopIdentity,
};
use crate::{
    kernel::decode::{Event, decode},
    records::{DnsRecord, FlowRecord, Record, mono_now_ns},
    sinks::Metrics,
};

/// How long a connect record may wait for its conntrack entry (NEW comes
/// through another socket and may trail the ring by a few milliseconds).
const NAT_WAIT: Duration = Duration::from_millis(150);
/// Records held for NAT at most; beyond, the oldest goes out without NAT.
const NAT_HELD_MAX: usize = 4096;

/// What leaves the pipeline: every record (flows that repeat their connect
/// verdict at close are `quiet`: counted, not shown), handed over owned so a
/// sink that keeps one (the API history) keeps it without a copy.
#[allow(clippy::large_enum_variant, reason = "moved once into the sink; most outputs are records")]
pub enum Output {
    Record(Record),
    /// What the ring held is processed: a sink that batches hands its batch
    /// on here (one hand-off per ring batch, not per record).
    Idle,
}

/// Everything after the ring, owned by one task.
pub struct Processor<S> {
    table: FlowTable,
    enricher: Enricher,
    metrics: Arc<Metrics>,
    sink: S,
    seen: TableStats,
    stitcher: Stitcher,
    /// Records waiting for their conntrack entry, oldest first (with what
    /// decides a client leg's verdict).
    held: VecDeque<(Instant, FlowRecord, Option<Box<AnswerEvidence>>)>,
    /// The chain's hops and the names they write in answers.
    hops: Vec<HopIdentity>,
    /// The chain's routed hops (transparent gateways), by name.
    routed: Vec<String>,
    /// The routed hops this machine may be the gateway of.
    gateway: Option<GatewayVantage>,
    /// Records the flow table gave for the event at hand.
    scratch: Vec<Out>,
    /// DNS queries waiting for their response.
    dns: DnsTracker,
    dns_seen: DnsStats,
    /// Something went to the sink since the last [`Output::Idle`].
    sent: bool,
}

/// Export the DNS decode error series the processor counts at 0 from the
/// start, so that alerts and `rate()` see them before the first error.
pub fn zero_error_series(metrics: &Metrics) {
    for e in WireError::ALL {
        metrics.dns.decode_errors.with_label_values(&[e.label()]);
    }
}

impl<S: FnMut(Output)> Processor<S> {
    pub fn new(
        table: FlowTable,
        enricher: Enricher,
        metrics: Arc<Metrics>,
        sink: S,
        dns: DnsTracker,
    ) -> Self {
        Self {
            table,
            enricher,
            metrics,
            sink,
            seen: TableStats::default(),
            stitcher: Stitcher::default(),
            held: VecDeque::new(),
            hops: Vec::new(),
            routed: Vec::new(),
            gateway: None,
            scratch: Vec::new(),
            dns,
            dns_seen: Default::default(),
            sent: false,
        }
    }

    /// The chain as the client-vantage judgement knows it.
    pub fn with_hops(mut self, hops: Vec<HopIdentity>) -> Self {
        self.hops = hops;
        self
    }

    /// The chain's routed hops: their client legs are judged as transparent.
    pub fn with_routed(mut self, routed: Vec<String>, gateway: Option<GatewayVantage>) -> Self {
        self.routed = routed;
        self.gateway = gateway;
        self
    }

    /// Forwarded flows of a routed hop whose conntrack entries ended: their
    /// gateway-vantage records to the sinks (counted by the vantage itself).
    pub(super) fn forwarded(&mut self) {
        let Some(g) = &self.gateway else { return };
        for rec in g.records() {
            self.sent = true;
            (self.sink)(Output::Record(Record::Flow(rec)));
        }
    }

    /// Consume every item currently in the ring. Returns how many items.
    pub(super) fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            self.ingest(&item);
        }
        n
    }

    /// One ring record: decode, count, join into its flow; a record that
    /// comes out goes through enrich and the sinks.
    pub fn ingest(&mut self, item: &[u8]) {
        match decode(item) {
            Ok(ev) => {
                self.metrics
                    .events_delivered
                    .with_label_values(&[event_kind_name(ev.kind())])
                    .inc();
                if let Event::Dns(d) = &ev {
                    match self.dns.on_event(d) {
                        Ok(Some(r)) => self.send_dns(r),
                        Ok(None) => {}
                        Err(e) => {
                            self.metrics.dns.decode_errors.with_label_values(&[e.label()]).inc()
                        }
                    }
                } else if let Event::NatMapping(m) = &ev {
                    if !self.enricher.observe_nat_mapping(m) {
                        self.metrics.decode_errors.with_label_values(&["bad_address"]).inc();
                    }
                } else {
                    let mut out = std::mem::take(&mut self.scratch);
                    self.table.on_event(&ev, &mut out);
                    #[expect(
                        clippy::iter_with_drain,
                        reason = "keeps the scratch vector's allocation"
                    )]
                    for (rec, evidence) in out.drain(..) {
                        self.enrich_and_send(rec, evidence);
                    }
                    self.scratch = out;
                }
            }
            Err(e) => {
                self.metrics.decode_errors.with_label_values(&[e.label()]).inc();
                tracing::debug!("decode: {e}");
            }
        }
    }

    /// Both rings read: what waited on the captures goes on.
    pub(super) fn flush(&mut self) {
        let mut out = std::mem::take(&mut self.scratch);
        self.table.flush(&mut out);
        #[expect(clippy::iter_with_drain, reason = "keeps the scratch vector's allocation")]
        for (rec, evidence) in out.drain(..) {
            self.enrich_and_send(rec, evidence);
        }
        self.scratch = out;
    }

    /// Send everything still held and bring the metrics up to date.
    pub fn finish(&mut self) {
        let mut out = Vec::new();
        let open = self.table.finish(&mut out);
        let (unsettled, lookups) = (out.len(), self.dns.pending_len());
        tracing::info!(
            open,
            unsettled,
            lookups,
            "stopping: flows still waiting and lookups unanswered go out as unknown; open flows' closes are left to the next agent (adoption)"
        );
        for (rec, evidence) in out {
            self.enrich_and_send(rec, evidence);
        }
        self.release(true);
        self.forwarded();
        self.expire_dns();
        for r in self.dns.finish(mono_now_ns()) {
            self.send_dns(r);
        }
        self.emit_chains(None);
        self.account();
        self.idle();
    }

    /// Tell the sink the batch is over, if it got anything since the last time.
    pub fn idle(&mut self) {
        if std::mem::take(&mut self.sent) {
            (self.sink)(Output::Idle);
        }
    }

    /// Something waits for time to pass: records held for NAT, open DNS
    /// queries, proxy answers waiting for their body.
    pub(super) fn waiting(&self) -> bool {
        !self.held.is_empty()
            || self.dns.has_pending()
            || self.table.waiting()
            || self.stitcher.waiting()
    }

    /// Chains whose client leg settled (`None`: all of them), to the sinks.
    fn emit_chains(&mut self, now: Option<u64>) {
        for c in self.stitcher.tick(now) {
            self.chain(c);
        }
    }

    fn chain(&mut self, c: crate::records::ChainRecord) {
        // Counted once, when first judged; a revision only corrects the record.
        if c.revision == 0 {
            self.metrics.observe_chain(&c);
        }
        self.sent = true;
        (self.sink)(Output::Record(Record::Chain(c)));
    }

    /// Time passed: release what waited long enough.
    pub(super) fn tick(&mut self) {
        let mut out = std::mem::take(&mut self.scratch);
        self.table.tick(mono_now_ns(), &mut out);
        #[expect(clippy::iter_with_drain, reason = "keeps the scratch vector's allocation")]
        for (rec, evidence) in out.drain(..) {
            self.enrich_and_send(rec, evidence);
        }
        self.scratch = out;
        self.release(false);
        self.expire_dns();
        self.emit_chains(Some(mono_now_ns()));
    }

    /// Clean flows the kernel counted over the last `interval_ms`: one
    /// counted row per owner and destination, and their metrics.
    pub fn on_aggregates(&mut self, items: &mut Vec<(AggKey, AggValue)>, interval_ms: u64) {
        for (k, v) in items.drain(..) {
            let rec = aggregate::record(&k, &v, interval_ms, &mut self.enricher);
            self.metrics.observe_aggregate(&rec, &v);
            self.sent = true;
            (self.sink)(Output::Record(Record::Aggregate(rec)));
        }
    }

    /// Queries whose wait is over become failed lookups.
    fn expire_dns(&mut self) {
        for r in self.dns.expire(mono_now_ns()) {
            self.send_dns(r);
        }
    }

    /// A lookup → enrich → stitcher (it may explain a proxy's 5xx) → metrics → sinks.
    fn send_dns(&mut self, mut r: DnsRecord) {
        self.enricher.enrich_dns(&mut r);
        self.stitcher.on_dns(&r);
        self.metrics.observe_dns(&r);
        self.sent = true;
        (self.sink)(Output::Record(Record::Dns(r)));
    }

    fn enrich_and_send(&mut self, mut rec: FlowRecord, evidence: Option<Box<AnswerEvidence>>) {
        self.enricher.enrich(&mut rec);
        if self.enricher.nat_pending(&rec) {
            if self.held.len() >= NAT_HELD_MAX
                && let Some((_, old, ev)) = self.held.pop_front()
            {
                self.send(old, ev);
            }
            self.held.push_back((Instant::now() + NAT_WAIT, rec, evidence));
            return;
        }
        self.send(rec, evidence);
    }

    /// Send held records whose NAT entry arrived or whose wait is over, in order.
    fn release(&mut self, all: bool) {
        let now = Instant::now();
        while let Some((deadline, mut rec, ev)) = self.held.pop_front() {
            if self.enricher.nat(&mut rec) || all || deadline <= now {
                self.send(rec, ev);
            } else {
                self.held.push_front((deadline, rec, ev));
                break;
            }
        }
    }

    fn send(&mut self, mut rec: FlowRecord, evidence: Option<Box<AnswerEvidence>>) {
        if !client_leg::judge_routed(&mut rec, &self.routed) {
            client_leg::judge(&mut rec, evidence.as_deref(), &self.hops);
        }
        // After NAT and the transport verdict: may turn the reason into policy_denied.
        self.enricher.policy(&mut rec);
        let chain = self.stitcher.on_record(&mut rec);
        self.metrics.observe(&rec);
        self.sent = true;
        (self.sink)(Output::Record(Record::Flow(rec)));
        if let Some(c) = chain {
            self.chain(c);
        }
    }

    /// Move the table's own counters (orphans, evictions, size) to the metrics.
    pub fn account(&mut self) {
        let s = self.table.stats;
        self.metrics.orphan_events.inc_by(s.orphans - self.seen.orphans);
        let evicted = s.evicted - self.seen.evicted;
        if evicted > 0 {
            self.metrics
                .events_lost
                .with_label_values(&["flow_table", event_kind_name(egress_common::EVENT_FLOW)])
                .inc_by(evicted);
        }
        self.seen = s;
        self.metrics.flows_tracked.set(self.table.len() as i64);
        let d = self.dns.stats;
        self.metrics.dns.unmatched.inc_by(d.unmatched - self.dns_seen.unmatched);
        self.metrics.dns.evicted.inc_by(d.evicted - self.dns_seen.evicted);
        self.dns_seen = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_decode_error_series_exist_from_the_start() {
        let m = Metrics::new(None).expect("metrics");
        zero_error_series(&m);
        let text = m.render();
        for e in WireError::ALL {
            let series = format!("egress_dns_decode_errors_total{{reason=\"{}\"}} 0", e.label());
            assert!(text.contains(&series), "missing {series}");
        }
    }
}
