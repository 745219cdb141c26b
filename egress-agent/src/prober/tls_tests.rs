//! `probes.tls` end to end on loopback: the prober through a real CONNECT
//! proxy (a relaying stand-in that grants or denies) to a real TLS server
//! (rustls with the metrics port's test certificate, valid for
//! `egress-agent.egress-observer.svc` and signed by its test CA; and, where
//! `openssl` is installed, OpenSSL's `s_server`). No root, no eBPF.
use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use rustls::{
    ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

use super::*;
use crate::config::ProbeTls;

/// The name the test certificate is valid for.
const GOOD: &str = "egress-agent.egress-observer.svc:443";
const T: Duration = Duration::from_secs(5);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/sinks/http/testdata").join(name)
}

fn trusting_the_test_ca() -> TlsProbe {
    TlsProbe::new(&ProbeTls { ca: Some(fixture("ca.crt")), insecure_skip_verify: false })
        .expect("tls")
}

#[derive(Clone, Copy)]
enum Server {
    /// Completes the handshake.
    Good,
    /// Answers the ClientHello with a fatal `handshake_failure` alert, as a
    /// server or an SNI router that will not serve the name does.
    Alert,
    /// Resets the connection once the ClientHello came.
    Reset,
    /// Reads the ClientHello and says nothing.
    Silent,
}

/// A TLS server for one connection; what it got, for the asserts.
fn tls_server(how: Server) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("tls.crt"))
        .expect("crt")
        .collect::<Result<_, _>>()
        .expect("crt");
    let key = PrivateKeyDer::from_pem_file(fixture("tls.key")).expect("key");
    let config = ServerConfig::builder_with_provider(crate::client_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("pair");
    let config = Arc::new(config);
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut hello = [0u8; 2048];
        match how {
            Server::Good => {
                let mut conn = ServerConnection::new(config).expect("conn");
                while conn.is_handshaking() {
                    if conn.complete_io(&mut s).is_err() {
                        return vec![];
                    }
                }
                let name = conn.server_name().unwrap_or_default().as_bytes().to_vec();
                // Until the client's close_notify (or its close).
                let mut rest = [0u8; 512];
                while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
                name
            }
            Server::Alert => {
                let n = s.read(&mut hello).unwrap_or(0);
                // Record: alert, TLS 1.2, length 2; fatal, handshake_failure.
                let _ = s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
                hello[..n].to_vec()
            }
            Server::Reset => {
                let n = s.read(&mut hello).unwrap_or(0);
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("linger");
                hello[..n].to_vec()
            }
            Server::Silent => {
                let n = s.read(&mut hello).unwrap_or(0);
                let mut rest = [0u8; 64];
                while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
                hello[..n].to_vec()
            }
        }
    });
    (addr, h)
}

/// A CONNECT proxy for one request: `403` to targets under `denied.`,
/// else a tunnel to `backend` with the bytes relayed both ways.
fn connect_proxy(backend: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).is_ok_and(|n| n == 1) {
            req.push(b[0]);
        }
        let line = String::from_utf8_lossy(&req).into_owned();
        if line.starts_with("CONNECT denied.") {
            let _ = c.write_all(
                b"HTTP/1.1 403 Forbidden\r\nServer: test-proxy\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
        let Ok(u) = TcpStream::connect(backend) else {
            let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
            return;
        };
        let _ = c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let (mut c2, mut u2) = (c.try_clone().expect("clone"), u.try_clone().expect("clone"));
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut u2);
            let _ = u2.shutdown(Shutdown::Write);
        });
        let (mut u, mut c) = (u, c);
        let _ = std::io::copy(&mut u, &mut c);
        let _ = c.shutdown(Shutdown::Write);
        let _ = up.join();
    });
    addr
}

/// One probe of `target` through a fresh proxy to a fresh `how` server.
fn probe(how: Server, target: &str, tls: &TlsProbe, timeout: Duration) -> (Attempt, Vec<u8>) {
    let (server, h) = tls_server(how);
    let proxy = connect_proxy(server);
    let a = probe_once(&proxy.to_string(), target, timeout, Some(tls));
    // A server that got no connection (a denied CONNECT) is left waiting.
    let got = if a.status == Some(200) { h.join().expect("server") } else { vec![] };
    (a, got)
}

/// The hop and reason the prober would report without the pipeline.
fn verdict(a: &Attempt) -> Option<(String, Reason)> {
    failure_of(a, &Judged::default(), &["gke-squid".to_string(), "gce-proxy".to_string()])
}

