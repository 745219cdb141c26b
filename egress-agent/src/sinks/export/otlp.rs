//! OTLP logs over HTTP (`--otlp-endpoint`): each exported document becomes
//! one OpenTelemetry log record (its ECS fields as dotted attributes, the
//! `message` as body, severity and timestamp set), sent as protobuf by the
//! `opentelemetry-otlp` exporter over hyper with rustls (ring; the system's
//! roots and `--otlp-ca`).
//!
//! Records wait in a bounded queue; one task sends them in batches (at
//! [`BATCH_MAX`] records or [`BATCH_EVERY`] after the first), the exporter
//! retrying a failed request with exponential backoff (200 ms doubling to
//! 5 s, jittered) within `--otlp-timeout`. A collector that is down or slow
//! fills the queue: records that do not fit, and batches whose retries run
//! out, are dropped and counted in `egress_export_dropped_total{sink="otlp"}`.
//! Nothing waits for the collector but this task.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, Key, KeyValue,
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    logs::{LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider},
};
use prometheus::IntCounter;
use serde_json::{Map, Value};
use tokio::{sync::mpsc, task::JoinHandle};

use super::ecs::Observer;
use crate::records::parse_rfc3339;

/// Records per request at most.
pub const BATCH_MAX: usize = 512;
/// A batch goes out this long after its first record at the latest.
pub const BATCH_EVERY: Duration = Duration::from_secs(1);
/// One request's own limit (the retries share `--otlp-timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `--otlp-*`, as plain data.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// The logs endpoint (`…/v1/logs`).
    pub endpoint: String,
    /// PEM file of CA certificates trusted besides the system's.
    pub ca: Option<PathBuf>,
    /// Time for one batch, retries included.
    pub timeout: Duration,
    /// Records waiting at most.
    pub queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {0}: not an http:// or https:// URL")]
    Endpoint(String),
    #[error("--otlp-ca {}", path.display())]
    Ca { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("--otlp-ca {}: {source}", path.display())]
    CaCert { path: PathBuf, source: rustls::Error },
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// `http://host:4318` → `http://host:4318/v1/logs`; a URL with a path keeps it.
pub fn logs_url(endpoint: &str) -> Result<String, OtlpError> {
    let bad = || OtlpError::Endpoint(endpoint.to_string());
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .filter(|r| !r.is_empty())
        .ok_or_else(bad)?;
    endpoint.parse::<http::Uri>().map_err(|_| bad())?;
    Ok(match rest.find('/') {
        None => format!("{endpoint}/v1/logs"),
        Some(i) if &rest[i..] == "/" => format!("{}v1/logs", endpoint),
        Some(_) => endpoint.to_string(),
    })
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// rustls with ring: the system's roots (as `rustls-native-certs` finds
/// them; `SSL_CERT_FILE` honoured) and the `--otlp-ca` certificates
/// ([`crate::client_tls`], as the prober's TLS probes).
fn connector(ca: Option<&Path>) -> Result<Https, OtlpError> {
    use crate::client_tls::{self, ClientTlsError as E};
    let tls = client_tls::roots(ca)
        .and_then(|(roots, _)| client_tls::client_config(roots))
        .map_err(|e| match e {
            E::Pem { path, source } => OtlpError::Ca { path, source },
            E::Cert { path, source } => OtlpError::CaCert { path, source },
            E::Tls(source) => OtlpError::Tls(source),
        })?;
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// What the router holds: records are made here and queued for the sender.
pub struct OtlpSink {
    tx: mpsc::Sender<SdkLogRecord>,
    logger: SdkLogger,
    /// Keeps the logger's provider (and so its resource) alive.
    _provider: SdkLoggerProvider,
    dropped: IntCounter,
}

/// Start the sender task (on the current tokio runtime).
pub fn start(
    opts: &OtlpOptions,
    observer: &Observer,
    sent: IntCounter,
    dropped: IntCounter,
) -> Result<(OtlpSink, JoinHandle<()>), OtlpError> {
    let url = logs_url(&opts.endpoint)?;
    let client = opentelemetry_http::hyper::HyperClient::new(
        connector(opts.ca.as_deref())?,
        REQUEST_TIMEOUT.min(opts.timeout),
        None,
    );
    let retry = opentelemetry_otlp::RetryPolicy::recommended()
        .with_max_retries(8)
        .with_initial_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_jitter(Duration::from_millis(200));
    let mut exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(opts.timeout)
        .with_http_client(client)
        .with_retry_policy(retry)
        .build()
        .map_err(OtlpError::Exporter)?;
    let mut resource = vec![KeyValue::new("service.version", observer.version.clone())];
    if !observer.hostname.is_empty() {
        resource.push(KeyValue::new("host.name", observer.hostname.clone()));
    }
    let resource =
        Resource::builder().with_service_name("egress-observer").with_attributes(resource).build();
    exporter.set_resource(&resource);
    let provider = SdkLoggerProvider::builder().with_resource(resource).build();
    let scope = InstrumentationScope::builder("egress-observer")
        .with_version(observer.version.clone())
        .build();
    let logger = provider.logger_with_scope(scope.clone());
    let (tx, rx) = mpsc::channel(opts.queue.max(1));
    let task = tokio::spawn(send(rx, exporter, scope, sent, dropped.clone()));
    Ok((OtlpSink { tx, logger, _provider: provider, dropped }, task))
}

impl OtlpSink {
    /// Queue one document; a full queue drops it, counted.
    pub fn offer(&self, doc: &Map<String, Value>) {
        if self.tx.try_send(record(&self.logger, doc)).is_err() {
            self.dropped.inc();
        }
    }
}

/// Send batches until the queue closes; a batch whose retries run out is
/// dropped, counted.
async fn send(
    mut rx: mpsc::Receiver<SdkLogRecord>,
    exporter: opentelemetry_otlp::LogExporter,
    scope: InstrumentationScope,
    sent: IntCounter,
    dropped: IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let by = tokio::time::Instant::now() + BATCH_EVERY;
        while batch.len() < BATCH_MAX {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                () = tokio::time::sleep_until(by) => break,
            }
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|r| (r, &scope)).collect();
        let n = batch.len() as u64;
        match exporter.export(LogBatch::new(&refs)).await {
            Ok(()) => {
                sent.inc_by(n);
                if std::mem::take(&mut failing) {
                    tracing::info!("OTLP export recovered");
                }
            }
            Err(e) => {
                dropped.inc_by(n);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "OTLP export failed ({e}); dropping records (egress_export_dropped_total{{sink=\"otlp\"}}) until it recovers"
                    );
                }
            }
        }
        batch.clear();
    }
}

