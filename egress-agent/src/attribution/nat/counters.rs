//! Conntrack self-metrics. Labels are bounded: `netns` is one of the
//! configured namespaces (`self` for the agent's own).
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::sinks::register::{self as reg, MetricError};

#[derive(Clone)]
pub(crate) struct NatMetrics {
    pub events: IntCounterVec,
    pub decode_errors: IntCounter,
    pub entries: IntGauge,
    pub evicted: IntCounter,
    pub lost: IntCounterVec,
    pub insert_failed: IntCounterVec,
    pub drop: IntCounterVec,
    pub early_drop: IntCounterVec,
    pub mappings: IntCounterVec,
    pub comparisons: IntCounterVec,
    pub kprobe_unwatched: IntCounter,
    pub forwarded_dropped: IntCounter,
}

impl NatMetrics {
    pub(crate) fn register(r: &Registry) -> Result<Self, MetricError> {
        let mappings = reg::counter_vec(
            r,
            "egress_nat_mappings_total",
            "TCP NAT mappings (original -> reply tuple) received per source: ctnetlink (events and dumps) or kprobe (conntrack_confirm, where kprobes exist).",
            &["source"],
        )?;
        let comparisons = reg::counter_vec(
            r,
            "egress_nat_source_comparisons_total",
            "Conntrack entries both sources reported in one watched namespace, compared once: result agree or disagree (different reply tuple).",
            &["result"],
        )?;
        // Exported at 0 from the start (alerts on increase()).
        for l in ["ctnetlink", "kprobe"] {
            mappings.with_label_values(&[l]);
        }
        for l in ["agree", "disagree"] {
            comparisons.with_label_values(&[l]);
        }
        Ok(Self {
            mappings,
            comparisons,
            kprobe_unwatched: reg::counter(
                r,
                "egress_nat_kprobe_unwatched_total",
                "Kprobe NAT mappings from network namespaces conntrack is not followed in (not used; --conntrack-netns chooses).",
            )?,
            events: reg::counter_vec(
                r,
                "egress_conntrack_events_total",
                "Conntrack messages received, any protocol: type new/destroy (events) or dump (initial and resync dumps).",
                &["netns", "type"],
            )?,
            decode_errors: reg::counter(
                r,
                "egress_conntrack_decode_errors_total",
                "Conntrack netlink messages that did not decode.",
            )?,
            entries: reg::gauge(
                r,
                "egress_conntrack_entries",
                "TCP conntrack entries held by the agent (live and recently destroyed).",
            )?,
            evicted: reg::counter(
                r,
                "egress_conntrack_evicted_total",
                "Entries evicted (oldest first) to keep the agent's table in bound.",
            )?,
            lost: reg::counter_vec(
                r,
                "egress_conntrack_lost_total",
                "Netlink socket overruns (ENOBUFS): conntrack events the kernel dropped; each triggers a resync dump.",
                &["netns"],
            )?,
            insert_failed: reg::counter_vec(
                r,
                "egress_conntrack_insert_failed_total",
                "Kernel conntrack insert failures (sum of per-CPU insert_failed): tuple clashes, e.g. NAT port exhaustion.",
                &["netns"],
            )?,
            drop: reg::counter_vec(
                r,
                "egress_conntrack_drop_total",
                "Packets the kernel dropped because the conntrack table was full (sum of per-CPU drop).",
                &["netns"],
            )?,
            forwarded_dropped: reg::counter(
                r,
                "egress_conntrack_forwarded_dropped_total",
                "Ended forwarded flows of a routed hop (SNATed to its egress IPs) dropped unjudged because the agent's queue was full.",
            )?,
            early_drop: reg::counter_vec(
                r,
                "egress_conntrack_early_drop_total",
                "Unassured conntrack entries the kernel evicted to make room in a full table (sum of per-CPU early_drop).",
                &["netns"],
            )?,
        })
    }

    /// Comparisons the store made, now on the counters.
    pub(crate) fn compared(&self, c: super::store::Comparisons) {
        self.comparisons.with_label_values(&["agree"]).inc_by(c.agree);
        self.comparisons.with_label_values(&["disagree"]).inc_by(c.disagree);
    }
}
