//! DNS metrics: bounded labels (rcode, hop; names only when allow-listed).
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::WireError;

/// Lookup latency buckets (seconds): cache hits, a LAN resolver, a
/// recursive resolution, retries at glibc's 1 s / 5 s.
pub const DNS_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct DnsMetrics {
    pub responses: IntCounterVec,
    pub duration: Histogram,
    pub lookups: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub unmatched: IntCounter,
    pub evicted: IntCounter,
}

impl DnsMetrics {
    pub fn new(r: &Registry) -> Self {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            r.register(Box::new(c.clone())).expect("unique metric name");
            c
        };
        let c = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            r.register(Box::new(c.clone())).expect("unique metric name");
            c
        };
        let duration = Histogram::with_opts(HistogramOpts::new("egress_dns_duration_seconds", "Time from a DNS query to its response (answered lookups).").buckets(DNS_BUCKETS.to_vec())).expect("valid histogram");
        r.register(Box::new(duration.clone())).expect("unique metric name");
        let m = Self {
            responses: cv("egress_dns_responses_total", "DNS lookups of local processes by outcome (rcode, or `timeout`) and the hop they are about (\"\" for none).", &["rcode", "hop"]),
            lookups: cv("egress_dns_lookups_total", "DNS lookups of allow-listed names (dns.names), by rcode.", &["name", "rcode"]),
            decode_errors: cv("egress_dns_decode_errors_total", "Captured DNS messages that did not parse (counted, skipped).", &["reason"]),
            unmatched: c("egress_dns_unmatched_responses_total", "DNS responses whose query was not seen (lost, or sent before the agent started)."),
            evicted: c("egress_dns_pending_evicted_total", "DNS queries dropped unanswered because the pending table was full."),
            duration,
        };
        for e in WireError::ALL {
            m.decode_errors.with_label_values(&[e.label()]);
        }
        m
    }
}
