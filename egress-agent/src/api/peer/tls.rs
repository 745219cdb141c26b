//! Mutual TLS of the peer API (rustls with ring, as the Kubernetes client
//! uses): every agent holds the agents' CA and one agent certificate
//! (`deploy/tls/make-peer-certs.sh`); it serves with it and presents it
//! when it asks another agent. A client must present a certificate that
//! CA signed, or the handshake fails: there is no unauthenticated access,
//! and no way to configure one.
//!
//! The files are read at start; an error there stops the agent (or the
//! `explain --assemble` run) before anything is served or asked.
//!
//! The metrics port's TLS (branch `lifecycle`, `sinks::http::tls`) reads
//! the same kinds of files and reloads them when they change; once it is
//! on main, [`server_config`] is its `build` with the client CA required.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

/// The agent's certificate, its key, and the agents' CA (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    #[error("cannot read {what} {}", path.display())]
    Pem { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("--peer-ca {}: a certificate is not a usable CA", path.display())]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("--peer-ca {}", path.display())]
    Verifier { path: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error("--peer-tls-cert / --peer-tls-key do not make a usable pair")]
    Pair(#[source] rustls::Error),
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let pem = |source| PeerTlsError::Pem { what, path: path.to_path_buf(), source };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(PeerTlsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, PeerTlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PeerTlsError::Pem {
        what: "--peer-tls-key",
        path: path.to_path_buf(),
        source,
    })
}

fn roots(ca: &Path) -> Result<RootCertStore, PeerTlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs("--peer-ca", ca)? {
        roots.add(c).map_err(|source| PeerTlsError::BadCa { path: ca.to_path_buf(), source })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: this agent's certificate, client certificates of the
/// agents' CA required.
pub fn server_config(f: &PeerTlsFiles) -> Result<ServerConfig, PeerTlsError> {
    let chain = certs("--peer-tls-cert", &f.cert)?;
    let key = key(&f.key)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&f.ca)?), provider())
        .build()
        .map_err(|source| PeerTlsError::Verifier { path: f.ca.clone(), source })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(PeerTlsError::Pair)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(PeerTlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client side: servers verified against the agents' CA, this agent's
/// certificate presented.
pub fn client_config(f: &PeerTlsFiles) -> Result<ClientConfig, PeerTlsError> {
    let chain = certs("--peer-tls-cert", &f.cert)?;
    let key = key(&f.key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(PeerTlsError::Pair)?
        .with_root_certificates(roots(&f.ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(PeerTlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test files made by deploy/tls/make-peer-certs.sh (valid for a
    /// century): the CA, the agent certificate it signed, and an agent
    /// certificate of another CA.
    pub fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/api/peer/testdata").join(name)
    }

    pub fn files() -> PeerTlsFiles {
        PeerTlsFiles { cert: fixture("peer.crt"), key: fixture("peer.key"), ca: fixture("ca.crt") }
    }

    #[test]
    fn loads_and_names_the_flag_that_is_wrong() {
        server_config(&files()).expect("server");
        client_config(&files()).expect("client");
        let e = server_config(&PeerTlsFiles { key: fixture("ca.crt"), ..files() })
            .expect_err("a certificate is no key");
        assert!(crate::errors::Chain(&e).to_string().contains("--peer-tls-key"), "{e}");
        let e = client_config(&PeerTlsFiles { ca: fixture("missing.crt"), ..files() })
            .expect_err("missing CA");
        assert!(crate::errors::Chain(&e).to_string().contains("--peer-ca"), "{e}");
        assert!(matches!(
            server_config(&PeerTlsFiles { key: fixture("other.key"), ..files() }),
            Err(PeerTlsError::Pair(_))
        ));
        assert!(matches!(
            server_config(&PeerTlsFiles { ca: fixture("peer.key"), ..files() }),
            Err(PeerTlsError::NoCertificate { .. })
        ));
    }
}
