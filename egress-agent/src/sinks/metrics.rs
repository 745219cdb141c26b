//! The flow metrics and the agent's own health, on one Prometheus registry
//! that every component registers its families on ([`super::register`]).
//! Bounded labels only; kernel counters are read from the per-CPU `STATS`
//! map at scrape time.
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, PerCpuArray};
use egress_common::{
    EVENT_KINDS, STAT_FLOW_MAP_FULL, STAT_PRODUCED, STAT_READ_ERRORS, STAT_RETRANSMITS,
    STAT_RING_LOST, STAT_SLOTS, event_kind_name,
};
use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

use super::{
    register::{self as reg, MetricError},
    unit_label::UnitLabels,
};
use crate::{
    config::Config,
    records::{ChainRecord, DNS_TIMEOUT, DnsRecord, FlowRecord, Phase, Verdict},
};

/// Connect latency buckets (seconds). The SYN retransmit schedule puts failed
/// and slow connects on plateaus: 1 s apart while `tcp_syn_linear_timeouts`
/// applies (newer kernels), doubling otherwise (1, 3, 7, 15, 31, 63, 127 s).
/// Each bound sits just under a plateau so every retry count has its bucket.
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.95, 1.95, 2.95, 3.95, 6.95,
    14.95, 30.95, 62.95, 126.95, 135.0,
];

/// Lookup latency buckets (seconds): cache hits, a LAN resolver, a
/// recursive resolution, retries at glibc's 1 s / 5 s.
pub const DNS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bounded labels of the flow counters: verdict, reason, who (namespace and
/// workload, or the systemd unit of a host process) and the destination class.
pub const FLOW_LABELS: &[&str] = &["result", "reason", "namespace", "workload", "dst_class", "hop"];

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntCounterVec,
    pub closes: IntCounterVec,
    pub connect_duration: HistogramVec,
    pub retransmits: IntCounter,
    pub events_produced: IntCounterVec,
    pub events_delivered: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub orphan_events: IntCounter,
    pub kernel_read_errors: IntCounter,
    pub program_attached: IntGaugeVec,
    pub program_standby: IntGaugeVec,
    pub flows_tracked: IntGauge,
    pub proxy_tunnels: IntCounterVec,
    pub hop_failures: IntCounterVec,
    pub dns: DnsMetrics,
    kernel: Mutex<Option<KernelStats>>,
    /// Host processes' units as `workload` values, bounded (transient units).
    units: UnitLabels,
    /// Bounds the `target` and DNS `name` labels (allow-lists).
    config: Option<Arc<Config>>,
}

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
    fn new(r: &Registry) -> Result<Self, MetricError> {
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

struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
}

