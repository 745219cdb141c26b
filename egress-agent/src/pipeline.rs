//! kernel ring → decode → flow table → verdict → sink. One task, no locks.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use egress_common::event_kind_name;
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::{
    enrich::Enricher,
    events::decode,
    flows::{FlowTable, TableStats},
    metrics::Metrics,
    record::FlowRecord,
};

pub struct Pipeline<S> {
    ring: AsyncFd<RingBuf<MapData>>,
    table: FlowTable,
    enricher: Enricher,
    metrics: Arc<Metrics>,
    sink: S,
    seen: TableStats,
    /// Test hook: do not read the ring for this long after start.
    stall: Option<Duration>,
}

impl<S: FnMut(&FlowRecord)> Pipeline<S> {
    pub fn new(ring: RingBuf<MapData>, table: FlowTable, enricher: Enricher, metrics: Arc<Metrics>, sink: S, stall: Option<Duration>) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map fd, which stays open and unchanged
        // for as long as the AsyncFd owns the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(Self { ring, table, enricher, metrics, sink, seen: TableStats::default(), stall })
    }

    /// Run until `shutdown` turns true, then drain what the ring still holds.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        if let Some(d) = self.stall.take() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.changed() => {}
            }
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    let n = Self::drain(guard.get_inner_mut(), &mut self.table, &mut self.enricher, &self.metrics, &mut self.sink);
                    guard.clear_ready();
                    if n > 0 { self.account(); }
                }
                _ = shutdown.changed() => {}
            }
        }
        Self::drain(self.ring.get_mut(), &mut self.table, &mut self.enricher, &self.metrics, &mut self.sink);
        self.account();
        Ok(())
    }


    /// Consume every item currently in the ring. Returns how many.
    fn drain(ring: &mut RingBuf<MapData>, table: &mut FlowTable, enricher: &mut Enricher, metrics: &Metrics, sink: &mut S) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            n += 1;
            match decode(&item) {
                Ok(ev) => {
                    metrics.events_delivered.with_label_values(&[event_kind_name(ev.kind())]).inc();
                    drop(item);
                    if let Some(mut rec) = table.on_event(&ev) {
                        enricher.enrich(&mut rec);
                        metrics.observe(&rec);
                        sink(&rec);
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
