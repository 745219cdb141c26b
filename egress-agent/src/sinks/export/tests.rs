//! The export sink end to end: records in through the pipeline's handle,
//! lines out of the stdout writer; OTLP towards a collector that is not there.
use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::*;
use crate::records::{ChainRecord, DnsRecord, FlowRecord, LegSummary, Reason, Verdict};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn json(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf8");
        text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
    }
}

fn leg(id: &str, leg: &str, verdict: Verdict, status: Option<u16>) -> FlowRecord {
    FlowRecord {
        flow_id: id.into(),
        leg: Some(leg.into()),
        hop: leg.rsplit("->").next().map(str::to_string),
        verdict,
        reason: (verdict == Verdict::Failed).then_some(Reason::ProxyDenied),
        proxy_status: status,
        pid: 4242,
        ..FlowRecord::default()
    }
}

/// A 403 at hop 2: its upstream leg, the client leg, the chain — one line.
fn denied_at_hop2() -> Vec<Record> {
    let up = leg("u1", "gke-squid->gce-proxy", Verdict::Failed, Some(403));
    let client = leg("c1", "client->gke-squid", Verdict::Failed, Some(403));
    let chain = ChainRecord {
        chain_id: "c-1".into(),
        target: Some("nope.test:443".into()),
        legs: [&client, &up]
            .map(|f| LegSummary {
                leg: f.leg.clone().unwrap_or_default(),
                flow_id: f.flow_id.clone(),
                ..LegSummary::default()
            })
            .to_vec(),
        verdict: Verdict::Failed,
        failed_hop: Some("gce-proxy".into()),
        reason: Some(Reason::ProxyDenied),
        pid: 4242,
        ..ChainRecord::default()
    };
    vec![Record::Flow(up), Record::Flow(client), Record::Chain(chain)]
}

#[tokio::test]
async fn audit_in_ecs_writes_one_line_per_failed_request() {
    let registry = Registry::new();
    let out = Lines::default();
    let opts = ExportOptions {
        selection: Selection::Audit,
        format: Format::Ecs,
        stdout: true,
        ..ExportOptions::default()
    };
    let (mut h, x) = start(&opts, &registry, Box::new(out.clone())).expect("start");
    for r in denied_at_hop2() {
        h.offer(&r);
    }
    let ok = FlowRecord { verdict: Verdict::Ok, ..FlowRecord::default() };
    h.offer(&Record::Flow(ok));
    for q in ["A", "AAAA"] {
        h.offer(&Record::Dns(DnsRecord {
            name: "proxy.test".into(),
            qtype: q.into(),
            rcode: "NXDOMAIN".into(),
            verdict: Verdict::Failed,
            reason: Some(Reason::DnsFailed),
            ..DnsRecord::default()
        }));
    }
    h.flush();
    drop(h);
    x.finish(Duration::from_secs(5)).await;
    let lines = out.json();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["egress"]["record"].as_str()).collect();
    assert_eq!(kinds, ["chain", "dns"], "{lines:#?}");
    assert_eq!(lines[0]["egress"]["failed_hop"], "gce-proxy");
    assert_eq!(
        (lines[1]["egress"]["count"].as_u64(), lines[1]["severity"].as_str()),
        (Some(2), Some("ERROR"))
    );
    let text = registry.gather();
    let written = text
        .iter()
        .find(|f| f.name() == "egress_export_records_total")
        .map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value()).sum::<f64>());
    assert_eq!(written, Some(2.0));
}

#[tokio::test]
async fn all_in_json_is_every_record_as_it_writes_itself() {
    let registry = Registry::new();
    let out = Lines::default();
    let opts =
        ExportOptions { selection: Selection::All, stdout: true, ..ExportOptions::default() };
    let (mut h, x) = start(&opts, &registry, Box::new(out.clone())).expect("start");
    let records = denied_at_hop2();
    for r in &records {
        h.offer(r);
    }
    drop(h);
    x.finish(Duration::from_secs(5)).await;
    let got = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
    let want: String = records.iter().map(|r| format!("{}\n", r.json_line())).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_collector_that_is_not_there_costs_counted_drops_only() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let registry = Registry::new();
    let opts = ExportOptions {
        selection: Selection::Audit,
        format: Format::Ecs,
        stdout: false,
        otlp: Some(OtlpOptions {
            endpoint: format!("http://127.0.0.1:{port}"),
            ca: None,
            timeout: Duration::from_millis(600),
            queue: 4,
        }),
        ..ExportOptions::default()
    };
    let (mut h, x) = start(&opts, &registry, Box::new(std::io::sink())).expect("start");
    let failed = FlowRecord {
        verdict: Verdict::Failed,
        reason: Some(Reason::Refused),
        ..FlowRecord::default()
    };
    let t0 = Instant::now();
    for _ in 0..50 {
        h.offer(&Record::Flow(failed.clone()));
        h.flush();
    }
    assert!(t0.elapsed() < Duration::from_millis(200), "offering blocked");
    drop(h);
    x.finish(Duration::from_secs(10)).await;
    let count = |name: &str| {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| {
                f.get_metric()
                    .iter()
                    .find(|m| m.get_label().iter().any(|l| l.value() == "otlp"))
                    .map(|m| m.get_counter().get_value())
            })
            .unwrap_or(-1.0)
    };
    assert_eq!(
        (count("egress_export_dropped_total"), count("egress_export_records_total")),
        (50.0, 0.0)
    );
}
