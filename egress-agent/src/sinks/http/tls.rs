//! TLS for the metrics port (rustls with ring, as the Kubernetes client
//! uses): the server certificate and key of `--metrics-tls-cert` /
//! `--metrics-tls-key` (PEM) and, with `--metrics-client-ca`, client
//! certificates verified against that CA. A client without a certificate
//! still completes the handshake (the kubelet's probes of /healthz and
//! /readyz carry none); whether /metrics lets it in is [`super::auth`]'s
//! call. A client presenting a certificate the CA did not sign fails the
//! handshake.
//!
//! The files are read at start (an error there stops the agent) and again
//! when one of them changes (cert-manager or a rotated Secret), checked at
//! most every [`RELOAD_CHECK`]; a reload that fails keeps the configuration
//! in force and is counted.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

/// How often, at most, the files' modification times are looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Verify client certificates against this CA bundle.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut p = vec![self.cert.as_path(), self.key.as_path()];
        p.extend(self.client_ca.as_deref());
        p
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}", path.display())]
    Pem { what: &'static str, path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("--metrics-client-ca {}: a certificate is not a usable CA", path.display())]
    BadCa { path: PathBuf, source: rustls::Error },
    #[error("--metrics-client-ca {}", path.display())]
    Verifier { path: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error("--metrics-tls-cert / --metrics-tls-key do not make a usable pair")]
    Pair(#[source] rustls::Error),
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { what, path: path.to_path_buf(), source };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// A server configuration from the files as they are now.
pub fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("--metrics-tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "--metrics-tls-key",
        path: files.key.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--metrics-client-ca", ca)? {
                roots.add(c).map_err(|source| TlsError::BadCa { path: ca.clone(), source })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::Verifier { path: ca.clone(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a reload check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    Failed,
}

struct Current {
    acceptor: TlsAcceptor,
    stamps: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// The TLS configuration in force, reloaded when its files change.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = files.stamps();
        let acceptor = TlsAcceptor::from(Arc::new(build(&files)?));
        Ok(Self {
            files,
            current: Mutex::new(Current { acceptor, stamps, checked: Instant::now() }),
        })
    }

    pub fn client_ca(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The acceptor for a new connection, after a reload if a file changed
    /// (looked at no more often than `every`).
    pub fn acceptor(&self, every: Duration) -> (TlsAcceptor, Reload) {
        let Ok(mut c) = self.current.lock() else {
            // Poisoned: a panic elsewhere; nothing to serve safely.
            let fallback = self.current.lock().unwrap_or_else(|e| e.into_inner());
            return (fallback.acceptor.clone(), Reload::Failed);
        };
        if c.checked.elapsed() < every {
            return (c.acceptor.clone(), Reload::Unchanged);
        }
        c.checked = Instant::now();
        let stamps = self.files.stamps();
        if stamps == c.stamps {
            return (c.acceptor.clone(), Reload::Unchanged);
        }
        c.stamps = stamps;
        match build(&self.files) {
            Ok(config) => {
                tracing::info!("metrics TLS files changed: reloaded");
                c.acceptor = TlsAcceptor::from(Arc::new(config));
                (c.acceptor.clone(), Reload::Reloaded)
            }
            Err(e) => {
                tracing::warn!(
                    "metrics TLS files changed but do not load ({}): keeping the previous ones",
                    crate::errors::Chain(&e)
                );
                (c.acceptor.clone(), Reload::Failed)
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Test PEM files (deploy/tls/make-certs.sh, ECDSA P-256, valid until
    /// 2125): a CA, the server (DNS egress-agent.egress-observer.svc, IP
    /// 127.0.0.1), a client of that CA, and a client of another CA.
    pub fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/sinks/http/testdata").join(name)
    }

    pub fn files(client_ca: bool) -> TlsFiles {
        TlsFiles {
            cert: fixture("tls.crt"),
            key: fixture("tls.key"),
            client_ca: client_ca.then(|| fixture("ca.crt")),
        }
    }

    #[test]
    fn loads_the_fixtures() {
        let t = Tls::load(files(true)).expect("load");
        assert!(t.client_ca());
        assert_eq!(t.acceptor(Duration::ZERO).1, Reload::Unchanged);
        Tls::load(files(false)).expect("no client CA");
    }

    #[test]
    fn bad_files_are_errors_that_name_the_flag() {
        let mut f = files(false);
        f.key = fixture("ca.crt");
        let e = Tls::load(f).err().expect("a cert is not a key");
        assert!(
            crate::errors::Chain(&e).to_string().contains("--metrics-tls-key"),
            "{}",
            crate::errors::Chain(&e)
        );
        let mut f = files(false);
        f.cert = fixture("missing.crt");
        let e = Tls::load(f).err().expect("missing");
        assert!(
            crate::errors::Chain(&e).to_string().contains("--metrics-tls-cert"),
            "{}",
            crate::errors::Chain(&e)
        );
        let mut f = files(false);
        f.key = fixture("client.key");
        assert!(
            matches!(Tls::load(f), Err(TlsError::Pair(_))),
            "the client's key with the server's cert"
        );
        let mut f = files(true);
        f.client_ca = Some(fixture("tls.key"));
        assert!(matches!(Tls::load(f), Err(TlsError::NoCertificate { .. })));
    }

    #[test]
    fn reloads_when_a_file_changes_and_keeps_the_old_on_failure() {
        let dir = std::env::temp_dir().join(format!("eo-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = TlsFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key"), client_ca: None };
        std::fs::copy(fixture("tls.crt"), &f.cert).expect("cp");
        std::fs::copy(fixture("tls.key"), &f.key).expect("cp");
        let t = Tls::load(f.clone()).expect("load");
        let bump = |p: &Path, secs| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .and_then(|h| h.set_modified(SystemTime::now() + Duration::from_secs(secs)))
                .expect("mtime");
        };
        assert_eq!(t.acceptor(Duration::ZERO).1, Reload::Unchanged);
        // A half-written key: the reload fails, the old configuration stays.
        std::fs::write(&f.key, "-----BEGIN PRIVATE KEY-----\n").expect("write");
        bump(&f.key, 5);
        assert_eq!(t.acceptor(Duration::ZERO).1, Reload::Failed);
        assert_eq!(t.acceptor(Duration::ZERO).1, Reload::Unchanged, "not retried until it changes");
        std::fs::copy(fixture("tls.key"), &f.key).expect("cp");
        bump(&f.key, 10);
        // Not looked at again within the interval.
        assert_eq!(t.acceptor(Duration::from_secs(3600)).1, Reload::Unchanged);
        assert_eq!(t.acceptor(Duration::ZERO).1, Reload::Reloaded);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
