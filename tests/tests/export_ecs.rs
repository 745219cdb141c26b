//! The exported ECS lines against the ECS field definitions (names, types,
//! allowed values; tests/fixtures/ecs_flat_9.4.0_subset.yml): every kind of
//! record the mapping writes (no root needed), and the lab's fault table run
//! with the agent as deployed (`--log-records audit --log-format ecs`): one
//! conforming line per failed request on stdout, none for healthy ones.
use std::{net::Ipv4Addr, time::Duration};

use egress_agent::{
    records::{
        ChainRecord, DnsRecord, DstClass, FlowRecord, LegSummary, Phase, Reason, Record, Verdict,
    },
    sinks::export::{
        ecs::{Observer, document},
        hold::{DNS_MERGE, LEG_HOLD},
    },
};
use egress_tests::{
    chain_lab::{ChainLabConfig, OriginName},
    ecs::Schema,
    faults::{self, Log},
    require_root,
};
use serde_json::{Value, json};

fn ecs(r: &Record) -> Value {
    let Ok(Value::Object(native)) = serde_json::to_value(r) else { panic!("object") };
    Value::Object(document(
        native,
        &Observer { hostname: "node-a".into(), version: "0.1.0".into() },
    ))
}

fn assert_conforms(schema: &Schema, line: &Value) {
    let p = schema.problems(line);
    assert!(p.is_empty(), "{line:#}\n{}", p.join("\n"));
}

#[test]
fn every_kind_of_record_maps_to_conforming_ecs() {
    let schema = Schema::load().expect("fixture");
    let addr = |s: &str| Some(s.parse().expect("addr"));
    let flow = FlowRecord {
        time: "2026-11-21T09:12:03.456Z".into(),
        phase: Phase::Close,
        pid: 4242,
        tid: 4243,
        comm: "java".into(),
        cgroup_id: 77,
        cgroup: Some("/kubepods/pod1/c1".into()),
        netns: 4026531840,
        pod_uid: Some("0b1c".into()),
        container_id: Some("c0ffee".into()),
        namespace: Some("payments".into()),
        pod: Some("api-1".into()),
        container: Some("app".into()),
        workload: Some("StatefulSet/api".into()),
        src: addr("10.0.4.7:51522"),
        dst: addr("10.96.0.10:3128"),
        dst_name: Some("proxy/squid:3128".into()),
        dst_class: Some(DstClass::Service),
        dst_actual: addr("10.0.9.3:3128"),
        snat: addr("10.128.0.5:40000"),
        verdict: Verdict::Failed,
        reason: Some(Reason::Reset),
        errno: 104,
        latency_ms: 1.25,
        retransmits: 3,
        syn_retransmits: 1,
        hop: Some("gke-squid".into()),
        leg: Some("client->gke-squid".into()),
        target: Some("[2001:db8::7]:443".into()),
        proxy_status: Some(200),
        proxy_error: Some("ERR_X".into()),
        proxy_via: Some("squid-1".into()),
        duration_ms: Some(5000.5),
        flow_id: "ab-1".into(),
        chain_id: Some("c-1".into()),
        synthetic: true,
        ..FlowRecord::default()
    };
    let chain = ChainRecord {
        chain_id: "c-1".into(),
        time: "2026-11-21T09:12:03.456Z".into(),
        target: Some("login.example.test:443".into()),
        pid: 4242,
        comm: "curl".into(),
        legs: vec![LegSummary {
            leg: "client->gke-squid".into(),
            dst: addr("10.96.0.10:3128"),
            ..LegSummary::default()
        }],
        verdict: Verdict::Degraded,
        failed_hop: Some("gce-proxy".into()),
        reason: Some(Reason::Retransmits),
        src: addr("10.0.4.7:51522"),
        ..ChainRecord::default()
    };
    let bypass = ChainRecord {
        legs: vec![LegSummary {
            leg: "direct".into(),
            dst: addr("203.0.113.9:443"),
            ..LegSummary::default()
        }],
        verdict: Verdict::Failed,
        reason: Some(Reason::Bypass),
        failed_hop: Some("direct".into()),
        ..ChainRecord::default()
    };
    let dns = DnsRecord {
        time: "2026-11-21T09:12:03.456Z".into(),
        name: "proxy.corp.test".into(),
        qtype: "A".into(),
        rcode: "SERVFAIL".into(),
        answers: 0,
        server: addr("10.96.0.10:53"),
        client: addr("10.0.4.7:5353"),
        proto: "tcp".into(),
        verdict: Verdict::Failed,
        reason: Some(Reason::DnsFailed),
        hop: Some("gke-squid".into()),
        asked_by: Some("gke-squid".into()),
        ..DnsRecord::default()
    };
    let ok = FlowRecord {
        verdict: Verdict::Ok,
        phase: Phase::Connect,
        dst: addr("10.0.0.1:80"),
        ..FlowRecord::default()
    };
    for r in [
        Record::Flow(flow),
        Record::Flow(ok),
        Record::Chain(chain),
        Record::Chain(bypass),
        Record::Dns(dns),
    ] {
        assert_conforms(&schema, &ecs(&r));
    }
    // Rows the router makes: merged lookups and aggregates; and a kind not known yet.
    let row = |pairs: Value| {
        let Value::Object(m) = pairs else { panic!() };
        Value::Object(document(m, &Observer::default()))
    };
    for r in [
        json!({"record": "dns", "verdict": "failed", "name": "a.test", "count": 3, "qtypes": ["A", "AAAA"]}),
        json!({"record": "aggregate", "verdict": "ok", "count": 40, "time": "2026-11-21T09:13:00.000Z",
               "start": "2026-11-21T09:12:00.000Z", "end": "2026-11-21T09:13:00.000Z", "interval_s": 60.0,
               "namespace": "payments", "workload": "Deployment/api", "dst_class": "public", "hop": "gke-squid"}),
        json!({"record": "newkind", "verdict": "unknown", "vantage": "client", "failed_hop": "x"}),
    ] {
        assert_conforms(&schema, &row(r));
    }
}

