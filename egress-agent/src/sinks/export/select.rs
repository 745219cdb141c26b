//! What leaves the node: the choice made for each record on the pipeline's
//! task, cheaply (no serialization), before anything is queued.
//!
//! `audit` (the deployed default): every record that is not `ok` — failed,
//! degraded, unknown, bypass — and failed DNS lookups, once per request:
//! - a client leg (`client->…`) and a direct leg are carried by the chain
//!   record that follows them at once, so they are not written themselves;
//! - an upstream leg (`A->B`, `A->internet`) is held until a chain record
//!   claims it (on a node that sees the whole chain), else written alone
//!   (a proxy VM sees only its own upstream legs) — see [`super::hold`];
//! - failed lookups of one asker for one name within 0.3 s are one line
//!   with a `count` (A and AAAA, resolver retries).
//!
//! `ok` records follow [`OkPolicy`]: off, one in N (the line says
//! `sampled: N`), or counted per (namespace, workload or unit, destination
//! class, hop) and written once per interval as `"record":"aggregate"`
//! rows. Failures are never sampled. `all` writes every record as it comes
//! (what `run --log-flows` always did).
use std::{collections::HashMap, time::Duration};

use crate::{
    config::DIRECT,
    records::{FlowRecord, Record, Verdict},
};

/// Which records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    #[default]
    None,
    /// Failures, degraded, unknown, bypasses, failed lookups; `ok` per [`OkPolicy`].
    Audit,
    /// Every record (`--log-flows`).
    All,
}

/// What happens to `ok` records under [`Selection::Audit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OkPolicy {
    #[default]
    Off,
    /// One in N.
    Sample(u32),
    /// Counted, one row per key per interval.
    Aggregate(Duration),
}

/// The decision for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Skip,
    /// Written now; `Some(n)`: an `ok` record sampled one in `n`.
    Write(Option<u32>),
    /// An upstream leg: written unless a chain record claims it in time.
    Hold(Option<u32>),
    /// A failed lookup: merged with the same asker's failures of the same name.
    Merge,
}

/// The key `ok` flows are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub unit: Option<String>,
    pub dst_class: Option<&'static str>,
    pub hop: Option<String>,
}

pub type Counts = HashMap<AggKey, u64>;

/// Where a flow sits in the chain.
fn leg_kind(r: &FlowRecord) -> Leg {
    // A hop's accepted connection is carried by a chain either way: its own
    // hop chain, or the local client's chain when the client end is here.
    if r.vantage.as_deref() == Some(crate::pipeline::flow_table::HOP_VANTAGE) {
        return Leg::Covered;
    }
    // A routed hop's forwarded flow, judged on its gateway from conntrack:
    // no chain record follows it there.
    if r.vantage.as_deref() == Some(crate::pipeline::gateway::GATEWAY_VANTAGE) {
        return Leg::None;
    }
    match r.leg.as_deref() {
        None => Leg::None,
        Some(l) if l == DIRECT || l.starts_with("client->") => Leg::Covered,
        Some(_) => Leg::Upstream,
    }
}

enum Leg {
    None,
    /// The chain record that follows carries it.
    Covered,
    Upstream,
}

#[derive(Debug, Default)]
pub struct Selector {
    pub selection: Selection,
    pub ok: OkPolicy,
    /// `ok` records seen under sampling.
    seen_ok: u64,
    /// `ok` flows counted since the last hand-over.
    pub counts: Counts,
}

impl Selector {
    pub fn new(selection: Selection, ok: OkPolicy) -> Self {
        Self { selection, ok, ..Self::default() }
    }

    /// An `ok` record: sampled (one in N), or dropped.
    fn ok_one(&mut self) -> Option<Option<u32>> {
        let OkPolicy::Sample(n) = self.ok else { return None };
        self.seen_ok += 1;
        self.seen_ok.is_multiple_of(u64::from(n.max(1))).then_some(Some(n))
    }

