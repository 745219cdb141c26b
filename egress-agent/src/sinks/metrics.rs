//! The flow metrics and the agent's own health, on one Prometheus registry
//! that every component registers its families on ([`super::register`]).
//! Bounded labels only; kernel counters are read from the per-CPU `STATS`
//! map at scrape time.
//!
//! Hop health is kept apart from what one client can cause (README,
//! "Hop health"): `egress_hop_connects_total{from}` separates connects made
//! by the chain itself (a hop's own upstream legs, the agent's probe) from
//! clients' connects; `egress_hop_request_failures_total` and
//! `egress_hop_lookup_failures_total` carry the client workload, so rules
//! can ask how many distinct workloads see a hop fail. The `workload` label
//! is never empty for a pod: `Kind/name`, `Pod` for a bare pod, `unknown`
//! when its metadata is unavailable; a host process's systemd unit; "" only
//! for a process that is neither.
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, PerCpuArray};
use egress_common::{
    AggValue, EVENT_FLOW, EVENT_KINDS, LATENCY_BOUNDS_NS, STAT_AGG_CLOSES, STAT_AGG_CONNECTS,
    STAT_AGG_FULL, STAT_DESTROY_RECOVERED, STAT_DNS_RATE_LIMITED, STAT_FLOW_ENDS,
    STAT_FLOW_EVICTED, STAT_FLOW_MAP_FULL, STAT_FLOW_STARTS, STAT_NESTED_RECOVERED, STAT_PRODUCED,
    STAT_READ_ERRORS, STAT_RETRANSMITS, STAT_RING_LOST, STAT_SLOTS, event_kind_name,
};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

use super::{
    dns_metrics::DnsMetrics,
    histogram::BucketHistogramVec,
    register::{self as reg, MetricError},
    unit_label::UnitLabels,
};
use crate::{
    config::{Config, DIRECT},
    kernel::run_skips::RunSkips,
    records::{
        AggregateRecord, ChainRecord, DNS_TIMEOUT, DnsRecord, FlowRecord, Phase, Reason, Verdict,
    },
};

/// `workload` label of a bare pod (no owner): the pod's name is in the
/// records, not in the label (bare pods' names are unbounded).
pub const BARE_POD: &str = "Pod";

/// The `workload` label of an owner: its workload (`Kind/name`, or
/// `unknown` for a pod without metadata), a bare pod's [`BARE_POD`], a host
/// process's systemd unit, else "".
pub fn owner_label<'a>(
    workload: Option<&'a str>,
    unit: Option<&'a str>,
    pod: Option<&str>,
) -> &'a str {
    workload.or(unit).or_else(|| pod.map(|_| BARE_POD)).unwrap_or("")
}

/// `from` label of a connect to a hop: the hop whose process made it
/// (`A` of the leg `A->B`), `probe` for the agent's own prober, `client`.
fn connect_source(r: &FlowRecord) -> &str {
    if r.synthetic {
        return "probe";
    }
    match r.leg.as_deref().and_then(|l| l.split_once("->")) {
        Some((from, _)) if from != "client" => from,
        _ => "client",
    }
}

/// Connect latency buckets (seconds): the kernel's own
/// ([`LATENCY_BOUNDS_NS`], where it counts clean connects), so counted and
/// reported connects land in the same buckets. The SYN retransmit schedule
/// puts failed and slow connects on plateaus: 1 s apart while
/// `tcp_syn_linear_timeouts` applies (newer kernels), doubling otherwise
/// (1, 3, 7, 15, 31, 63, 127 s). Each bound sits just under a plateau so
/// every retry count has its bucket.
pub fn connect_buckets() -> Vec<f64> {
    LATENCY_BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9).collect()
}

/// Bounded labels of the flow counters: verdict, reason, who (namespace and
/// workload, or the systemd unit of a host process) and the destination class.
pub const FLOW_LABELS: &[&str] = &["result", "reason", "namespace", "workload", "dst_class", "hop"];