#[test]
fn the_fault_table_writes_one_ecs_line_per_failed_request() {
    require_root!();
    let schema = Schema::load().expect("fixture");
    // Not the lab's defaults, nor chain_faults.rs's.
    let cfg = ChainLabConfig {
        cluster_ip: Ipv4Addr::new(10, 96, 45, 5),
        proxy_port: 3131,
        app_ip: Ipv4Addr::new(10, 0, 51, 20),
        app_gw: Ipv4Addr::new(10, 0, 51, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 0, 52, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 0, 52, 1),
        healthy: OriginName::new("api.ecs-lab.test", Ipv4Addr::new(198, 19, 45, 10)),
        refused: OriginName::new("closed.ecs-lab.test", Ipv4Addr::new(198, 19, 45, 11)),
        blackhole: OriginName::new("void.ecs-lab.test", Ipv4Addr::new(198, 19, 45, 12)),
        denied_at_hop1: "nope1.ecs-lab.test".into(),
        denied_at_hop2: "nope2.ecs-lab.test".into(),
        ..ChainLabConfig::default()
    };
    // After the last row the agent runs on until a leg no chain claimed
    // would have been written on its own.
    let settle = LEG_HOLD + DNS_MERGE + Duration::from_secs(1);
    let run = faults::run_logging(cfg, true, Log::Ecs, settle).expect("fault table");
    faults::print(&run.rows);
    for r in &run.rows {
        assert!(r.ok, "{}: expected {}, agent said {}", r.fault, r.expected, r.got);
    }
    assert!(!run.lines.is_empty(), "no line on stdout");
    for l in &run.lines {
        assert_conforms(&schema, l);
    }
    let record = |l: &Value| l["egress"]["record"].as_str().unwrap_or("").to_string();
    let mut dns_rows = 0;
    for r in run.rows.iter().filter(|r| r.client_pid != 0) {
        let of_client = |l: &&Value| {
            l["process"]["pid"].as_u64() == Some(r.client_pid)
                || (record(l) == "dns"
                    && l["egress"]["cgroup"].as_str().is_some_and(|c| r.client_cgroup.ends_with(c)))
        };
        let by_pid: Vec<&Value> = run
            .lines
            .iter()
            .filter(|l| l["process"]["pid"].as_u64() == Some(r.client_pid))
            .collect();
        if r.expected == "ok" {
            assert!(
                by_pid.is_empty() && !r.lines.iter().any(|l| of_client(&l)),
                "{}: a healthy request wrote {by_pid:#?}",
                r.fault
            );
            continue;
        }
        let mine: Vec<&Value> = r.lines.iter().filter(of_client).collect();
        if mine.iter().any(|l| record(l) == "dns") {
            dns_rows += 1;
        } else {
            assert_eq!(
                by_pid.len(),
                1,
                "{}: lines of the client over the whole run {by_pid:#?}",
                r.fault
            );
        }
        assert_eq!(mine.len(), 1, "{}: one line per failed request, got {mine:#?}", r.fault);
        let l = mine[0];
        assert_eq!(
            l["event"]["outcome"],
            if r.expected.starts_with("degraded") { "success" } else { "failure" },
            "{}",
            r.fault
        );
        assert!(
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains(r.expected.split(": ").nth(1).unwrap_or("?"))),
            "{l:#}"
        );
    }
    // The client is one cgroup for every row: its failed lookups over the
    // whole run are one line per row that failed on DNS.
    let cgroup = run.rows.first().map(|r| r.client_cgroup.clone()).unwrap_or_default();
    let client_dns = run
        .lines
        .iter()
        .filter(|l| {
            record(l) == "dns"
                && l["egress"]["cgroup"].as_str().is_some_and(|c| cgroup.ends_with(c))
        })
        .count();
    assert_eq!(client_dns, dns_rows, "each failed lookup of the client is one line");
    // Legs are carried by their chain: none was written on its own.
    let legs: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| record(l) == "flow" && l["egress"]["leg"].is_string())
        .collect();
    assert!(legs.is_empty(), "legs written on their own: {legs:#?}");
    // Volume: bytes per line, by kind (README, "Export").
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for l in &run.lines {
        let e = by_kind.entry(record(l)).or_default();
        e.0 += 1;
        e.1 += l.to_string().len() + 1;
    }
    for (k, (n, bytes)) in by_kind {
        eprintln!("ECS lines {k}: {n}, {} bytes on average", bytes / n);
    }
}
