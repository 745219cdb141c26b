//! The peer API end to end on loopback: a real TLS listener fed by the local
//! API's history, asked by the real client; a client without a certificate
//! of the agents' CA gets nothing.
use std::{sync::Arc, time::Duration};

use super::{tls::tests::*, *};
use crate::{
    api::server::{ApiOptions, start as start_api},
    api::wire::Status,
    assembly::{HOP_VANTAGE, fetch::PeerClient},
    records::{FlowRecord, Record},
};

fn a(s: &str) -> std::net::SocketAddr {
    s.parse().expect("addr")
}

fn metric(reg: &prometheus::Registry, result: &str) -> u64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == "egress_peer_requests_total")
        .flat_map(|f| f.get_metric().to_vec())
        .find(|m| m.get_label().iter().any(|l| l.value() == result))
        .map_or(0, |m| m.get_counter().get_value() as u64)
}

#[tokio::test]
async fn answers_a_link_to_an_agent_and_nobody_else() {
    let dir = std::env::temp_dir().join(format!("eo-peer-{}", std::process::id()));
    let reg = prometheus::Registry::new();
    let (stop, shutdown) = watch::channel(false);
    let mut api = start_api(
        ApiOptions {
            path: dir.join("api.sock"),
            history: 100,
            status: Status::for_tests(100),
            limits: crate::api::server::ApiLimits::default(),
        },
        &reg,
        shutdown.clone(),
    )
    .expect("api");
    let link = Link { peer: a("10.0.1.10:43512"), local: a("10.0.2.10:3128") };
    api.publish(Record::Flow(FlowRecord {
        flow_id: "in-1".into(),
        vantage: Some(HOP_VANTAGE.into()),
        src: Some(link.peer),
        dst: Some(link.local),
        dst_actual: Some(link.local),
        ..FlowRecord::default()
    }));
    api.publish(Record::Flow(FlowRecord { flow_id: "other".into(), ..FlowRecord::default() }));
    api.flush();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = start(
        listener,
        tls::server_config(&files()).expect("tls"),
        api.history(),
        "node-b".into(),
        &reg,
        shutdown,
    )
    .expect("start");
    let client = PeerClient::new(&files(), DEFAULT_SERVER_NAME, Duration::from_secs(5)).expect("c");
    // The history task takes the batch in its own time.
    let mut answer = None;
    for _ in 0..100 {
        let got = client.link(&addr, &link).await.expect("answer");
        if !got.records.is_empty() {
            answer = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = answer.expect("the record came");
    assert_eq!((answer.node.as_str(), answer.link, answer.truncated), ("node-b", link, false));
    assert!(
        matches!(answer.records.as_slice(), [Record::Flow(f)] if f.flow_id == "in-1"),
        "{:?}",
        answer.records
    );
    // Another CA's agent certificate: the handshake fails.
    let other =
        tls::PeerTlsFiles { cert: fixture("other.crt"), key: fixture("other.key"), ..files() };
    let stranger = PeerClient::new(&other, DEFAULT_SERVER_NAME, Duration::from_secs(5)).expect("c");
    assert!(stranger.link(&addr, &link).await.is_err(), "another CA's certificate got in");
    // No client certificate at all: the handshake fails too.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(fixture("ca.crt")).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from(DEFAULT_SERVER_NAME).expect("name");
    let hs = tokio_rustls::TlsConnector::from(Arc::new(anonymous)).connect(name, tcp).await;
    // TLS 1.3 reports the refused certificate on the first read.
    let refused = match hs {
        Err(_) => true,
        Ok(mut s) => {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let _ = s.write_all(b"GET /v1/link?peer=10.0.1.10:43512&local=10.0.2.10:3128 HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            !matches!(s.read_to_end(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was answered");
    for _ in 0..100 {
        if metric(&reg, "tls_handshake") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&reg, "tls_handshake"), 2);
    // A bad query is a clear 400, counted.
    let e = client
        .link(&addr, &Link { peer: a("10.0.1.10:1"), local: a("10.0.2.10:3128") })
        .await
        .expect("no record is still an answer");
    assert!(e.records.is_empty());
    assert!(metric(&reg, "ok") >= 2);
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(2), server).await.expect("stopped").expect("task");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn queries_are_strict() {
    assert!(Link::from_query("peer=10.0.1.10:1&local=10.0.2.10:3128&limit=100000").is_err());
    assert!(Link::from_query("peer=*&local=*").is_err());
}
