//! Tests of the metrics sink: names, bounded labels, per-vantage series.
use super::*;

#[test]
fn socket_table_books_show_a_fill_while_it_happens() {
    // 150k stuck connects into a table of 131,072: the fill is the
    // table, the overflow already evicted (not seen by the kernel yet).
    let (fill, ev) = socket_table_books(150_000, 0, 0, 131_072, 0);
    assert_eq!((fill, ev), (131_072, 150_000 - 131_072));
    // The stuck sockets close: the evicted ones are seen (more than the
    // floor, the LRU being per CPU), the others end. Never backwards.
    let (fill, ev2) = socket_table_books(150_000, 60_000, 89_990, 131_072, ev);
    assert_eq!((fill, ev2), (10, 89_990));
    let (fill, ev3) = socket_table_books(150_005, 60_005, 89_990, 131_072, ev2);
    assert_eq!((fill, ev3), (10, 89_990));
    // Seen evictions below an earlier floor do not count twice.
    let (_, ev) = socket_table_books(200_000, 0, 0, 100_000, 0);
    let (fill, ev) = socket_table_books(200_000, 90_000, 50_000, 100_000, ev);
    assert_eq!((fill, ev), (10_000, 100_000));
    // Adopted sockets end without a start: no underflow.
    assert_eq!(socket_table_books(3, 5, 0, 10, 0), (0, 0));
}