#[test]
fn a_good_certificate_completes_the_handshake_with_the_target_name_as_sni() {
    let (a, sni) = probe(Server::Good, GOOD, &trusting_the_test_ca(), T);
    assert_eq!((a.status, &a.tls), (Some(200), &Some(Ok(()))), "{a:?}");
    assert!(a.ok());
    assert_eq!(verdict(&a), None);
    assert_eq!(String::from_utf8_lossy(&sni), "egress-agent.egress-observer.svc");
}

#[test]
fn rejected_certificates_are_tls_failed_with_the_error() {
    // The name is not the certificate's.
    let (a, _) = probe(Server::Good, "wrong.example.test:443", &trusting_the_test_ca(), T);
    let detail = a.tls_failure().expect("failed").to_string();
    assert!(detail.contains("certificate not valid for name \"wrong.example.test\""), "{detail}");
    assert_eq!(verdict(&a), Some(("internet".into(), Reason::TlsFailed)));
    // The CA is not trusted: the system's roots only.
    let system = TlsProbe::new(&ProbeTls::default()).expect("system roots");
    let (a, _) = probe(Server::Good, GOOD, &system, T);
    assert_eq!(a.tls_failure(), Some("invalid peer certificate: UnknownIssuer"), "{a:?}");
    assert_eq!(verdict(&a), Some(("internet".into(), Reason::TlsFailed)));
    // Verification off, on purpose: the wrong name passes.
    let insecure = TlsProbe::new(&ProbeTls { ca: None, insecure_skip_verify: true }).expect("tls");
    let (a, _) = probe(Server::Good, "wrong.example.test:443", &insecure, T);
    assert!(a.ok(), "{a:?}");
}

#[test]
fn a_server_that_aborts_the_handshake_is_tls_failed_with_what_it_did() {
    let tls = trusting_the_test_ca();
    let (a, hello) = probe(Server::Alert, GOOD, &tls, T);
    assert_eq!(hello.first(), Some(&0x16), "a ClientHello went through the tunnel");
    assert_eq!(a.tls_failure(), Some("received fatal alert: HandshakeFailure"), "{a:?}");
    assert_eq!(verdict(&a), Some(("internet".into(), Reason::TlsFailed)));
    // The proxy relays the origin's reset as the tunnel's end.
    let (a, _) = probe(Server::Reset, GOOD, &tls, T);
    let detail = a.tls_failure().expect("failed");
    assert!(
        detail == "connection closed during the TLS handshake"
            || detail == "connection reset during the TLS handshake",
        "{detail}"
    );
    assert_eq!(verdict(&a).map(|v| v.1), Some(Reason::TlsFailed));
    // Nothing back: bounded by the probe's timeout.
    let (a, _) = probe(Server::Silent, GOOD, &tls, Duration::from_millis(800));
    assert_eq!(a.tls_failure(), Some("no TLS handshake within the probe timeout"), "{a:?}");
    assert!(a.elapsed < Duration::from_secs(2), "{:?}", a.elapsed);
    assert_eq!(verdict(&a).map(|v| v.1), Some(Reason::TlsFailed));
}

#[test]
fn a_denied_connect_stays_the_proxys_failure() {
    let (a, _) = probe(Server::Good, "denied.example.test:443", &trusting_the_test_ca(), T);
    assert_eq!((a.status, &a.tls), (Some(403), &None), "no handshake without a tunnel");
    assert_eq!(verdict(&a), Some(("gke-squid".into(), Reason::ProxyDenied)));
}

/// Interoperability: the same probe against OpenSSL's server, where
/// `openssl` is installed (skipped, and said so, where it is not).
#[test]
fn an_openssl_server_completes_the_handshake() {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let child = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(fixture("tls.crt"))
        .arg("-key")
        .arg(fixture("tls.key"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("openssl not found: OpenSSL interoperability not checked");
        return;
    };
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut child);
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(server).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "openssl s_server did not listen on {server}");
    let tls = trusting_the_test_ca();
    let a = probe_once(&connect_proxy(server).to_string(), GOOD, T, Some(&tls));
    assert!(a.ok(), "{a:?}");
    let a = probe_once(&connect_proxy(server).to_string(), "wrong.example.test:443", T, Some(&tls));
    assert!(a.tls_failure().is_some_and(|d| d.contains("certificate not valid for name")), "{a:?}");
}