pub struct Metrics {
    pub registry: Registry,
    pub connections: IntCounterVec,
    pub closes: IntCounterVec,
    pub connect_duration: BucketHistogramVec,
    pub retransmits: IntCounter,
    pub events_produced: IntCounterVec,
    pub events_delivered: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub orphan_events: IntCounter,
    pub kernel_read_errors: IntCounter,
    pub program_attached: IntGaugeVec,
    pub program_runs_skipped: IntCounterVec,
    pub kernel_nested_recovered: IntCounter,
    pub kernel_destroy_recovered: IntCounter,
    pub program_standby: IntGaugeVec,
    pub flows_tracked: IntGauge,
    pub kernel_flows_tracked: IntGauge,
    pub kernel_flows_counted: IntCounterVec,
    pub kernel_aggregate_full: IntCounter,
    pub adopted_sockets: IntCounterVec,
    pub proxy_tunnels: IntCounterVec,
    pub hop_failures: IntCounterVec,
    pub hop_vantage_failures: IntCounterVec,
    pub hop_accepted: IntCounterVec,
    pub hop_connects: IntCounterVec,
    pub hop_request_failures: IntCounterVec,
    pub hop_lookup_failures: IntCounterVec,
    pub policy_denied: IntCounterVec,
    pub dns: DnsMetrics,
    kernel: Mutex<Option<KernelStats>>,
    /// The programs whose skipped runs are read at every scrape.
    run_skips: Mutex<Option<RunSkips>>,
    /// Host processes' units as `workload` values, bounded (transient units).
    units: UnitLabels,
    /// Bounds the `target` and DNS `name` labels (allow-lists).
    config: Option<Arc<Config>>,
}

struct KernelStats {
    map: PerCpuArray<MapData, u64>,
    last: Vec<u64>,
    /// Entries of the kernel's socket table (`--max-flows`).
    capacity: u64,
    /// Evictions exported so far (see [`socket_table_books`]).
    evicted: u64,
}

