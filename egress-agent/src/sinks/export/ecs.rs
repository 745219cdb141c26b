//! The Elastic Common Schema mapping: one record, as its native JSON object
//! (the `--log-format json` line), becomes one ECS document.
//!
//! The mapping is the tables below: [`COMMON`] for the fields every record
//! kind shares, then one table per kind ([`FLOW`], [`CHAIN`], [`DNS`],
//! [`AGGREGATE`]). A field in no table goes to `egress.<name>` as it is, so a
//! field added to a record is exported at once, and mapping it onto an ECS
//! field is one line here. A record kind this module does not know (a new
//! [`Record`](crate::records::Record) variant) gets the common table and the
//! `egress.*` default: it is exported, never dropped, never mis-typed.
//!
//! Besides the ECS fields, every document carries Cloud Logging's `severity`
//! and `time` (GKE's agent maps them to the entry's severity and timestamp)
//! and a one-line `message` (Kibana's Discover column, Cloud Logging's
//! summary line). ECS field names and types: ECS 9.4.0 (`ecs_flat.yml`),
//! checked by `tests/tests/export_ecs.rs` against the vendored definitions.
use std::net::{IpAddr, SocketAddr};

use serde_json::{Map, Value, json};

/// The ECS release the documents follow (`ecs.version`).
pub const ECS_VERSION: &str = "9.4.0";

/// Where one native field goes.
#[derive(Debug, Clone, Copy)]
pub enum To {
    /// As it is, at this dotted path.
    At(&'static str),
    /// As it is, unless it is 0 (an errno of 0 says nothing).
    NonZero(&'static str),
    /// `ip:port` → `<p>.address`, `<p>.ip`, `<p>.port`.
    Endpoint(&'static str),
    /// `ip:port` after NAT → `<p>.nat.ip`, `<p>.nat.port`.
    Nat(&'static str),
    /// Milliseconds → nanoseconds (ECS durations are `long` ns).
    Nanos(&'static str),
    /// A CONNECT target `host:port` → `destination.domain` (or `.ip`),
    /// `.address`, `.port`; and `egress.target` as it is.
    Target,
    /// `Kind/name` → `orchestrator.resource.parent.type`; and `egress.workload`.
    Workload,
    /// Not a field of its own (the frame carries it: `record`, `time`).
    Skip,
}

use To::{At, Endpoint, Nanos, Nat, NonZero, Skip, Target, Workload};

/// Every record kind.
pub const COMMON: &[(&str, To)] = &[
    ("record", Skip),
    ("time", Skip),
    ("pid", At("process.pid")),
    ("tid", At("process.thread.id")),
    ("comm", At("process.name")),
    ("container_id", At("container.id")),
    ("container", At("container.name")),
    ("namespace", At("orchestrator.namespace")),
    ("pod", At("orchestrator.resource.name")),
    ("pod_uid", At("orchestrator.resource.id")),
    ("workload", Workload),
    ("src", Endpoint("source")),
    ("dst", Endpoint("destination")),
    ("dst_actual", Nat("destination")),
    ("snat", Nat("source")),
    ("target", Target),
    ("latency_ms", Nanos("event.duration")),
    ("errno", NonZero("egress.errno")),
    ("sni", At("tls.client.server_name")),
];

/// `"record":"flow"` (on top of [`COMMON`]).
pub const FLOW: &[(&str, To)] = &[];

/// `"record":"chain"`: `legs` stay whole in `egress.legs`.
pub const CHAIN: &[(&str, To)] = &[];

/// `"record":"dns"`: the asker is the source, the server the destination.
pub const DNS: &[(&str, To)] = &[
    ("name", At("dns.question.name")),
    ("qtype", At("dns.question.type")),
    ("rcode", At("dns.response_code")),
    ("client", Endpoint("source")),
    ("server", Endpoint("destination")),
    ("proto", At("network.transport")),
];

/// `"record":"aggregate"`: counted rows of clean flows.
pub const AGGREGATE: &[(&str, To)] = &[("start", At("event.start")), ("end", At("event.end"))];

/// Who made the documents: the node, the agent's version.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    pub hostname: String,
    pub version: String,
}

fn table(kind: &str) -> &'static [(&'static str, To)] {
    match kind {
        "flow" => FLOW,
        "chain" => CHAIN,
        "dns" => DNS,
        "aggregate" => AGGREGATE,
        _ => &[],
    }
}

fn rule(kind: &str, field: &str) -> Option<To> {
    let find = |t: &[(&str, To)]| t.iter().find(|(k, _)| *k == field).map(|(_, to)| *to);
    find(table(kind)).or_else(|| find(COMMON))
}

/// Set `path` (dotted) in `doc`, creating the objects on the way. A path
/// already taken by a non-object is left as it is.
pub fn put(doc: &mut Map<String, Value>, path: &str, v: Value) {
    let mut parts = path.split('.').peekable();
    let mut at = doc;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            at.insert(p.to_string(), v);
            return;
        }
        let next = at.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(m) = next else { return };
        at = m;
    }
}