impl Metrics {
    /// A fresh registry with the flow metrics on it; `config` bounds the
    /// `target` label and names the DNS names kept as labels.
    pub fn new(config: Option<Arc<Config>>) -> Result<Self, MetricError> {
        let r = Registry::new();
        let build = reg::gauge_vec(
            &r,
            "egress_build_info",
            "Build of the running agent (always 1).",
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Self {
            connections: reg::counter_vec(
                &r,
                "egress_connections_total",
                "Egress TCP connect outcomes, one per connection attempt.",
                FLOW_LABELS,
            )?,
            closes: reg::counter_vec(
                &r,
                "egress_connection_closes_total",
                "How established egress connections ended (ok, degraded by retransmits, failed by reset or timeout).",
                FLOW_LABELS,
            )?,
            connect_duration: reg::histogram_vec(
                &r,
                "egress_connect_duration_seconds",
                "Time from SYN_SENT to ESTABLISHED or to the failure.",
                CONNECT_BUCKETS,
                &["result"],
            )?,
            retransmits: reg::counter(
                &r,
                "egress_tcp_retransmits_total",
                "TCP retransmits on tracked egress flows (kernel count).",
            )?,
            events_produced: reg::counter_vec(
                &r,
                "egress_events_produced_total",
                "Events the kernel programs emitted or tried to emit.",
                &["kind"],
            )?,
            events_delivered: reg::counter_vec(
                &r,
                "egress_events_delivered_total",
                "Events decoded by the agent.",
                &["kind"],
            )?,
            events_lost: reg::counter_vec(
                &r,
                "egress_events_lost_total",
                "Events lost, by pipeline stage.",
                &["stage", "kind"],
            )?,
            decode_errors: reg::counter_vec(
                &r,
                "egress_decode_errors_total",
                "Ring records that failed to decode.",
                &["reason"],
            )?,
            orphan_events: reg::counter(
                &r,
                "egress_orphan_events_total",
                "Events for a socket whose start was lost (owner unknown).",
            )?,
            kernel_read_errors: reg::counter(
                &r,
                "egress_kernel_read_errors_total",
                "Tracepoint field reads that failed in the kernel.",
            )?,
            program_attached: reg::gauge_vec(
                &r,
                "egress_program_attached",
                "1 if the kernel program is attached.",
                &["program"],
            )?,
            program_standby: reg::gauge_vec(
                &r,
                "egress_program_standby",
                "1 if the kernel program is not attached because it is not needed on this host (another hook does its job, or nothing calls for it); `check` says why.",
                &["program"],
            )?,
            flows_tracked: reg::gauge(
                &r,
                "egress_flows_tracked",
                "Active opens held in the agent's flow table.",
            )?,
            proxy_tunnels: reg::counter_vec(
                &r,
                "egress_proxy_tunnels_total",
                "Proxy answers to tunnel requests, by hop, status and target (allow-listed targets; others are `other`).",
                &["hop", "status", "target"],
            )?,
            hop_failures: reg::counter_vec(
                &r,
                "egress_hop_failures_total",
                "Requests through the proxy chain that failed, by the hop that broke (`internet` for the origin side, `direct` for a bypass).",
                &["hop", "reason"],
            )?,
            dns: DnsMetrics::new(&r)?,
            registry: r,
            kernel: Mutex::new(None),
            units: UnitLabels::default(),
            config,
        };
        m.zero_known_series();
        Ok(m)
    }

    /// Export every loss/error series at 0 from the start, so that alerts
    /// and `rate()` see them before the first loss happens.
    fn zero_known_series(&self) {
        for kind in 1..EVENT_KINDS {
            let k = event_kind_name(kind);
            if k == "unknown" {
                continue;
            }
            self.events_produced.with_label_values(&[k]);
            self.events_delivered.with_label_values(&[k]);
            self.events_lost.with_label_values(&["ring", k]);
        }
        self.events_lost.with_label_values(&["kernel_flow_table", "connect_start"]);
        self.events_lost.with_label_values(&["flow_table", "connect_start"]);
        for reason in ["short", "unknown_kind", "bad_size"] {
            self.decode_errors.with_label_values(&[reason]);
        }
    }

    /// Read kernel counters from `map` at every scrape from now on.
    pub fn set_kernel_stats(&self, map: PerCpuArray<MapData, u64>) {
        if let Ok(mut k) = self.kernel.lock() {
            *k = Some(KernelStats { map, last: vec![0; STAT_SLOTS as usize] });
        }
    }

    /// Sum the per-CPU slots and move the exported counters forward.
    pub fn refresh_kernel(&self) {
        let Ok(mut guard) = self.kernel.lock() else { return };
        let Some(k) = guard.as_mut() else { return };
        for slot in 0..STAT_SLOTS {
            let Ok(values) = k.map.get(&slot, 0) else { continue };
            let total: u64 = values.iter().sum();
            let delta = total.saturating_sub(k.last[slot as usize]);
            k.last[slot as usize] = total;
            if delta == 0 {
                continue;
            }
            match slot {
                s if s < STAT_PRODUCED + EVENT_KINDS => self
                    .events_produced
                    .with_label_values(&[event_kind_name(s - STAT_PRODUCED)])
                    .inc_by(delta),
                s if s < STAT_RING_LOST + EVENT_KINDS => self
                    .events_lost
                    .with_label_values(&["ring", event_kind_name(s - STAT_RING_LOST)])
                    .inc_by(delta),
                STAT_FLOW_MAP_FULL => self
                    .events_lost
                    .with_label_values(&["kernel_flow_table", "connect_start"])
                    .inc_by(delta),
                STAT_READ_ERRORS => self.kernel_read_errors.inc_by(delta),
                STAT_RETRANSMITS => self.retransmits.inc_by(delta),
                _ => {}
            }
        }
    }

    pub fn observe(&self, r: &FlowRecord) {
        let reason = r.reason.map_or("", |x| x.as_str());
        let namespace = r.namespace.as_deref().unwrap_or("");
        let unit = r.unit.as_deref().filter(|_| r.workload.is_none()).map(|u| self.units.label(u));
        let workload = r.workload.as_deref().or(unit.as_deref()).unwrap_or("");
        let class = r.dst_class.map_or("", |c| c.as_str());
        let hop = r.hop.as_deref().unwrap_or("");
        let labels = [r.verdict.as_str(), reason, namespace, workload, class, hop];
        if let Some(status) = r.proxy_status {
            let target = r.target.as_deref().unwrap_or("");
            let target = self.config.as_deref().map_or("other", |c| c.chain.target_label(target));
            self.proxy_tunnels.with_label_values(&[hop, &status.to_string(), target]).inc();
        }

        match r.phase {
            Phase::Connect => {
                self.connections.with_label_values(&labels).inc();
                self.connect_duration
                    .with_label_values(&[r.verdict.as_str()])
                    .observe(r.latency_ms / 1000.0);
            }
            Phase::Close => self.closes.with_label_values(&labels).inc(),
        }
    }

    /// A stitched chain: its failure is counted against the hop that broke.
    /// Probes' chains are the prober's metrics (`egress_probe_*`), not these.
    pub fn observe_chain(&self, c: &ChainRecord) {
        if c.verdict == Verdict::Failed
            && !c.synthetic
            && let Some(hop) = &c.failed_hop
        {
            self.hop_failures
                .with_label_values(&[hop.as_str(), c.reason.map_or("", |r| r.as_str())])
                .inc();
        }
    }

    /// A DNS lookup. A client's failed lookup of a hop's name is a request
    /// that never reached the chain: that hop's failure. A hop's own failed
    /// lookup shows in the chain record of the request it broke instead.
    pub fn observe_dns(&self, d: &DnsRecord) {
        let hop = d.hop.as_deref().unwrap_or("");
        self.dns.responses.with_label_values(&[&*d.rcode, hop]).inc();
        if d.rcode != DNS_TIMEOUT {
            self.dns.duration.observe(d.latency_ms / 1000.0);
        }
        if let Some(c) = &self.config
            && c.dns.name_label(&d.name) != "other"
        {
            self.dns.lookups.with_label_values(&[&d.name, &*d.rcode]).inc();
        }
        if let (Verdict::Failed, Some(h), Some(r), None) =
            (d.verdict, &d.hop, d.reason, &d.asked_by)
        {
            self.hop_failures.with_label_values(&[h.as_str(), r.as_str()]).inc();
        }
    }

    /// Prometheus text exposition (kernel counters refreshed first).
    pub fn render(&self) -> String {
        self.refresh_kernel();
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Reason;

    #[test]
    fn buckets_separate_syn_plateaus() {
        // 0, 1, 2, 3 (linear) and 1, 3, 7, 15 s (exponential) retry plateaus
        // must land in distinct buckets (with a little scheduling slack).
        let bucket = |s: f64| CONNECT_BUCKETS.iter().position(|&b| s <= b);
        let plateaus = [0.01, 1.02, 2.03, 3.03, 4.05, 7.05, 15.1, 31.1, 63.2, 127.3];
        let idx: Vec<_> = plateaus.iter().map(|&s| bucket(s)).collect();
        for w in idx.windows(2) {
            assert!(w[0] < w[1], "{plateaus:?} → {idx:?}");
        }
    }

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new(None).expect("metrics");
        let r = FlowRecord {
            verdict: Verdict::Failed,
            reason: Some(Reason::Refused),
            errno: 111,
            latency_ms: 0.7,
            ..FlowRecord::default()
        };
        m.observe(&r);
        m.program_attached.with_label_values(&["inet_sock_set_state"]).set(1);
        m.events_lost.with_label_values(&["sink", "record"]).inc();
        m.decode_errors.with_label_values(&["short"]).inc();
        let text = m.render();
        for needle in [
            "egress_connections_total{dst_class=\"\",hop=\"\",namespace=\"\",reason=\"refused\",result=\"failed\",workload=\"\"} 1",
            "egress_connect_duration_seconds_bucket{result=\"failed\",le=\"0.0005\"} 0",
            "egress_connect_duration_seconds_bucket{result=\"failed\",le=\"0.001\"} 1",
            "egress_tcp_retransmits_total 0",
            "egress_events_lost_total{kind=\"record\",stage=\"sink\"} 1",
            "egress_decode_errors_total{reason=\"short\"} 1",
            "egress_program_attached{program=\"inet_sock_set_state\"} 1",
            "egress_build_info{version=",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
