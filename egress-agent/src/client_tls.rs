//! The rustls client configuration the agent's own clients share (the OTLP
//! exporter, the prober's TLS probes): ring, the safe default protocol
//! versions, and the system's roots as `rustls-native-certs` finds them
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) plus the certificates of an
//! optional PEM file for private CAs. The peer API's mutual TLS trusts its
//! own CA only and is built apart (`api::peer::tls`).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, pem::PemObject as _},
};

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read {}", path.display())]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: {source}", path.display())]
    Cert { path: PathBuf, source: rustls::Error },
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// The one crypto provider of the agent's TLS (ring, as the Kubernetes
/// client uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots (those that parse) and, with `ca`, every certificate
/// of that PEM file; also how many came from `ca`.
pub fn roots(ca: Option<&Path>) -> Result<(RootCertStore, usize), ClientTlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut added = 0;
    if let Some(path) = ca {
        let err = |source| ClientTlsError::Pem { path: path.to_path_buf(), source };
        for cert in CertificateDer::pem_file_iter(path).map_err(err)? {
            roots
                .add(cert.map_err(err)?)
                .map_err(|source| ClientTlsError::Cert { path: path.to_path_buf(), source })?;
            added += 1;
        }
    }
    Ok((roots, added))
}

/// A client configuration that verifies servers against `roots`, with no
/// client certificate.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, ClientTlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_adds_its_certificates_and_a_bad_one_is_named() {
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sinks/http/testdata/ca.crt");
        let (_, added) = roots(Some(&ca)).expect("ca");
        assert_eq!(added, 1);
        client_config(roots(None).expect("system").0).expect("config");
        let missing = Path::new("/nonexistent/ca.pem");
        let e = roots(Some(missing)).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        // A key is no certificate: nothing added.
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sinks/http/testdata/tls.key");
        assert_eq!(roots(Some(&key)).expect("no certificates").1, 0);
    }
}
