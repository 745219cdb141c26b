//! What the export router keeps a while before it writes: upstream legs
//! until a chain record claims them, failed lookups until their siblings
//! (A and AAAA, retries) have come, and the counts of `ok` flows until the
//! interval ends. Everything here is bounded; what does not fit is written
//! at once rather than lost.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Map, Value, json};

use super::select::Counts;
use crate::records::{ChainRecord, DnsRecord, Record, rfc3339};

/// How long an upstream leg waits for the chain record that carries it. A
/// proxy answers its client right after its upstream connect resolves, so
/// the chain comes within milliseconds on a node that sees the whole chain;
/// the margin covers a proxy retrying other addresses before it answers.
pub const LEG_HOLD: Duration = Duration::from_secs(15);
/// Failed lookups of one asker for one name within this window are one line:
/// a resolver asks A and AAAA at once, their answers (or timeouts) come
/// within milliseconds; a retry after a timeout is a line of its own.
pub const DNS_MERGE: Duration = Duration::from_millis(300);
/// At most this many legs and lookups are held; past it the oldest goes out.
pub const HOLD_MAX: usize = 4096;

/// A record ready to be written, with the sampling rate of an `ok` record.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "moved once from the holds to the writer")]
pub enum Ready {
    Record(Record, Option<u32>),
    /// A row made here (merged lookups, aggregates): its native JSON object.
    Row(Map<String, Value>),
}

struct HeldLeg {
    until: Instant,
    flow_id: String,
    rec: Record,
    sampled: Option<u32>,
}

struct MergedDns {
    until: Instant,
    first: DnsRecord,
    count: u64,
    qtypes: Vec<String>,
}

type DnsKey = (u64, String, String);

/// The counts of one aggregation interval.
struct Window {
    every: Duration,
    start: SystemTime,
    due: Instant,
    counts: Counts,
}

#[derive(Default)]
pub struct Holds {
    legs: VecDeque<HeldLeg>,
    /// Flow ids of legs a chain claimed before the leg itself came.
    claimed: HashSet<String>,
    dns: HashMap<DnsKey, MergedDns>,
    window: Option<Window>,
}

impl Holds {
    pub fn new(aggregate: Option<Duration>) -> Self {
        let window = aggregate.map(|every| Window {
            every,
            start: SystemTime::now(),
            due: Instant::now() + every,
            counts: Counts::new(),
        });
        Self { window, ..Self::default() }
    }

    /// Hold an upstream leg; a full hold writes its oldest leg now.
    pub fn leg(&mut self, now: Instant, rec: Record, sampled: Option<u32>, out: &mut Vec<Ready>) {
        let Record::Flow(f) = &rec else {
            out.push(Ready::Record(rec, sampled));
            return;
        };
        if self.claimed.remove(&f.flow_id) {
            return;
        }
        if self.legs.len() >= HOLD_MAX
            && let Some(old) = self.legs.pop_front()
        {
            out.push(Ready::Record(old.rec, old.sampled));
        }
        let flow_id = f.flow_id.clone();
        self.legs.push_back(HeldLeg { until: now + LEG_HOLD, flow_id, rec, sampled });
    }

    /// A chain record: the legs it carries are not written on their own.
    pub fn chain(&mut self, c: &ChainRecord) {
        for l in c.legs.iter().filter(|l| !l.flow_id.is_empty()) {
            if let Some(i) = self.legs.iter().position(|h| h.flow_id == l.flow_id) {
                self.legs.remove(i);
            } else if !l.leg.starts_with("client->") && self.claimed.len() < HOLD_MAX {
                self.claimed.insert(l.flow_id.clone());
            }
        }
    }

    /// A failed lookup: merged with the same asker's failures of the same name.
    pub fn dns(&mut self, now: Instant, d: DnsRecord, out: &mut Vec<Ready>) {
        let key = (d.cgroup_id, d.name.clone(), d.rcode.to_string());
        if let Some(m) = self.dns.get_mut(&key) {
            m.count += 1;
            if !m.qtypes.iter().any(|q| *q == d.qtype) {
                m.qtypes.push(d.qtype.to_string());
            }
            return;
        }
        if self.dns.len() >= HOLD_MAX {
            out.push(Ready::Record(Record::Dns(d), None));
            return;
        }
        let qtypes = vec![d.qtype.to_string()];
        self.dns.insert(key, MergedDns { until: now + DNS_MERGE, first: d, count: 1, qtypes });
    }

    /// `ok` flows counted on the pipeline's side since its last hand-over.
    pub fn count(&mut self, counts: Counts) {
        if let Some(w) = &mut self.window {
            for (k, n) in counts {
                *w.counts.entry(k).or_default() += n;
            }
        }
    }