/// Nulls and empty strings carry nothing: dropped, inside arrays and objects too.
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Object(m) => {
            Some(Value::Object(m.into_iter().filter_map(|(k, v)| Some((k, clean(v)?))).collect()))
        }
        Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(clean).collect())),
        v => Some(v),
    }
}

fn endpoint(doc: &mut Map<String, Value>, prefix: &str, v: &Value, nat: bool) {
    let Some(a) = v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) else {
        put(doc, &format!("{prefix}.address"), v.clone());
        return;
    };
    let p = if nat { format!("{prefix}.nat") } else { prefix.to_string() };
    if !nat {
        put(doc, &format!("{p}.address"), json!(a.ip().to_string()));
    }
    put(doc, &format!("{p}.ip"), json!(a.ip().to_string()));
    put(doc, &format!("{p}.port"), json!(a.port()));
}

/// `host:port`, `[v6]:port` or `host` → (host, port).
fn split_target(t: &str) -> (&str, Option<u16>) {
    match t.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() && !h.ends_with(':') => {
            (h.trim_start_matches('[').trim_end_matches(']'), p.parse().ok())
        }
        _ => (t, None),
    }
}

fn target(doc: &mut Map<String, Value>, v: &Value) {
    put(doc, "egress.target", v.clone());
    let Some(t) = v.as_str() else { return };
    let (host, port) = split_target(t);
    put(doc, "destination.address", json!(host));
    if host.parse::<IpAddr>().is_ok() {
        put(doc, "destination.ip", json!(host));
    } else {
        put(doc, "destination.domain", json!(host));
    }
    if let Some(p) = port {
        put(doc, "destination.port", json!(p));
    }
}

fn apply(doc: &mut Map<String, Value>, kind: &str, key: &str, v: Value) {
    match rule(kind, key) {
        Some(Skip) => {}
        Some(At(path)) => put(doc, path, v),
        Some(NonZero(path)) => {
            if v.as_f64() != Some(0.0) {
                put(doc, path, v);
            }
        }
        Some(Endpoint(p)) => endpoint(doc, p, &v, false),
        Some(Nat(p)) => endpoint(doc, p, &v, true),
        Some(Nanos(path)) => {
            if let Some(ms) = v.as_f64() {
                put(doc, path, json!((ms * 1e6).round() as i64));
            }
        }
        Some(Target) => target(doc, &v),
        Some(Workload) => {
            if let Some((kind, _)) = v.as_str().and_then(|w| w.split_once('/')) {
                put(doc, "orchestrator.resource.parent.type", json!(kind));
            }
            put(doc, "egress.workload", v);
        }
        None => put(doc, &format!("egress.{key}"), v),
    }
}

fn s<'a>(n: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    n.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Cloud Logging severity of a verdict (and its ECS `log.level`).
fn severity(verdict: Option<&str>) -> (&'static str, &'static str) {
    match verdict {
        Some("failed") => ("ERROR", "error"),
        Some("degraded" | "unknown") => ("WARNING", "warning"),
        _ => ("INFO", "info"),
    }
}