/// The kernel socket table's fill and evictions, from its counters.
///
/// The table is an LRU: an insert into a full table evicts an entry without
/// a word, and the kernel counts the eviction only when the evicted
/// socket's next transition finds no state (`seen_evicted`), which for a
/// socket stuck connecting to a blackhole is minutes later. Every start is
/// ended, evicted or still held (at most `capacity`), so at least
/// `starts - ends - capacity` were evicted already: the count exported is
/// the larger of the two lower bounds, never going back (`prev`). It shows
/// a fill's evictions while it happens and settles on the seen count. The
/// fill is what remains, never more than the table holds.
///
/// Returns (fill, evictions).
fn socket_table_books(
    starts: u64,
    ends: u64,
    seen_evicted: u64,
    capacity: u64,
    prev: u64,
) -> (u64, u64) {
    let open = starts.saturating_sub(ends);
    let evicted = prev.max(seen_evicted).max(open.saturating_sub(capacity));
    (open.saturating_sub(evicted).min(capacity), evicted)
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
            connect_duration: reg::bucket_histogram_vec(
                &r,
                "egress_connect_duration_seconds",
                "Time from SYN_SENT to ESTABLISHED or to the failure.",
                &connect_buckets(),
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
            program_runs_skipped: reg::counter_vec(
                &r,
                "egress_program_runs_skipped_total",
                "Runs of a kernel program the kernel skipped because the program was already running on that CPU (a hook fired nested, e.g. a timer softirq's state change during a task's; Linux 5.12+). inet_sock_set_state's are taken up by a later hook on the same socket (egress_kernel_nested_recovered_total, egress_kernel_destroy_recovered_total); any other program's may be a transition no record shows.",
                &["program"],
            )?,
            kernel_nested_recovered: reg::counter(
                &r,
                "egress_kernel_nested_recovered_total",
                "State changes the kernel skipped inet_sock_set_state for (it was running on the CPU) that a later hook on the same socket took up: an ESTABLISHED at the flow's first payload packet or its close (the record says untimed), a hop's accepted connection at its first payload packet, a reset's CLOSE at the error report that follows it.",
            )?,
            kernel_destroy_recovered: reg::counter(
                &r,
                "egress_kernel_destroy_recovered_total",
                "Flows whose close no state change reported (the kernel skipped it), ended when their socket was destroyed (tcp_destroy_sock).",
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
                "Flows to proxies held in the agent's flow table (until their answer and their close).",
            )?,
            kernel_flows_tracked: reg::gauge(
                &r,
                "egress_kernel_flows_tracked",
                "Active opens the kernel programs hold state for (the fill of the kernel's socket table, `--max-flows`).",
            )?,
            adopted_sockets: reg::counter_vec(
                &r,
                "egress_adopted_sockets_total",
                "TCP sockets open before the agent started and adopted at start, by kind: `egress` (active opens), `accepted` (a hop's connections on a capture port); `owner_unknown` counts those of either whose cgroup could not be read.",
                &["kind"],
            )?,
            kernel_flows_counted: reg::counter_vec(
                &r,
                "egress_kernel_flows_counted_total",
                "Clean connects and closes the kernel counted instead of sending an event each (they reach the metrics and the counted rows).",
                &["phase"],
            )?,
            kernel_aggregate_full: reg::counter(
                &r,
                "egress_kernel_aggregate_full_total",
                "Clean flows sent as events because the kernel's count table was full (not a loss).",
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
                "Requests through the proxy chain that failed, by the hop that broke (`internet` for the origin side, `direct` for a bypass), and clients' failed lookups of a hop's name (dns_failed). What requests experienced, policy denials and one client's own failures included: not a hop-health signal (see egress_hop_connects_total).",
                &["hop", "reason"],
            )?,
            hop_vantage_failures: reg::counter_vec(
                &r,
                "egress_hop_vantage_failures_total",
                "Requests that failed from a hop on, as the hop's own agent judged them from a client connection it accepted whose client end it did not see (the client's node counts the same request in egress_hop_failures_total: never sum the two).",
                &["hop", "reason"],
            )?,
            hop_accepted: reg::counter_vec(
                &r,
                "egress_hop_accepted_total",
                "Client connections a hop on this machine accepted on a capture port, by the verdict of the answer it sent (hop vantage). Not egress of this node's workloads: not in egress_connections_total.",
                &["hop", "verdict", "reason"],
            )?,
            hop_connects: reg::counter_vec(
                &r,
                "egress_hop_connects_total",
                "Connect outcomes of flows to a hop, by who connected: `from` the hop whose process made it (its upstream leg), `probe` (the agent's prober) or `client`. Hop-side evidence is from!=\"client\".",
                &["hop", "from", "result", "reason"],
            )?,
            hop_request_failures: reg::counter_vec(
                &r,
                "egress_hop_request_failures_total",
                "Client requests through the chain that failed, by the hop that broke, the reason and the client (namespace, workload).",
                &["hop", "reason", "namespace", "workload"],
            )?,
            hop_lookup_failures: reg::counter_vec(
                &r,
                "egress_hop_lookup_failures_total",
                "Clients' failed DNS lookups of a hop's name (NXDOMAIN, SERVFAIL, REFUSED, timeout), by hop and client (namespace, workload).",
                &["hop", "namespace", "workload"],
            )?,
            policy_denied: reg::counter_vec(
                &r,
                "egress_policy_denied_total",
                "Connect attempts of pods that failed and that the NetworkPolicies selecting the pod do not allow (reason policy_denied), by the pod's namespace and workload.",
                &["namespace", "workload"],
            )?,
            dns: DnsMetrics::new(&r)?,
            registry: r,
            kernel: Mutex::new(None),
            run_skips: Mutex::new(None),
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
        let flow = event_kind_name(EVENT_FLOW);
        for stage in ["kernel_flow_table", "kernel_flow_evicted", "flow_table"] {
            self.events_lost.with_label_values(&[stage, flow]);
        }
        self.events_lost.with_label_values(&["dns_budget", "dns"]);
        for reason in ["short", "unknown_kind", "bad_size", "bad_phase"] {
            self.decode_errors.with_label_values(&[reason]);
        }
        for phase in ["connect", "close"] {
            self.kernel_flows_counted.with_label_values(&[phase]);
        }
        for v in [Verdict::Ok, Verdict::Failed, Verdict::Degraded] {
            self.connect_duration.touch(&[v.as_str()]);
        }
    }

    /// Read kernel counters from `map` at every scrape from now on;
    /// `capacity`: entries of the kernel's socket table (`--max-flows`).
    pub fn set_kernel_stats(&self, map: PerCpuArray<MapData, u64>, capacity: u32) {
        if let Ok(mut k) = self.kernel.lock() {
            *k = Some(KernelStats {
                map,
                last: vec![0; STAT_SLOTS as usize],
                capacity: u64::from(capacity),
                evicted: 0,
            });
        }
    }

    /// Read the programs' skipped runs at every scrape from now on.
    pub fn set_run_skips(&self, skips: RunSkips) {
        for program in skips.names() {
            self.program_runs_skipped.with_label_values(&[program]);
        }
        if let Ok(mut s) = self.run_skips.lock() {
            *s = Some(skips);
        }
    }

    /// Sum the per-CPU slots and move the exported counters forward.
    pub fn refresh_kernel(&self) {
        if let Ok(mut guard) = self.run_skips.lock()
            && let Some(skips) = guard.as_mut()
        {
            for (program, n) in skips.take() {
                self.program_runs_skipped.with_label_values(&[program]).inc_by(n);
            }
        }
        let Ok(mut guard) = self.kernel.lock() else { return };
        let Some(k) = guard.as_mut() else { return };
        let mut totals = vec![0u64; STAT_SLOTS as usize];
        for slot in 0..STAT_SLOTS {
            let Ok(values) = k.map.get(&slot, 0) else { continue };
            let total: u64 = values.iter().sum();
            totals[slot as usize] = total;
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
                    .with_label_values(&["kernel_flow_table", event_kind_name(EVENT_FLOW)])
                    .inc_by(delta),
                STAT_DNS_RATE_LIMITED => {
                    self.events_lost.with_label_values(&["dns_budget", "dns"]).inc_by(delta)
                }
                STAT_AGG_CONNECTS => {
                    self.kernel_flows_counted.with_label_values(&["connect"]).inc_by(delta)
                }
                STAT_AGG_CLOSES => {
                    self.kernel_flows_counted.with_label_values(&["close"]).inc_by(delta)
                }
                STAT_AGG_FULL => self.kernel_aggregate_full.inc_by(delta),
                STAT_READ_ERRORS => self.kernel_read_errors.inc_by(delta),
                STAT_NESTED_RECOVERED => self.kernel_nested_recovered.inc_by(delta),
                STAT_DESTROY_RECOVERED => self.kernel_destroy_recovered.inc_by(delta),
                STAT_RETRANSMITS => self.retransmits.inc_by(delta),
                _ => {}
            }
        }
        let (tracked, evicted) = socket_table_books(
            totals[STAT_FLOW_STARTS as usize],
            totals[STAT_FLOW_ENDS as usize],
            totals[STAT_FLOW_EVICTED as usize],
            k.capacity,
            k.evicted,
        );
        self.events_lost
            .with_label_values(&["kernel_flow_evicted", event_kind_name(EVENT_FLOW)])
            .inc_by(evicted - k.evicted);
        k.evicted = evicted;
        self.kernel_flows_tracked.set(i64::try_from(tracked).unwrap_or(i64::MAX));
    }

    /// Clean flows the kernel counted under one owner and destination.
    pub fn observe_aggregate(&self, a: &AggregateRecord, v: &AggValue) {
        let namespace = a.namespace.as_deref().unwrap_or("");
        // The same bounded owner as every other series: a transient unit's
        // raw name would make new series for each one that comes and goes.
        let unit = a.unit.as_deref().filter(|_| a.workload.is_none()).map(|u| self.units.label(u));
        let workload = owner_label(a.workload.as_deref(), unit.as_deref(), a.pod.as_deref());
        let class = a.dst_class.map_or("", |c| c.as_str());
        let hop = a.hop.as_deref().unwrap_or("");
        let reason = a.reason.map_or("", |r| r.as_str());
        let labels = [a.verdict.as_str(), reason, namespace, workload, class, hop];
        if v.connects > 0 {
            self.connections.with_label_values(&labels).inc_by(v.connects);
            self.connect_duration.add(
                &[a.verdict.as_str()],
                &v.latency_buckets,
                v.latency_sum_ns as f64 / 1e9,
            );
        }
        if v.closes > 0 {
            self.closes.with_label_values(&labels).inc_by(v.closes);
        }
    }

    pub fn observe(&self, r: &FlowRecord) {
        let reason = r.reason.map_or("", |x| x.as_str());
        if r.vantage.as_deref() == Some(crate::pipeline::flow_table::HOP_VANTAGE) {
            if r.phase == Phase::Connect
                && let Some(hop) = &r.hop
            {
                self.hop_accepted.with_label_values(&[hop, r.verdict.as_str(), reason]).inc();
            }
            return;
        }
        let namespace = r.namespace.as_deref().unwrap_or("");
        let unit = r.unit.as_deref().filter(|_| r.workload.is_none()).map(|u| self.units.label(u));
        let workload = owner_label(r.workload.as_deref(), unit.as_deref(), r.pod.as_deref());
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
                if r.reason == Some(Reason::PolicyDenied) {
                    self.policy_denied.with_label_values(&[namespace, workload]).inc();
                }
                if !hop.is_empty() && hop != DIRECT {
                    let from = connect_source(r);
                    self.hop_connects
                        .with_label_values(&[hop, from, r.verdict.as_str(), reason])
                        .inc();
                }
                if !r.untimed {
                    self.connect_duration.observe(&[r.verdict.as_str()], r.latency_ms / 1000.0);
                }
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
            let reason = c.reason.map_or("", |r| r.as_str());
            if c.vantage.is_some() {
                // The hop's own view of a client it did not see: no client
                // owner, and never added to the client-vantage series.
                self.hop_vantage_failures.with_label_values(&[hop.as_str(), reason]).inc();
                return;
            }
            self.hop_failures.with_label_values(&[hop.as_str(), reason]).inc();
            let unit =
                c.unit.as_deref().filter(|_| c.workload.is_none()).map(|u| self.units.label(u));
            let workload = owner_label(c.workload.as_deref(), unit.as_deref(), c.pod.as_deref());
            self.hop_request_failures
                .with_label_values(&[
                    hop.as_str(),
                    c.reason.map_or("other", |r| r.as_str()),
                    c.namespace.as_deref().unwrap_or(""),
                    workload,
                ])
                .inc();
        }
    }

    /// A DNS lookup. A client's failed lookup of a hop's name is a request
    /// that never reached the chain: that hop's failure. A hop's own failed
    /// lookup shows in the chain record of the request it broke instead.
    pub fn observe_dns(&self, d: &DnsRecord) {
        let hop = d.hop.as_deref().unwrap_or("");
        self.dns.responses.with_label_values(&[&*d.rcode, hop]).inc();
        if d.rcode != DNS_TIMEOUT && d.verdict != Verdict::Unknown {
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
            let unit =
                d.unit.as_deref().filter(|_| d.workload.is_none()).map(|u| self.units.label(u));
            let workload = owner_label(d.workload.as_deref(), unit.as_deref(), d.pod.as_deref());
            self.hop_lookup_failures
                .with_label_values(&[h.as_str(), d.namespace.as_deref().unwrap_or(""), workload])
                .inc();
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
#[path = "metrics_tests.rs"]
mod tests;