fn severity(s: Option<&str>) -> (Severity, &'static str) {
    match s {
        Some("ERROR") => (Severity::Error, "ERROR"),
        Some("WARNING") => (Severity::Warn, "WARNING"),
        _ => (Severity::Info, "INFO"),
    }
}

/// The event name of a record kind (`egress.flow`, …).
fn event_name(kind: Option<&str>) -> &'static str {
    match kind {
        Some("flow") => "egress.flow",
        Some("chain") => "egress.chain",
        Some("dns") => "egress.dns",
        Some("aggregate") => "egress.aggregate",
        _ => "egress.record",
    }
}

/// A JSON value as an OTLP value (objects inside arrays become maps).
pub fn any(v: &Value) -> Option<AnyValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => AnyValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64()?),
        },
        Value::String(s) => AnyValue::String(s.clone().into()),
        Value::Array(a) => AnyValue::ListAny(Box::new(a.iter().filter_map(any).collect())),
        Value::Object(m) => AnyValue::Map(Box::new(
            m.iter().filter_map(|(k, v)| Some((Key::new(k.clone()), any(v)?))).collect(),
        )),
    })
}

/// Nested ECS objects → dotted attribute names (`event.outcome`, …).
pub fn flatten(prefix: &str, m: &Map<String, Value>, out: &mut HashMap<String, AnyValue>) {
    for (k, v) in m {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Object(inner) => flatten(&name, inner, out),
            v => {
                if let Some(a) = any(v) {
                    out.insert(name, a);
                }
            }
        }
    }
}

