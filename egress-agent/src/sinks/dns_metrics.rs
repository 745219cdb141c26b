//! The DNS families: lookups of local processes by outcome and hop, their
//! latency, and the allow-listed names; bounded labels only.
use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

use super::register::{self as reg, MetricError};

/// Lookup latency buckets (seconds): cache hits, a LAN resolver, a
/// recursive resolution, retries at glibc's 1 s / 5 s.
pub const DNS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// DNS metrics: bounded labels (rcode, hop; names only when allow-listed).
pub struct DnsMetrics {
    pub responses: IntCounterVec,
    pub duration: Histogram,
    pub lookups: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub unmatched: IntCounter,
    pub evicted: IntCounter,
}

impl DnsMetrics {
    pub(super) fn new(r: &Registry) -> Result<Self, MetricError> {
        Ok(Self {
            responses: reg::counter_vec(
                r,
                "egress_dns_responses_total",
                "DNS lookups of local processes by outcome (rcode, or `timeout`) and the hop they are about (\"\" for none).",
                &["rcode", "hop"],
            )?,
            duration: reg::histogram(
                r,
                "egress_dns_duration_seconds",
                "Time from a DNS query to its response (answered lookups).",
                DNS_BUCKETS,
            )?,
            lookups: reg::counter_vec(
                r,
                "egress_dns_lookups_total",
                "DNS lookups of allow-listed names (dns.names), by rcode.",
                &["name", "rcode"],
            )?,
            decode_errors: reg::counter_vec(
                r,
                "egress_dns_decode_errors_total",
                "Captured DNS messages that did not parse (counted, skipped).",
                &["reason"],
            )?,
            unmatched: reg::counter(
                r,
                "egress_dns_unmatched_responses_total",
                "DNS responses whose query was not seen (lost, or sent before the agent started).",
            )?,
            evicted: reg::counter(
                r,
                "egress_dns_pending_evicted_total",
                "DNS queries dropped unanswered because the pending table was full.",
            )?,
        })
    }
}
