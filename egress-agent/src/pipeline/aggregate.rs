//! Counted rows: the kernel's counts of clean flows (per owner cgroup and
//! destination) become aggregate records, attributed like a flow record is
//! (pod or unit from the cgroup, destination class, hop and leg).
use egress_common::{AggKey, AggValue};

use super::enrich::Enricher;
use crate::{
    kernel::decode,
    records::{AggregateRecord, FlowRecord, Verdict, rfc3339},
};

/// The counted row of one key over the last `interval_ms`.
pub fn record(
    k: &AggKey,
    v: &AggValue,
    interval_ms: u64,
    enricher: &mut Enricher,
) -> AggregateRecord {
    let dst = decode::ip(k.family, &k.daddr).map(|ip| std::net::SocketAddr::new(ip, k.dport));
    // Attributed as a flow of that owner to that destination would be.
    let mut f = FlowRecord {
        cgroup_id: k.cgroup_id,
        netns: k.netns,
        dst,
        dst_actual: dst,
        verdict: Verdict::Ok,
        ..FlowRecord::default()
    };
    enricher.enrich(&mut f);
    AggregateRecord {
        time: rfc3339(std::time::SystemTime::now()),
        interval_ms,
        count: v.connects,
        closes: v.closes,
        // Clean in the kernel's eyes; a bypass in the chain's (where a
        // public destination was counted: a range the agent calls public
        // that the kernel was told is private).
        verdict: f.verdict,
        reason: f.reason,
        latency_ms: if v.connects == 0 {
            0.0
        } else {
            (v.latency_sum_ns as f64 / v.connects as f64 / 1e4).round() / 100.0
        },
        cgroup_id: k.cgroup_id,
        cgroup: f.cgroup,
        netns: k.netns,
        pod_uid: f.pod_uid,
        container_id: f.container_id,
        namespace: f.namespace,
        pod: f.pod,
        container: f.container,
        workload: f.workload,
        unit: f.unit,
        dst,
        dst_name: f.dst_name,
        dst_class: f.dst_class,
        hop: f.hop,
        leg: f.leg,
    }
}