    fn count(&mut self, r: &FlowRecord) {
        let key = AggKey {
            namespace: r.namespace.clone(),
            workload: r.workload.clone(),
            unit: r.unit.clone(),
            dst_class: r.dst_class.map(|c| c.as_str()),
            hop: r.hop.clone(),
        };
        *self.counts.entry(key).or_default() += 1;
    }

    pub fn classify(&mut self, r: &Record) -> Class {
        match self.selection {
            Selection::None => return Class::Skip,
            Selection::All => {
                let quiet = matches!(r, Record::Flow(f) if f.quiet);
                return if quiet { Class::Skip } else { Class::Write(None) };
            }
            Selection::Audit => {}
        }
        match r {
            Record::Flow(f) if f.quiet => Class::Skip,
            Record::Flow(f) => {
                let ok = f.verdict == Verdict::Ok;
                if ok && matches!(self.ok, OkPolicy::Aggregate(_)) {
                    self.count(f);
                }
                match (leg_kind(f), ok) {
                    (Leg::Covered, _) => Class::Skip,
                    // A hop's upstream connection whose answer was never seen
                    // (a proxy's own probe of its parent, no CONNECT sent) is
                    // no request: neither a failure nor an ok flow.
                    (Leg::Upstream, false) if f.verdict == Verdict::Unknown => Class::Skip,
                    (Leg::Upstream, false) => Class::Hold(None),
                    (Leg::Upstream, true) => self.ok_one().map_or(Class::Skip, Class::Hold),
                    (Leg::None, false) => Class::Write(None),
                    (Leg::None, true) => self.ok_one().map_or(Class::Skip, Class::Write),
                }
            }
            Record::Chain(c) if c.verdict != Verdict::Ok => Class::Write(None),
            Record::Dns(d) if d.verdict != Verdict::Ok => Class::Merge,
            // An ok chain's legs were counted as flows; an ok lookup is not counted.
            Record::Chain(_) | Record::Dns(_) => self.ok_one().map_or(Class::Skip, Class::Write),
            #[allow(
                unreachable_patterns,
                reason = "a record kind added later is judged by its JSON until it has an arm"
            )]
            other => self.unknown(other),
        }
    }

    /// A record kind without an arm: by its `verdict`; a counted row (a
    /// `count`) of clean flows goes out as it is unless `ok` records are off.
    fn unknown(&mut self, r: &Record) -> Class {
        let v = serde_json::to_value(r).unwrap_or_default();
        let ok = v.get("verdict").and_then(|v| v.as_str()).is_none_or(|v| v == "ok");
        match (ok, self.ok) {
            (false, _) => Class::Write(None),
            (true, OkPolicy::Off) => Class::Skip,
            (true, _) if v.get("count").is_some() => Class::Write(None),
            (true, _) => self.ok_one().map_or(Class::Skip, Class::Write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ChainRecord, DnsRecord, DstClass, Reason};

    fn flow(leg: Option<&str>, verdict: Verdict) -> Record {
        Record::Flow(FlowRecord {
            leg: leg.map(str::to_string),
            hop: leg.map(|l| l.rsplit("->").next().unwrap_or(l).to_string()),
            verdict,
            reason: (verdict != Verdict::Ok).then_some(Reason::Refused),
            namespace: Some("payments".into()),
            workload: Some("Deployment/api".into()),
            dst_class: Some(DstClass::Public),
            ..FlowRecord::default()
        })
    }

    #[test]
    fn audit_writes_each_failure_once_and_no_ok() {
        let mut s = Selector::new(Selection::Audit, OkPolicy::Off);
        use Verdict::{Degraded, Failed, Ok};
        assert_eq!(s.classify(&flow(None, Failed)), Class::Write(None));
        assert_eq!(s.classify(&flow(None, Degraded)), Class::Write(None));
        assert_eq!(s.classify(&flow(None, Verdict::Unknown)), Class::Write(None));
        assert_eq!(s.classify(&flow(None, Ok)), Class::Skip);
        // Carried by the chain record that follows.
        assert_eq!(s.classify(&flow(Some("client->gke-squid"), Failed)), Class::Skip);
        let mut gw = flow(Some("client->egw"), Failed);
        if let Record::Flow(f) = &mut gw {
            f.vantage = Some("gateway".into());
        }
        assert_eq!(s.classify(&gw), Class::Write(None), "a gateway's forwarded leg stands alone");
        assert_eq!(s.classify(&flow(Some(DIRECT), Failed)), Class::Skip);
        assert_eq!(s.classify(&flow(Some("gke-squid->gce-proxy"), Failed)), Class::Hold(None));
        assert_eq!(s.classify(&flow(Some("gce-proxy->internet"), Ok)), Class::Skip);
        assert_eq!(s.classify(&flow(Some("gke-squid->gce-proxy"), Verdict::Unknown)), Class::Skip);
        // A hop's accepted connection: its hop chain or the local client's
        // chain carries the request.
        let mut accepted = flow(Some("gke-squid->gce-proxy"), Failed);
        if let Record::Flow(f) = &mut accepted {
            f.vantage = Some(crate::pipeline::flow_table::HOP_VANTAGE.into());
        }
        assert_eq!(s.classify(&accepted), Class::Skip);
        let chain = |verdict| Record::Chain(ChainRecord { verdict, ..ChainRecord::default() });
        assert_eq!(s.classify(&chain(Failed)), Class::Write(None));
        assert_eq!(s.classify(&chain(Ok)), Class::Skip);
        let dns = |verdict| Record::Dns(DnsRecord { verdict, ..DnsRecord::default() });
        assert_eq!(s.classify(&dns(Failed)), Class::Merge);
        assert_eq!(s.classify(&dns(Ok)), Class::Skip);
        let mut quiet = FlowRecord { verdict: Failed, quiet: true, ..FlowRecord::default() };
        assert_eq!(s.classify(&Record::Flow(quiet.clone())), Class::Skip);
        // `all`: everything but quiet close records, as `--log-flows` always did.
        let mut all = Selector::new(Selection::All, OkPolicy::Off);
        assert_eq!(all.classify(&flow(Some("client->gke-squid"), Ok)), Class::Write(None));
        assert_eq!(all.classify(&Record::Flow(quiet.clone())), Class::Skip);
        quiet.quiet = false;
        assert_eq!(all.classify(&Record::Flow(quiet)), Class::Write(None));
        let mut none = Selector::new(Selection::None, OkPolicy::Off);
        assert_eq!(none.classify(&flow(None, Failed)), Class::Skip);
    }

    #[test]
    fn ok_records_are_sampled_or_counted_never_failures() {
        let mut s = Selector::new(Selection::Audit, OkPolicy::Sample(3));
        let got: Vec<Class> = (0..6).map(|_| s.classify(&flow(None, Verdict::Ok))).collect();
        let written = got.iter().filter(|c| **c == Class::Write(Some(3))).count();
        assert_eq!(written, 2, "{got:?}");
        for _ in 0..5 {
            assert_eq!(s.classify(&flow(None, Verdict::Failed)), Class::Write(None));
        }
        let mut s = Selector::new(Selection::Audit, OkPolicy::Aggregate(Duration::from_secs(60)));
        for leg in [None, Some("client->gke-squid"), Some("client->gke-squid")] {
            assert_eq!(s.classify(&flow(leg, Verdict::Ok)), Class::Skip);
        }
        assert_eq!(s.classify(&flow(None, Verdict::Failed)), Class::Write(None));
        let mut counts: Vec<(Option<String>, u64)> =
            s.counts.iter().map(|(k, n)| (k.hop.clone(), *n)).collect();
        counts.sort();
        assert_eq!(counts, vec![(None, 1), (Some("gke-squid".into()), 2)]);
        assert!(s.counts.keys().all(|k| k.dst_class == Some("public")));
    }
}
