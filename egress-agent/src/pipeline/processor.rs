//! The processor: everything after the ring, on one task, no locks. One
//! ring record is decoded, joined into its flow, enriched, stitched into its
//! chain and counted before the records that come out go to the sink.
use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::event_kind_name;

use super::{
    dns_tracker::{DnsStats, DnsTracker},
    dns_wire::WireError,
    enrich::Enricher,
    flow_table::{FlowTable, TableStats},
    stitch::Stitcher,
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
    /// Records waiting for their conntrack entry, oldest first.
    held: VecDeque<(Instant, FlowRecord)>,
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
            dns,
            dns_seen: Default::default(),
            sent: false,
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
                } else if let Some(rec) = self.table.on_event(&ev) {
                    self.enrich_and_send(rec);
                }
            }
            Err(e) => {
                self.metrics.decode_errors.with_label_values(&[e.label()]).inc();
                tracing::debug!("decode: {e}");
            }
        }
    }

    /// Send everything still held and bring the metrics up to date.
    pub fn finish(&mut self) {
        self.release(true);
        self.expire_dns();
        self.account();
        self.idle();
    }

    /// Tell the sink the batch is over, if it got anything since the last time.
    pub fn idle(&mut self) {
        if std::mem::take(&mut self.sent) {
            (self.sink)(Output::Idle);
        }
    }

    /// Something waits for time to pass: records held for NAT, open DNS queries.
    pub(super) fn waiting(&self) -> bool {
        !self.held.is_empty() || self.dns.has_pending()
    }

    /// Time passed: release what waited long enough.
    pub(super) fn tick(&mut self) {
        self.release(false);
        self.expire_dns();
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
        self.sent = true;
        (self.sink)(Output::Record(Record::Flow(rec)));
        if let Some(c) = chain {
            self.metrics.observe_chain(&c);
            (self.sink)(Output::Record(Record::Chain(c)));
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
                .with_label_values(&["flow_table", "connect_start"])
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
