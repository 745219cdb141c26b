//! Prometheus metrics. Bounded labels only; kernel counters are read from the
//! per-CPU `STATS` map at scrape time.
use std::sync::Mutex;

use aya::maps::{MapData, PerCpuArray};
use egress_common::{
    EVENT_KINDS, STAT_FLOW_MAP_FULL, STAT_PRODUCED, STAT_READ_ERRORS, STAT_RETRANSMITS, STAT_RING_LOST,
    STAT_SLOTS, event_kind_name,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::record::FlowRecord;

/// Connect latency buckets (seconds). The SYN retransmit schedule puts failed
/// and slow connects on plateaus: 1 s apart while `tcp_syn_linear_timeouts`
/// applies (newer kernels), doubling otherwise (1, 3, 7, 15, 31, 63, 127 s).
/// Each bound sits just under a plateau so every retry count has its bucket.
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.95, 1.95, 2.95, 3.95, 6.95, 14.95,
    30.95, 62.95, 126.95, 135.0,
];

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
    pub dns: crate::dns::metrics::DnsMetrics,
    kernel: Mutex<Option<KernelStats>>,
    chain: std::sync::RwLock<Option<std::sync::Arc<crate::chain::Chain>>>,
}

struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let connect_duration = HistogramVec::new(
            HistogramOpts::new("egress_connect_duration_seconds", "Time from SYN_SENT to ESTABLISHED or to the failure.")
                .buckets(CONNECT_BUCKETS.to_vec()),
            &["result"],
        )
        .expect("valid histogram");
        r.register(Box::new(connect_duration.clone())).expect("unique metric name");
        let program_attached = IntGaugeVec::new(Opts::new("egress_program_attached", "1 if the kernel program is attached."), &["program"]).expect("valid gauge");
        r.register(Box::new(program_attached.clone())).expect("unique metric name");
        let program_standby = IntGaugeVec::new(
            Opts::new("egress_program_standby", "1 if the kernel program is not attached because it is not needed on this host (another hook does its job, or nothing calls for it); `check` says why."),
            &["program"],
        )
        .expect("valid gauge");
        r.register(Box::new(program_standby.clone())).expect("unique metric name");
        let flows_tracked = IntGauge::new("egress_flows_tracked", "Active opens held in the agent's flow table.").expect("valid gauge");
        r.register(Box::new(flows_tracked.clone())).expect("unique metric name");
        let build = IntGaugeVec::new(Opts::new("egress_build_info", "Build of the running agent (always 1)."), &["version"]).expect("valid gauge");
        r.register(Box::new(build.clone())).expect("unique metric name");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Self {
            connections: counter_vec(&r, "egress_connections_total", "Egress TCP connect outcomes, one per connection attempt.", FLOW_LABELS),
            closes: counter_vec(&r, "egress_connection_closes_total", "How established egress connections ended (ok, degraded by retransmits, failed by reset or timeout).", FLOW_LABELS),
            retransmits: counter(&r, "egress_tcp_retransmits_total", "TCP retransmits on tracked egress flows (kernel count)."),
            events_produced: counter_vec(&r, "egress_events_produced_total", "Events the kernel programs emitted or tried to emit.", &["kind"]),
            events_delivered: counter_vec(&r, "egress_events_delivered_total", "Events decoded by the agent.", &["kind"]),
            events_lost: counter_vec(&r, "egress_events_lost_total", "Events lost, by pipeline stage.", &["stage", "kind"]),
            decode_errors: counter_vec(&r, "egress_decode_errors_total", "Ring records that failed to decode.", &["reason"]),
            orphan_events: counter(&r, "egress_orphan_events_total", "Events for a socket whose start was lost (owner unknown)."),
            kernel_read_errors: counter(&r, "egress_kernel_read_errors_total", "Tracepoint field reads that failed in the kernel."),
            proxy_tunnels: counter_vec(&r, "egress_proxy_tunnels_total", "Proxy answers to tunnel requests, by hop, status and target (allow-listed targets; others are `other`).", &["hop", "status", "target"]),
            hop_failures: counter_vec(&r, "egress_hop_failures_total", "Requests through the proxy chain that failed, by the hop that broke (`internet` for the origin side, `direct` for a bypass).", &["hop", "reason"]),
            dns: crate::dns::metrics::DnsMetrics::new(&r),
            program_attached,
            program_standby,
            flows_tracked,
            connect_duration,
            registry: r,
            kernel: Mutex::new(None),
            chain: std::sync::RwLock::new(None),
        };
        m.zero_known_series();
        m
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

    /// The chain whose allow-list bounds the `target` label.
    pub fn set_chain(&self, chain: Option<std::sync::Arc<crate::chain::Chain>>) {
        if let Ok(mut c) = self.chain.write() {
            *c = chain;
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
                s if s < STAT_PRODUCED + EVENT_KINDS => self.events_produced.with_label_values(&[event_kind_name(s - STAT_PRODUCED)]).inc_by(delta),
                s if s < STAT_RING_LOST + EVENT_KINDS => self.events_lost.with_label_values(&["ring", event_kind_name(s - STAT_RING_LOST)]).inc_by(delta),
                STAT_FLOW_MAP_FULL => self.events_lost.with_label_values(&["kernel_flow_table", "connect_start"]).inc_by(delta),
                STAT_READ_ERRORS => self.kernel_read_errors.inc_by(delta),
                STAT_RETRANSMITS => self.retransmits.inc_by(delta),
                _ => {}
            }
        }
    }

    pub fn observe(&self, r: &FlowRecord) {
        let reason = r.reason.map_or("", |x| x.as_str());
        let namespace = r.namespace.as_deref().unwrap_or("");
        let workload = r.workload.as_deref().or(r.unit.as_deref()).unwrap_or("");
        let class = r.dst_class.map_or("", |c| c.as_str());
        let hop = r.hop.as_deref().unwrap_or("");
        let labels = [r.verdict.as_str(), reason, namespace, workload, class, hop];
        if let Some(status) = r.proxy_status {
            let target = r.target.as_deref().unwrap_or("");
            let target = self.chain.read().ok().and_then(|c| c.as_ref().map(|c| c.target_label(target).to_string())).unwrap_or_else(|| "other".into());
            self.proxy_tunnels.with_label_values(&[hop, &status.to_string(), &target]).inc();
        }

        match r.phase {
            crate::record::Phase::Connect => {
                self.connections.with_label_values(&labels).inc();
                self.connect_duration.with_label_values(&[r.verdict.as_str()]).observe(r.latency_ms / 1000.0);
            }
            crate::record::Phase::Close => self.closes.with_label_values(&labels).inc(),
        }
    }

    /// A stitched chain: its failure is counted against the hop that broke.
    /// Probes' chains are the prober's metrics (`egress_probe_*`), not these.
    pub fn observe_chain(&self, c: &crate::chains::ChainRecord) {
        if c.verdict == crate::verdict::Verdict::Failed
            && !c.synthetic
            && let Some(hop) = &c.failed_hop
        {
            self.hop_failures.with_label_values(&[hop.as_str(), c.reason.map_or("", |r| r.as_str())]).inc();
        }
    }

    /// A DNS lookup. A client's failed lookup of a hop's name is a request
    /// that never reached the chain: that hop's failure. A hop's own failed
    /// lookup shows in the chain record of the request it broke instead.
    pub fn observe_dns(&self, d: &crate::dns::DnsRecord) {
        let hop = d.hop.as_deref().unwrap_or("");
        self.dns.responses.with_label_values(&[d.rcode, hop]).inc();
        if d.rcode != crate::dns::TIMEOUT {
            self.dns.duration.observe(d.latency_ms / 1000.0);
        }
        let chain = self.chain.read().ok().and_then(|c| c.clone());
        if let Some(c) = &chain
            && c.dns.name_label(&d.name) != "other"
        {
            self.dns.lookups.with_label_values(&[&d.name, d.rcode]).inc();
        }
        if let (crate::verdict::Verdict::Failed, Some(h), Some(r), None) = (d.verdict, &d.hop, d.reason, &d.asked_by) {
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Reason, Verdict};

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
        let m = Metrics::new();
        let r = FlowRecord { verdict: Verdict::Failed, reason: Some(Reason::Refused), errno: 111, latency_ms: 0.7, ..FlowRecord::default() };
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