#[test]
fn buckets_separate_syn_plateaus() {
    // 0, 1, 2, 3 (linear) and 1, 3, 7, 15 s (exponential) retry plateaus
    // must land in distinct buckets (with a little scheduling slack).
    let buckets = connect_buckets();
    let bucket = |s: f64| buckets.iter().position(|&b| s <= b);
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

#[test]
fn counted_rows_of_transient_units_share_series() {
    let m = Metrics::new(None).expect("metrics");
    let v = AggValue { connects: 1, closes: 1, ..AggValue::default() };
    for i in 0..50 {
        let a = AggregateRecord {
            unit: Some(format!("run-r{i:032x}.scope")),
            ..AggregateRecord::default()
        };
        m.observe_aggregate(&a, &v);
    }
    let text = m.render();
    let series = text.lines().filter(|l| l.starts_with("egress_connections_total{")).count();
    assert_eq!(series, 1, "one series for all transient units:\n{text}");
}

#[test]
fn policy_denials_are_counted_by_namespace_and_workload_only() {
    let m = Metrics::new(None).expect("metrics");
    let denied = |pod: &str| FlowRecord {
        verdict: Verdict::Failed,
        reason: Some(Reason::PolicyDenied),
        namespace: Some("production".into()),
        pod: Some(pod.into()),
        workload: Some("Deployment/web".into()),
        policy: Some("production/default-deny-egress".into()),
        ..FlowRecord::default()
    };
    m.observe(&denied("web-1"));
    m.observe(&denied("web-2"));
    // A timeout the policies allow is not a denial.
    m.observe(&FlowRecord { reason: Some(Reason::Timeout), ..denied("web-1") });
    let text = m.render();
    let series: Vec<&str> =
        text.lines().filter(|l| l.starts_with("egress_policy_denied_total{")).collect();
    assert_eq!(
        series,
        [r#"egress_policy_denied_total{namespace="production",workload="Deployment/web"} 2"#],
        "{text}"
    );
    assert!(
        text.contains(r#"reason="policy_denied",result="failed",workload="Deployment/web"} 2"#),
        "{text}"
    );
}

#[test]
fn hop_evidence_keeps_who_apart() {
    let m = Metrics::new(None).expect("metrics");
    let flow = |leg: &str, hop: &str, reason, synthetic| FlowRecord {
        verdict: Verdict::Failed,
        reason: Some(reason),
        leg: Some(leg.into()),
        hop: Some(hop.into()),
        synthetic,
        ..FlowRecord::default()
    };
    m.observe(&flow("client->gke-squid", "gke-squid", Reason::Refused, false));
    m.observe(&flow("client->gke-squid", "gke-squid", Reason::Timeout, true));
    m.observe(&flow("gke-squid->gce-proxy", "gce-proxy", Reason::Refused, false));
    m.observe(&flow("gce-proxy->internet", "internet", Reason::Timeout, false));
    m.observe(&flow("direct", "direct", Reason::Bypass, false));
    // Owners: a bare pod, a pod without metadata, a host unit.
    let bare = FlowRecord {
        namespace: Some("team-a".into()),
        pod: Some("debug".into()),
        ..flow("direct", "direct", Reason::Bypass, false)
    };
    m.observe(&bare);
    let unknown = FlowRecord {
        pod_uid: Some("u".into()),
        workload: Some(crate::records::UNKNOWN_WORKLOAD.into()),
        ..flow("direct", "direct", Reason::Bypass, false)
    };
    m.observe(&unknown);
    let chain = |hop: &str, reason, workload: &str| ChainRecord {
        verdict: Verdict::Failed,
        failed_hop: Some(hop.into()),
        reason: Some(reason),
        namespace: Some("team-a".into()),
        workload: Some(workload.into()),
        ..ChainRecord::default()
    };
    m.observe_chain(&chain("gke-squid", Reason::ProxyDenied, "Deployment/a"));
    m.observe_chain(&chain("internet", Reason::Refused, "Deployment/b"));
    m.observe_chain(&ChainRecord { synthetic: true, ..chain("internet", Reason::Refused, "x") });
    m.observe_dns(&DnsRecord {
        name: "squid.test".into(),
        rcode: "SERVFAIL".into(),
        verdict: Verdict::Failed,
        reason: Some(Reason::DnsFailed),
        hop: Some("gke-squid".into()),
        namespace: Some("team-b".into()),
        pod: Some("p".into()),
        ..DnsRecord::default()
    });
    // A hop's own lookup is the request's (chain) failure, not a client's.
    m.observe_dns(&DnsRecord {
        name: "origin.test".into(),
        rcode: "NXDOMAIN".into(),
        verdict: Verdict::Failed,
        reason: Some(Reason::DnsFailed),
        hop: Some("gce-proxy".into()),
        asked_by: Some("gce-proxy".into()),
        ..DnsRecord::default()
    });
    let text = m.render();
    for needle in [
        r#"egress_hop_connects_total{from="client",hop="gke-squid",reason="refused",result="failed"} 1"#,
        r#"egress_hop_connects_total{from="probe",hop="gke-squid",reason="timeout",result="failed"} 1"#,
        r#"egress_hop_connects_total{from="gke-squid",hop="gce-proxy",reason="refused",result="failed"} 1"#,
        r#"egress_hop_connects_total{from="gce-proxy",hop="internet",reason="timeout",result="failed"} 1"#,
        r#"egress_connections_total{dst_class="",hop="direct",namespace="team-a",reason="bypass",result="failed",workload="Pod"} 1"#,
        r#"egress_connections_total{dst_class="",hop="direct",namespace="",reason="bypass",result="failed",workload="unknown"} 1"#,
        r#"egress_hop_request_failures_total{hop="gke-squid",namespace="team-a",reason="proxy_denied",workload="Deployment/a"} 1"#,
        r#"egress_hop_request_failures_total{hop="internet",namespace="team-a",reason="refused",workload="Deployment/b"} 1"#,
        r#"egress_hop_lookup_failures_total{hop="gke-squid",namespace="team-b",workload="Pod"} 1"#,
        r#"egress_hop_failures_total{hop="gke-squid",reason="dns_failed"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains(r#"egress_hop_connects_total{from="client",hop="direct""#));
    assert!(!text.contains(r#"workload="x""#), "probe chains are the prober's");
    assert!(!text.contains(r#"egress_hop_lookup_failures_total{hop="gce-proxy""#));
}