fn outcome(verdict: Option<&str>) -> &'static str {
    match verdict {
        Some("failed") => "failure",
        Some("ok" | "degraded") => "success",
        _ => "unknown",
    }
}

/// ECS `event.type` (the values ECS expects with category `network`).
fn event_types(kind: &str, n: &Map<String, Value>) -> Vec<&'static str> {
    if kind == "dns" {
        return vec!["protocol"];
    }
    let mut t = vec!["connection"];
    match (s(n, "verdict"), s(n, "reason"), s(n, "phase")) {
        (_, Some("proxy_denied" | "policy_denied"), _) => t.push("denied"),
        (_, _, Some("close")) => t.push("end"),
        (Some("ok" | "degraded"), _, _) if kind == "flow" => t.push("start"),
        (Some("ok" | "degraded"), _, _) if kind == "chain" => t.push("allowed"),
        _ if kind == "aggregate" => t.push("info"),
        _ => {}
    }
    t
}

/// Who, for people: `ns/Kind/name`, `ns/pod`, the unit, or `comm[pid]`.
fn who(n: &Map<String, Value>) -> String {
    let ns = s(n, "namespace");
    match (ns, s(n, "workload"), s(n, "pod"), s(n, "unit"), s(n, "comm")) {
        (Some(ns), Some(w), _, _, _) => format!("{ns}/{w}"),
        (Some(ns), None, Some(p), _, _) => format!("{ns}/{p}"),
        (_, _, _, Some(u), _) => u.to_string(),
        (_, _, _, _, Some(c)) => format!("{c}[{}]", n.get("pid").unwrap_or(&Value::Null)),
        _ => "-".to_string(),
    }
}

/// The one-line summary (`message`).
fn message(kind: &str, n: &Map<String, Value>) -> String {
    let verdict = s(n, "verdict").unwrap_or("unknown");
    let reason = s(n, "reason").map(|r| format!(": {r}")).unwrap_or_default();
    let status = n.get("proxy_status").and_then(Value::as_u64).map(|c| format!(" ({c})"));
    let status = status.unwrap_or_default();
    match kind {
        "chain" => {
            let at = s(n, "failed_hop").map(|h| format!(" at {h}")).unwrap_or_default();
            let to = s(n, "target").map(str::to_string).or_else(|| {
                let leg = n.get("legs")?.as_array()?.first()?;
                leg.get("dst")?.as_str().map(str::to_string)
            });
            format!("{verdict}{at}{reason}{status}: {} -> {}", who(n), to.as_deref().unwrap_or("?"))
        }
        "dns" => format!(
            "{verdict}{reason}: {} {} ({}) asked by {}",
            s(n, "rcode").unwrap_or("?"),
            s(n, "name").unwrap_or("?"),
            s(n, "qtype").unwrap_or("?"),
            who(n)
        ),
        "aggregate" => format!(
            "{} ok connections: {} -> {} via {}",
            n.get("count").and_then(Value::as_u64).unwrap_or(0),
            who(n),
            s(n, "dst_class").unwrap_or("?"),
            s(n, "hop").unwrap_or("-")
        ),
        _ => {
            let to = s(n, "target").or_else(|| s(n, "dst")).unwrap_or("?");
            let hop = s(n, "hop").map(|h| format!(" (hop {h})")).unwrap_or_default();
            format!("{verdict}{reason}{status}: {} -> {to}{hop}", who(n))
        }
    }
}

