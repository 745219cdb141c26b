//! `probes.tls`: the TLS handshake with the target inside the CONNECT
//! tunnel, as an HTTPS client makes it (rustls, the target's host name as
//! SNI), bounded by the probe's deadline. The certificate is verified
//! against the system's roots plus `probes.tls_ca` ([`crate::client_tls`],
//! the configuration the OTLP exporter uses too), or not at all with
//! `probes.tls_insecure_skip_verify`. Every probe makes a full handshake
//! (no session resumption), so a changed certificate is seen at the next
//! probe.
//!
//! A failure is `tls_failed` with a detail: the server's alert, the
//! certificate error, or what the connection did (reset, closed, nothing
//! before the deadline).
use std::{io::Write as _, net::TcpStream, path::PathBuf, sync::Arc, time::Instant};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::once::left;
use crate::{
    client_tls::{self, ClientTlsError},
    config::ProbeTls,
};

/// A detail longer than this is cut (it is a metric label value).
const MAX_DETAIL: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ProbeTlsError {
    #[error("probes.tls_ca")]
    Ca(#[source] ClientTlsError),
    #[error("probes.tls_ca {}: no certificate in it", .0.display())]
    NoCa(PathBuf),
    #[error("probes.tls")]
    Config(#[source] ClientTlsError),
}

/// The client side of the probes' handshakes, built once.
#[derive(Debug, Clone)]
pub struct TlsProbe {
    config: Arc<ClientConfig>,
}

impl TlsProbe {
    pub fn new(s: &ProbeTls) -> Result<Self, ProbeTlsError> {
        let mut config = if s.insecure_skip_verify {
            let provider = client_tls::provider();
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ProbeTlsError::Config(ClientTlsError::Tls(e)))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let (roots, added) = client_tls::roots(s.ca.as_deref()).map_err(ProbeTlsError::Ca)?;
            if let (Some(ca), 0) = (&s.ca, added) {
                return Err(ProbeTlsError::NoCa(ca.clone()));
            }
            if roots.len() == added {
                // The image is FROM scratch: no /etc/ssl/certs unless mounted.
                tracing::warn!(
                    "probes.tls: no system root certificates found (SSL_CERT_FILE, /etc/ssl/certs): \
                     only probes.tls_ca is trusted"
                );
            }
            client_tls::client_config(roots).map_err(ProbeTlsError::Config)?
        };
        config.resumption = Resumption::disabled();
        Ok(Self { config: Arc::new(config) })
    }

    /// The handshake with `target`'s host over the tunnel `s`, by
    /// `deadline`. `early` holds bytes read past the proxy's answer. Err:
    /// why it failed, in words (the alert, the certificate error, …).
    pub fn handshake(
        &self,
        s: &mut TcpStream,
        target: &str,
        early: &[u8],
        deadline: Instant,
    ) -> Result<(), String> {
        let name = server_name(target)
            .ok_or_else(|| format!("{target}: the host is not a TLS server name"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| cut(format!("TLS client: {e}")))?;
        let r = drive(&mut conn, s, early, deadline);
        if r.is_ok() {
            // Done: say goodbye as a client would (best effort).
            conn.send_close_notify();
            let _ = conn.write_tls(s).and_then(|_| s.flush());
        }
        r.map_err(|e| cut(describe(&e)))
    }
}

/// Write and read until the handshake is done (the client's last flight
/// sent), each socket call bounded by what is left of the deadline.
fn drive(
    conn: &mut ClientConnection,
    s: &mut TcpStream,
    early: &[u8],
    deadline: Instant,
) -> std::io::Result<()> {
    let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut early = early;
    while !early.is_empty() {
        if conn.read_tls(&mut early)? == 0 {
            break;
        }
        process(conn, s)?;
    }
    while conn.is_handshaking() || conn.wants_write() {
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
        if conn.wants_write() {
            s.set_write_timeout(Some(left(deadline)))?;
            conn.write_tls(s)?;
            continue;
        }
        s.set_read_timeout(Some(left(deadline)))?;
        if conn.read_tls(s)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        process(conn, s)?;
    }
    Ok(())
}

/// Take the records read; on an error send the alert rustls queued for it
/// (best effort) and return the error.
fn process(conn: &mut ClientConnection, s: &mut TcpStream) -> std::io::Result<()> {
    if let Err(e) = conn.process_new_packets() {
        let _ = conn.write_tls(s);
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// `host:port` → the host as a server name (`[v6]` brackets dropped; an
/// address is verified as one and sent without SNI).
pub fn server_name(target: &str) -> Option<ServerName<'static>> {
    let (host, _) = target.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).ok()
}

/// What went wrong, in words: rustls's own (the alert received, the
/// certificate error) or what the connection did.
pub fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return t.to_string();
    }
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            "connection reset during the TLS handshake".into()
        }
        K::UnexpectedEof => "connection closed during the TLS handshake".into(),
        K::TimedOut | K::WouldBlock => "no TLS handshake within the probe timeout".into(),
        _ => format!("TLS handshake: {e}"),
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut i = MAX_DETAIL;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
    s
}

/// `tls_insecure_skip_verify`: any certificate is accepted; the handshake
/// signatures are still checked (the server holds the key of the
/// certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_and_details() {
        let dns = |t: &str| server_name(t).map(|n| n.to_str().into_owned());
        assert_eq!(dns("login.example.test:443").as_deref(), Some("login.example.test"));
        assert_eq!(dns("10.0.0.1:443").as_deref(), Some("10.0.0.1"));
        assert_eq!(dns("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert!(server_name("no-port").is_none());
        assert!(server_name("bad name:443").is_none());
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert_eq!(describe(&alert), "received fatal alert: HandshakeFailure");
        let cert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(describe(&cert), "invalid peer certificate: UnknownIssuer");
        for (k, d) in [
            (std::io::ErrorKind::ConnectionReset, "connection reset during the TLS handshake"),
            (std::io::ErrorKind::UnexpectedEof, "connection closed during the TLS handshake"),
            (std::io::ErrorKind::WouldBlock, "no TLS handshake within the probe timeout"),
        ] {
            assert_eq!(describe(&k.into()), d);
        }
        assert_eq!(cut("é".repeat(150)).len(), MAX_DETAIL);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let key = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/sinks/http/testdata/tls.key");
        let e = TlsProbe::new(&ProbeTls { ca: Some(key), insecure_skip_verify: false })
            .expect_err("a key");
        assert!(matches!(e, ProbeTlsError::NoCa(_)), "{e}");
        TlsProbe::new(&ProbeTls { ca: None, insecure_skip_verify: true }).expect("insecure");
    }
}