    /// Everything whose wait is over (all of it with `all`), in order.
    pub fn due(&mut self, now: Instant, all: bool, out: &mut Vec<Ready>) {
        while self.legs.front().is_some_and(|h| all || h.until <= now) {
            if let Some(h) = self.legs.pop_front() {
                out.push(Ready::Record(h.rec, h.sampled));
            }
        }
        if self.legs.is_empty() {
            self.claimed.clear();
        }
        let done: Vec<DnsKey> = self
            .dns
            .iter()
            .filter(|(_, m)| all || m.until <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some(m) = self.dns.remove(&k) {
                out.push(merged(m));
            }
        }
        if let Some(w) = &mut self.window
            && (all || w.due <= now)
        {
            let end = SystemTime::now();
            let mut rows: Vec<_> = std::mem::take(&mut w.counts).into_iter().collect();
            rows.sort();
            for (k, n) in rows {
                let mut row = Map::new();
                row.insert("record".into(), json!("aggregate"));
                row.insert("time".into(), json!(rfc3339(end)));
                row.insert("start".into(), json!(rfc3339(w.start)));
                row.insert("end".into(), json!(rfc3339(end)));
                row.insert("interval_s".into(), json!(w.every.as_secs_f64()));
                row.insert("verdict".into(), json!("ok"));
                row.insert("count".into(), json!(n));
                row.insert("namespace".into(), json!(k.namespace));
                row.insert("workload".into(), json!(k.workload));
                row.insert("unit".into(), json!(k.unit));
                row.insert("dst_class".into(), json!(k.dst_class));
                row.insert("hop".into(), json!(k.hop));
                out.push(Ready::Row(row));
            }
            w.start = end;
            w.due = now + w.every;
        }
    }
}

/// One line for merged lookups: the first one's record, with `count` and
/// `qtypes` when more than one came.
fn merged(m: MergedDns) -> Ready {
    if m.count == 1 {
        return Ready::Record(Record::Dns(m.first), None);
    }
    let Ok(Value::Object(mut row)) = serde_json::to_value(Record::Dns(m.first)) else {
        return Ready::Row(Map::new());
    };
    row.insert("count".into(), json!(m.count));
    row.insert("qtypes".into(), json!(m.qtypes));
    Ready::Row(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{FlowRecord, LegSummary, Verdict};

    fn leg(id: &str) -> Record {
        Record::Flow(FlowRecord {
            flow_id: id.into(),
            leg: Some("gke-squid->gce-proxy".into()),
            verdict: Verdict::Failed,
            ..FlowRecord::default()
        })
    }

    fn ids(out: &[Ready]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Ready::Record(Record::Flow(f), _) => f.flow_id.clone(),
                Ready::Record(other, _) => format!("{other:?}"),
                Ready::Row(m) => Value::Object(m.clone()).to_string(),
            })
            .collect()
    }

    #[test]
    fn legs_claimed_by_a_chain_are_not_written_others_are_after_the_hold() {
        let mut h = Holds::new(None);
        let t0 = Instant::now();
        let mut out = Vec::new();
        h.leg(t0, leg("a"), None, &mut out);
        h.leg(t0, leg("b"), None, &mut out);
        let chain = ChainRecord {
            legs: vec![
                LegSummary {
                    leg: "client->gke-squid".into(),
                    flow_id: "c".into(),
                    ..LegSummary::default()
                },
                LegSummary {
                    leg: "gke-squid->gce-proxy".into(),
                    flow_id: "a".into(),
                    ..LegSummary::default()
                },
                // Claimed before it came (not expected, but never written twice).
                LegSummary {
                    leg: "gce-proxy->internet".into(),
                    flow_id: "z".into(),
                    ..LegSummary::default()
                },
            ],
            ..ChainRecord::default()
        };
        h.chain(&chain);
        h.leg(t0, leg("z"), None, &mut out);
        h.due(t0 + Duration::from_secs(1), false, &mut out);
        assert!(out.is_empty(), "{:?}", ids(&out));
        h.due(t0 + LEG_HOLD, false, &mut out);
        assert_eq!(ids(&out), ["b"]);
    }

    #[test]
    fn failed_lookups_of_one_asker_and_name_are_one_line() {
        let mut h = Holds::new(None);
        let t0 = Instant::now();
        let mut out = Vec::new();
        let d = |qtype: &'static str, cgroup_id| DnsRecord {
            name: "proxy.test".into(),
            qtype: qtype.into(),
            rcode: "NXDOMAIN".into(),
            cgroup_id,
            verdict: Verdict::Failed,
            ..DnsRecord::default()
        };
        h.dns(t0, d("A", 7), &mut out);
        h.dns(t0, d("AAAA", 7), &mut out);
        h.dns(t0, d("A", 8), &mut out);
        h.due(t0 + Duration::from_millis(100), false, &mut out);
        assert!(out.is_empty());
        h.due(t0 + DNS_MERGE, false, &mut out);
        assert_eq!(out.len(), 2);
        let rows: Vec<&Map<String, Value>> =
            out.iter().filter_map(|r| if let Ready::Row(m) = r { Some(m) } else { None }).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0]["count"].as_u64(), &rows[0]["qtypes"]),
            (Some(2), &json!(["A", "AAAA"]))
        );
        assert_eq!(rows[0]["record"], "dns");
    }

    #[test]
    fn aggregates_are_one_row_per_key_per_interval() {
        let every = Duration::from_secs(60);
        let mut h = Holds::new(Some(every));
        let key = super::super::select::AggKey {
            namespace: Some("payments".into()),
            workload: Some("Deployment/api".into()),
            unit: None,
            dst_class: Some("public"),
            hop: Some("gke-squid".into()),
        };
        h.count(Counts::from([(key.clone(), 5)]));
        h.count(Counts::from([(key, 2)]));
        let mut out = Vec::new();
        h.due(Instant::now(), false, &mut out);
        assert!(out.is_empty());
        h.due(Instant::now() + every, false, &mut out);
        let [Ready::Row(row)] = out.as_slice() else { panic!("{:?}", ids(&out)) };
        assert_eq!((row["record"].as_str(), row["count"].as_u64()), (Some("aggregate"), Some(7)));
        assert_eq!(row["hop"], "gke-squid");
        out.clear();
        h.due(Instant::now() + 2 * every, false, &mut out);
        assert!(out.is_empty(), "an empty interval writes nothing");
    }
}