/// The ECS document of one native record object.
pub fn document(native: Map<String, Value>, observer: &Observer) -> Map<String, Value> {
    let kind = s(&native, "record").unwrap_or("unknown").to_string();
    let mut doc = Map::new();
    let time = s(&native, "time")
        .map(str::to_string)
        .unwrap_or_else(|| crate::records::rfc3339(std::time::SystemTime::now()));
    let verdict = s(&native, "verdict").map(str::to_string);
    let (sev, level) = severity(verdict.as_deref());
    put(&mut doc, "@timestamp", json!(time));
    put(&mut doc, "time", json!(time));
    put(&mut doc, "severity", json!(sev));
    put(&mut doc, "log.level", json!(level));
    put(&mut doc, "message", json!(message(&kind, &native)));
    put(&mut doc, "ecs.version", json!(ECS_VERSION));
    put(&mut doc, "event.kind", json!(if kind == "aggregate" { "metric" } else { "event" }));
    put(&mut doc, "event.category", json!(["network"]));
    put(&mut doc, "event.type", json!(event_types(&kind, &native)));
    put(&mut doc, "event.outcome", json!(outcome(verdict.as_deref())));
    let action = match (kind.as_str(), s(&native, "phase")) {
        ("flow", Some(p)) => p.to_string(),
        ("chain", _) => "proxy_request".to_string(),
        ("dns", _) => "dns_lookup".to_string(),
        (k, _) => k.to_string(),
    };
    put(&mut doc, "event.action", json!(action));
    put(&mut doc, "event.module", json!("egress"));
    put(&mut doc, "event.dataset", json!(format!("egress.{kind}")));
    put(&mut doc, "network.direction", json!("egress"));
    if kind == "dns" {
        put(&mut doc, "network.protocol", json!("dns"));
        let answered = s(&native, "rcode") != Some(crate::records::DNS_TIMEOUT);
        put(&mut doc, "dns.type", json!(if answered { "answer" } else { "query" }));
    } else {
        put(&mut doc, "network.transport", json!("tcp"));
    }
    if s(&native, "namespace").is_some() || s(&native, "pod").is_some() {
        put(&mut doc, "orchestrator.type", json!("kubernetes"));
    }
    if s(&native, "pod").is_some() {
        put(&mut doc, "orchestrator.resource.type", json!("pod"));
    }
    if !observer.hostname.is_empty() {
        put(&mut doc, "observer.hostname", json!(observer.hostname));
    }
    put(&mut doc, "observer.product", json!("egress-observer"));
    put(&mut doc, "observer.type", json!("sensor"));
    if !observer.version.is_empty() {
        put(&mut doc, "observer.version", json!(observer.version));
    }
    put(&mut doc, "egress.record", json!(kind));
    // A bypass (a chain of one direct leg) has no CONNECT target: where it went is the leg's.
    if kind == "chain"
        && s(&native, "target").is_none()
        && let Some(dst) = native.get("legs").and_then(|l| l.get(0)).and_then(|l| l.get("dst"))
        && !dst.is_null()
    {
        endpoint(&mut doc, "destination", dst, false);
    }
    for (k, v) in native {
        if let Some(v) = clean(v) {
            apply(&mut doc, &kind, &k, v);
        }
    }
    let ip = |side: &str| doc.get(side)?.get("ip")?.as_str().map(|ip| ip.contains(':'));
    if let Some(v6) = ip("destination").or_else(|| ip("source")) {
        put(&mut doc, "network.type", json!(if v6 { "ipv6" } else { "ipv4" }));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ChainRecord, DnsRecord, FlowRecord, LegSummary, Reason, Record, Verdict};

    fn doc(r: &Record) -> Value {
        let Ok(Value::Object(native)) = serde_json::to_value(r) else { panic!("object") };
        let observer = Observer { hostname: "node-a".into(), version: "0.1.0".into() };
        Value::Object(document(native, &observer))
    }

    #[test]
    fn a_failed_chain_is_one_ecs_document() {
        let c = ChainRecord {
            chain_id: "1a-7".into(),
            time: "2026-11-21T09:12:03.456Z".into(),
            target: Some("login.microsoftonline.com:443".into()),
            namespace: Some("payments".into()),
            pod: Some("api-7d9-x2".into()),
            workload: Some("Deployment/api".into()),
            comm: "curl".into(),
            pid: 4242,
            legs: vec![LegSummary {
                leg: "client->gke-squid".into(),
                hop: "gke-squid".into(),
                dst: Some("10.96.0.10:3128".parse().expect("addr")),
                proxy_status: Some(403),
                verdict: Verdict::Failed,
                ..LegSummary::default()
            }],
            verdict: Verdict::Failed,
            failed_hop: Some("gce-proxy".into()),
            reason: Some(Reason::ProxyDenied),
            proxy_status: Some(403),
            src: Some("10.0.4.7:51522".parse().expect("addr")),
            synthetic: false,
            ..ChainRecord::default()
        };
        let d = doc(&Record::Chain(c));
        let at = |p: &str| p.split('.').fold(&d, |v, k| &v[k]).clone();
        assert_eq!(at("@timestamp"), "2026-11-21T09:12:03.456Z");
        assert_eq!(
            (at("time"), at("severity")),
            (json!("2026-11-21T09:12:03.456Z"), json!("ERROR"))
        );
        assert_eq!(at("ecs.version"), ECS_VERSION);
        assert_eq!(
            (at("event.kind"), at("event.outcome"), at("event.type")),
            (json!("event"), json!("failure"), json!(["connection", "denied"]))
        );
        assert_eq!(at("destination.domain"), "login.microsoftonline.com");
        assert_eq!((at("destination.port"), at("source.ip")), (json!(443), json!("10.0.4.7")));
        assert_eq!((at("process.pid"), at("process.name")), (json!(4242), json!("curl")));
        assert_eq!(at("orchestrator.namespace"), "payments");
        assert_eq!(at("orchestrator.resource.parent.type"), "Deployment");
        assert_eq!(
            (at("orchestrator.resource.name"), at("orchestrator.resource.type")),
            (json!("api-7d9-x2"), json!("pod"))
        );
        assert_eq!(
            (at("egress.failed_hop"), at("egress.reason")),
            (json!("gce-proxy"), json!("proxy_denied"))
        );
        assert_eq!((at("egress.proxy_status"), at("egress.chain_id")), (json!(403), json!("1a-7")));
        assert_eq!(at("egress.workload"), "Deployment/api");
        assert_eq!(at("egress.legs")[0]["hop"], "gke-squid");
        assert!(at("egress.legs")[0].get("snat").is_none(), "nulls are dropped");
        assert_eq!(at("observer.hostname"), "node-a");
        assert_eq!(
            at("message"),
            "failed at gce-proxy: proxy_denied (403): payments/Deployment/api -> login.microsoftonline.com:443"
        );
        assert!(d.get("egress").and_then(|e| e.get("synthetic")).is_none());
    }

    #[test]
    fn a_bypass_goes_where_its_leg_went() {
        let c = ChainRecord {
            legs: vec![LegSummary {
                leg: "direct".into(),
                dst: Some("203.0.113.9:443".parse().expect("addr")),
                ..LegSummary::default()
            }],
            verdict: Verdict::Failed,
            failed_hop: Some("direct".into()),
            reason: Some(Reason::Bypass),
            ..ChainRecord::default()
        };
        let d = doc(&Record::Chain(c));
        assert_eq!(d["destination"]["ip"], "203.0.113.9");
        assert_eq!(
            (d["destination"]["port"].as_u64(), d["network"]["type"].as_str()),
            (Some(443), Some("ipv4"))
        );
        assert_eq!(d["egress"]["reason"], "bypass");
    }

    #[test]
    fn flows_and_lookups_map_their_addresses() {
        let f = FlowRecord {
            time: "2026-11-21T09:12:03.456Z".into(),
            pid: 7,
            tid: 8,
            comm: "squid".into(),
            src: Some("[fd00::1]:40000".parse().expect("addr")),
            dst: Some("[fd00::2]:3128".parse().expect("addr")),
            dst_actual: Some("[fd00::3]:3128".parse().expect("addr")),
            snat: Some("[2001:db8::1]:61000".parse().expect("addr")),
            verdict: Verdict::Failed,
            reason: Some(Reason::Timeout),
            latency_ms: 3012.5,
            unit: Some("squid.service".into()),
            sni: Some("login.example.test".into()),
            ..FlowRecord::default()
        };
        let d = doc(&Record::Flow(f));
        assert_eq!(d["tls"]["client"]["server_name"], "login.example.test");
        assert_eq!(d["destination"]["ip"], "fd00::2");
        assert_eq!(d["destination"]["nat"], json!({"ip": "fd00::3", "port": 3128}));
        assert_eq!(d["source"]["nat"], json!({"ip": "2001:db8::1", "port": 61000}));
        assert_eq!(
            (d["event"]["duration"].as_i64(), d["network"]["type"].as_str()),
            (Some(3_012_500_000), Some("ipv6"))
        );
        assert_eq!(
            (d["event"]["action"].as_str(), d["process"]["thread"]["id"].as_u64()),
            (Some("connect"), Some(8))
        );
        assert!(d["egress"].get("errno").is_none(), "errno 0 says nothing");
        assert_eq!(d["egress"]["unit"], "squid.service");
        assert!(d.get("orchestrator").is_none());
        let l = DnsRecord {
            name: "proxy.corp.test".into(),
            qtype: "AAAA".into(),
            rcode: "timeout".into(),
            proto: "udp".into(),
            client: Some("10.0.4.7:5353".parse().expect("addr")),
            server: Some("10.96.0.10:53".parse().expect("addr")),
            verdict: Verdict::Failed,
            reason: Some(Reason::DnsFailed),
            hop: Some("gke-squid".into()),
            ..DnsRecord::default()
        };
        let d = doc(&Record::Dns(l));
        assert_eq!(
            d["dns"],
            json!({"question": {"name": "proxy.corp.test", "type": "AAAA"}, "response_code": "timeout", "type": "query"})
        );
        assert_eq!(
            (d["network"]["transport"].as_str(), d["destination"]["port"].as_u64()),
            (Some("udp"), Some(53))
        );
        assert_eq!(
            (d["event"]["type"].clone(), d["egress"]["hop"].clone()),
            (json!(["protocol"]), json!("gke-squid"))
        );
    }

    #[test]
    fn new_fields_and_new_kinds_land_in_egress() {
        let mut native = Map::new();
        native.insert("record".into(), json!("summary"));
        native.insert("verdict".into(), json!("ok"));
        native.insert("count".into(), json!(12));
        native.insert("vantage".into(), json!("client"));
        native.insert("namespace".into(), json!("payments"));
        native.insert("nothing".into(), Value::Null);
        let d = document(native, &Observer::default());
        assert_eq!(d["egress"]["record"], "summary");
        assert_eq!(
            (&d["egress"]["count"], &d["egress"]["vantage"]),
            (&json!(12), &json!("client"))
        );
        assert_eq!(d["orchestrator"]["namespace"], "payments");
        assert_eq!(d["event"]["dataset"], "egress.summary");
        assert!(d["egress"].get("nothing").is_none());
        assert!(d["observer"].get("hostname").is_none());
        // A counted row of clean flows is a metric event.
        let mut row = Map::new();
        row.insert("record".into(), json!("aggregate"));
        row.insert("verdict".into(), json!("ok"));
        row.insert("count".into(), json!(40));
        row.insert("start".into(), json!("2026-11-21T09:00:00.000Z"));
        let d = document(row, &Observer::default());
        assert_eq!(
            (&d["event"]["kind"], &d["event"]["start"]),
            (&json!("metric"), &json!("2026-11-21T09:00:00.000Z"))
        );
        assert_eq!((&d["severity"], &d["event"]["outcome"]), (&json!("INFO"), &json!("success")));
    }

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(split_target("a.test:443"), ("a.test", Some(443)));
        assert_eq!(split_target("[2001:db8::1]:443"), ("2001:db8::1", Some(443)));
        assert_eq!(split_target("a.test"), ("a.test", None));
        assert_eq!(split_target("2001:db8::1"), ("2001:db8::1", None));
    }
}