/// The ECS fields carried by the record's own OTLP fields, not as attributes.
const OWN_FIELDS: [&str; 4] = ["@timestamp", "time", "severity", "message"];

fn record(logger: &SdkLogger, doc: &Map<String, Value>) -> SdkLogRecord {
    let mut r = logger.create_log_record();
    let text = |k: &str| doc.get(k).and_then(Value::as_str);
    let (number, name) = severity(text("severity"));
    r.set_severity_number(number);
    r.set_severity_text(name);
    r.set_timestamp(text("@timestamp").and_then(parse_rfc3339).unwrap_or_else(SystemTime::now));
    r.set_observed_timestamp(SystemTime::now());
    r.set_event_name(event_name(doc.get("egress").and_then(|e| e.get("record")?.as_str())));
    if let Some(m) = text("message") {
        r.set_body(AnyValue::String(m.to_string().into()));
    }
    let mut attrs = HashMap::new();
    let rest: Map<String, Value> = doc
        .iter()
        .filter(|(k, _)| !OWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    flatten("", &rest, &mut attrs);
    let mut attrs: Vec<_> = attrs.into_iter().collect();
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    r.add_attributes(attrs);
    r
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn endpoint_gets_the_logs_path_unless_it_has_one() {
        assert_eq!(logs_url("http://c:4318").expect("url"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("https://c:4318/").expect("url"), "https://c:4318/v1/logs");
        assert_eq!(logs_url("http://c/otlp/v1/logs").expect("url"), "http://c/otlp/v1/logs");
        for bad in ["c:4318", "ftp://c", "http://", "http://a b"] {
            assert!(logs_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_become_dotted_attributes() {
        let doc = json!({
            "@timestamp": "2026-11-21T22:01:02.345Z", "time": "2026-11-21T22:01:02.345Z",
            "severity": "ERROR", "message": "failed at gce-proxy",
            "event": {"outcome": "failure", "duration": 12_000_000},
            "tls": {"client": {"server_name": "login.example.test"}},
            "egress": {"record": "chain", "proxy_status": 403, "synthetic": true,
                       "legs": [{"hop": "gke-squid", "latency_ms": 1.5}]},
        });
        let Value::Object(doc) = doc else { panic!() };
        let provider = SdkLoggerProvider::builder().build();
        let r = record(&provider.logger("t"), &doc);
        assert_eq!(
            (r.severity_number(), r.severity_text()),
            (Some(Severity::Error), Some("ERROR"))
        );
        assert_eq!(r.event_name(), Some("egress.chain"));
        assert_eq!(r.timestamp(), parse_rfc3339("2026-11-21T22:01:02.345Z"));
        let attrs: HashMap<String, AnyValue> =
            r.attributes_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(attrs.get("event.outcome"), Some(&AnyValue::String("failure".into())));
        assert_eq!(attrs.get("event.duration"), Some(&AnyValue::Int(12_000_000)));
        assert_eq!(attrs.get("egress.proxy_status"), Some(&AnyValue::Int(403)));
        assert_eq!(
            attrs.get("tls.client.server_name"),
            Some(&AnyValue::String("login.example.test".into()))
        );
        assert_eq!(attrs.get("egress.synthetic"), Some(&AnyValue::Boolean(true)));
        let Some(AnyValue::ListAny(legs)) = attrs.get("egress.legs") else { panic!("{attrs:?}") };
        let AnyValue::Map(leg) = &legs[0] else { panic!("{legs:?}") };
        assert_eq!(leg.get(&Key::new("latency_ms")), Some(&AnyValue::Double(1.5)));
        assert!(!attrs.contains_key("message") && !attrs.contains_key("@timestamp"));
    }
}
