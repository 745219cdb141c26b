//! The metrics server over real loopback sockets: routes, the caps and
//! timeouts (each refusal counted), TLS with client certificates and a
//! bearer token. The PEM fixtures are from deploy/tls/make-certs.sh.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsConnector;

use super::{auth::TokenFile, tls::tests::fixture, *};

struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
}

impl Running {
    async fn start(limits: Limits, tls: Option<tls::TlsFiles>, token: Option<&str>) -> Running {
        let metrics = Arc::new(Metrics::new(None).expect("metrics"));
        let tls = tls.map(|f| Tls::load(f).expect("tls"));
        let token = token.map(|t| {
            let p = std::env::temp_dir().join(format!(
                "eo-http-token-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::write(&p, t).expect("token");
            TokenFile::load(&p).expect("token file")
        });
        let server = HttpServer::new(limits, tls, token, metrics.clone()).expect("server");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(listener, server, rx));
        Running { addr, metrics, stop }
    }

    fn rejected(&self, reason: &str) -> u64 {
        let t = self.metrics.render();
        let needle = format!("egress_http_rejected_total{{reason=\"{reason}\"}} ");
        t.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {needle} in\n{t}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Send `raw`, read until the server closes; returns what it sent (empty if
/// it closed without an answer).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, raw: &str) -> String {
    if s.write_all(raw.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
}

fn status(resp: &str) -> u16 {
    resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn plain(addr: SocketAddr, raw: &str) -> String {
    exchange(TcpStream::connect(addr).await.expect("connect"), raw).await
}

fn fast() -> Limits {
    Limits {
        max_connections: 4,
        header_timeout: Duration::from_millis(300),
        max_header_bytes: 8192,
        connection_deadline: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn routes_and_request_caps() {
    let r = Running::start(fast(), None, None).await;
    let m = plain(r.addr, &get("/metrics", "")).await;
    assert_eq!(status(&m), 200, "{m}");
    assert!(m.contains("egress_build_info") && m.contains("egress_http_rejected_total"), "{m}");
    assert!(m.contains("text/plain; version=0.0.4"), "{m}");
    assert_eq!(status(&plain(r.addr, &get("/healthz", "")).await), 200);
    assert_eq!(status(&plain(r.addr, &get("/readyz", "")).await), 200);
    assert_eq!(status(&plain(r.addr, &get("/secrets", "")).await), 404);
    let post =
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    assert_eq!(status(&plain(r.addr, post).await), 413);
    assert_eq!(r.rejected("too_large"), 1);
    let delete = "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(status(&plain(r.addr, delete).await), 405);
    // A header block over the cap: 431, counted.
    let big = get("/metrics", &format!("X-Pad: {}\r\n", "a".repeat(9000)));
    assert_eq!(status(&plain(r.addr, &big).await), 431);
    assert_eq!(r.rejected("too_large"), 2);
    assert_eq!(status(&plain(r.addr, "NOT HTTP AT ALL\r\n\r\n").await), 400);
    assert_eq!(r.rejected("bad_request"), 1);
    assert_eq!(r.rejected("unauthenticated"), 0, "no policy: /metrics is open");
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout() {
    let r = Running::start(fast(), None, None).await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    let t = std::time::Instant::now();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // One more header line every 100 ms never completes the block.
    let mut buf = [0u8; 64];
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            break t.elapsed();
        }
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "still open after 5 s");
    };
    assert!(closed >= Duration::from_millis(300) && closed < Duration::from_secs(2), "{closed:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.rejected("header_timeout"), 1);
    // A connection that says nothing at all is cut too.
    let mut idle = TcpStream::connect(r.addr).await.expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.rejected("header_timeout"), 2);
    // Keep-alive: served requests, then idle: closed, not counted as a refusal.
    let mut ka = TcpStream::connect(r.addr).await.expect("connect");
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), ka.read_to_end(&mut got)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{got:?}");
    assert_eq!(r.rejected("header_timeout"), 2);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let limits = Limits { max_connections: 2, header_timeout: Duration::from_secs(2), ..fast() };
    let r = Running::start(limits, None, None).await;
    let hold1 = TcpStream::connect(r.addr).await.expect("1");
    let hold2 = TcpStream::connect(r.addr).await.expect("2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    let third = plain(r.addr, &get("/healthz", "")).await;
    assert_eq!(third, "", "the third connection is closed without an answer");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(r.rejected("connection_limit"), 1);
    assert!(r.metrics.render().contains("egress_http_connections 2"));
    drop((hold1, hold2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(&plain(r.addr, &get("/healthz", "")).await), 200, "slots freed");
}

#[tokio::test]
async fn a_connection_lives_no_longer_than_its_deadline() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        connection_deadline: Duration::from_millis(300),
        ..fast()
    };
    let r = Running::start(limits, None, None).await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.rejected("deadline"), 1);
}

fn client_config(cert: Option<(&str, &str)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.crt")).expect("ca") {
        roots.add(c.expect("pem")).expect("root");
    }
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match cert {
        None => b.with_no_client_auth(),
        Some((crt, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(fixture(crt))
                    .expect("crt")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("pem"),
                PrivateKeyDer::from_pem_file(fixture(key)).expect("key"),
            )
            .expect("client auth"),
    };
    Arc::new(cfg)
}

/// A TLS request; None if the handshake (or the connection) failed.
async fn tls_get(
    addr: SocketAddr,
    cert: Option<(&str, &str)>,
    path: &str,
    extra: &str,
) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("egress-agent.egress-observer.svc").ok()?;
    let s = TlsConnector::from(client_config(cert)).connect(name, tcp).await.ok()?;
    let resp = exchange(s, &get(path, extra)).await;
    (!resp.is_empty()).then_some(resp)
}

#[tokio::test]
async fn tls_client_certificates() {
    let r = Running::start(fast(), Some(tls::tests::files(true)), None).await;
    let anon = tls_get(r.addr, None, "/metrics", "").await.expect("handshake without a cert");
    assert_eq!(status(&anon), 401, "{anon}");
    assert!(!anon.contains("egress_build_info"));
    assert!(!anon.to_ascii_lowercase().contains("www-authenticate"), "no token configured");
    assert_eq!(r.rejected("unauthenticated"), 1);
    for probe in ["/healthz", "/readyz"] {
        let p = tls_get(r.addr, None, probe, "").await.expect("probe");
        assert_eq!(status(&p), 200, "{probe} stays open: {p}");
    }
    let ok = tls_get(r.addr, Some(("client.crt", "client.key")), "/metrics", "").await;
    let ok = ok.expect("handshake with the client cert");
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.contains("egress_build_info"));
    // A certificate from another CA fails the handshake itself.
    let other = tls_get(r.addr, Some(("other-client.crt", "other-client.key")), "/metrics", "");
    assert_eq!(other.await, None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(r.rejected("tls_handshake") >= 1);
    // Plain HTTP on the TLS port: no handshake, no answer.
    assert_eq!(status(&plain(r.addr, &get("/healthz", "")).await), 0);
    // A bearer header is no substitute when no token is configured.
    let b = tls_get(r.addr, None, "/metrics", "Authorization: Bearer x\r\n").await.expect("tls");
    assert_eq!(status(&b), 403, "{b}");
}

#[tokio::test]
async fn tls_handshake_slowloris_is_cut() {
    let r = Running::start(fast(), Some(tls::tests::files(true)), None).await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    let t = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.rejected("tls_handshake"), 1);
}

#[tokio::test]
async fn tls_bearer_token() {
    let token = "0123456789abcdef0123456789abcdef";
    let r = Running::start(fast(), Some(tls::tests::files(false)), Some(token)).await;
    let anon = tls_get(r.addr, None, "/metrics", "").await.expect("tls");
    assert_eq!(status(&anon), 401, "{anon}");
    assert!(anon.to_ascii_lowercase().contains("www-authenticate: bearer"), "{anon}");
    let bad = tls_get(r.addr, None, "/metrics", "Authorization: Bearer nope\r\n").await;
    assert_eq!(status(&bad.expect("tls")), 403);
    let header = format!("Authorization: Bearer {token}\r\n");
    let good = tls_get(r.addr, None, "/metrics", &header).await.expect("tls");
    assert_eq!(status(&good), 200, "{good}");
    // Without a client CA a client certificate is not asked for nor trusted.
    let cert_only = tls_get(r.addr, Some(("client.crt", "client.key")), "/metrics", "").await;
    assert_eq!(status(&cert_only.expect("tls")), 401);
    assert_eq!((r.rejected("unauthenticated"), r.rejected("forbidden")), (2, 1));
    assert_eq!(status(&tls_get(r.addr, None, "/healthz", "").await.expect("tls")), 200);
}
