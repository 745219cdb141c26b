//! `run`'s flags for the metrics port: where it listens (and how long to
//! wait for the address while a previous agent still holds it), TLS, who
//! may read /metrics, and the server's bounds. Turned into a ready
//! [`HttpServer`] and a bound listener before anything is loaded, so a bad
//! file or a busy port is a clear error first.
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::{DurationError, parse_duration},
    sinks::{
        Metrics,
        http::{
            HttpServer, Limits,
            auth::TokenFile,
            tls::{Tls, TlsFiles},
        },
    },
};

#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Where to serve /metrics, /healthz and /readyz. In the DaemonSet:
    /// the node's IP ($(HOST_IP):9464, downward API status.hostIP).
    /// An IPv6 address may come without brackets (`fd00::1:9464`, as
    /// `$(HOST_IP):9464` expands on an IPv6 node): the last `:` starts the port.
    #[arg(long, env = "EGRESS_METRICS_ADDR", default_value = "127.0.0.1:9464", value_parser = listen_addr)]
    pub metrics_addr: SocketAddr,
    /// While --metrics-addr is in use (a previous agent still stopping, as
    /// in a rolling update or a restart), retry this long before giving up;
    /// nothing is loaded before the port is ours. 0: fail at once.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub metrics_bind_wait: Duration,
    /// Serve TLS with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, env = "EGRESS_METRICS_TLS_CERT", requires = "metrics_tls_key")]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EGRESS_METRICS_TLS_KEY", requires = "metrics_tls_cert")]
    pub metrics_tls_key: Option<PathBuf>,
    /// Serve /metrics only to clients presenting a certificate signed by
    /// this CA (PEM bundle). /healthz and /readyz stay open. Needs TLS.
    #[arg(long, env = "EGRESS_METRICS_CLIENT_CA", requires = "metrics_tls_cert")]
    pub metrics_client_ca: Option<PathBuf>,
    /// Serve /metrics only to requests with `Authorization: Bearer <token>`,
    /// the token being this file's content (re-read when it changes).
    /// With --metrics-client-ca, either credential is enough. Needs TLS.
    #[arg(long, env = "EGRESS_METRICS_TOKEN_FILE", requires = "metrics_tls_cert")]
    pub metrics_token_file: Option<PathBuf>,
    /// Connections served at once; more are closed at accept (counted).
    #[arg(long, default_value_t = Limits::default().max_connections, value_parser = connection_cap)]
    pub metrics_max_connections: usize,
    /// Time a client has for the TLS handshake and for each request's
    /// header block (also the keep-alive idle time).
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub metrics_header_timeout: Duration,
}

/// The TLS configuration and bearer token, read from their files.
pub struct MetricsFiles {
    tls: Option<Tls>,
    token: Option<TokenFile>,
}

/// `ip:port`, `[v6]:port`, or `v6:port` without brackets.
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            let (ip, port) = s.rsplit_once(':')?;
            Some(SocketAddr::new(ip.parse::<std::net::Ipv6Addr>().ok()?.into(), port.parse().ok()?))
        })
        .ok_or_else(|| {
            format!("`{s}` is not an address and port (e.g. 10.0.0.5:9464, [fd00::5]:9464)")
        })
}

fn connection_cap(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of connections from 1 to 65535")),
    }
}

fn positive_duration(s: &str) -> Result<Duration, DurationError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(DurationError::Range(s.to_string()));
    }
    Ok(d)
}

impl MetricsArgs {
    /// Read the TLS and token files now: an error here stops the agent
    /// before it binds or loads anything.
    pub fn load(&self) -> anyhow::Result<MetricsFiles> {
        let tls = match (&self.metrics_tls_cert, &self.metrics_tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.metrics_client_ca.clone(),
            })?),
            _ => None,
        };
        let token = self.metrics_token_file.as_deref().map(TokenFile::load).transpose()?;
        Ok(MetricsFiles { tls, token })
    }

    /// The server these flags ask for, with the files [`Self::load`] read.
    pub fn server(&self, files: MetricsFiles, metrics: Arc<Metrics>) -> anyhow::Result<HttpServer> {
        let limits = Limits {
            max_connections: self.metrics_max_connections,
            header_timeout: self.metrics_header_timeout,
            ..Limits::default()
        };
        let server = HttpServer::new(limits, files.tls, files.token, metrics)?;
        if !server.authenticated() && !self.metrics_addr.ip().is_loopback() {
            tracing::warn!(
                addr = %self.metrics_addr,
                "/metrics is served without authentication on a non-loopback address: every local process and pod that reaches it can read it (see --metrics-client-ca, --metrics-token-file)"
            );
        }
        Ok(server)
    }

    /// Bind --metrics-addr, retrying while it is in use for up to
    /// --metrics-bind-wait (or until `shutdown`).
    pub async fn bind(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<TcpListener> {
        let addr = self.metrics_addr;
        let started = tokio::time::Instant::now();
        let mut said = false;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    if said {
                        tracing::info!(%addr, waited = ?started.elapsed(), "metrics address free: starting");
                    }
                    return Ok(l);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && started.elapsed() < self.metrics_bind_wait =>
                {
                    if !said {
                        tracing::info!(%addr, wait = ?self.metrics_bind_wait, "metrics address in use (a previous agent still stopping?): waiting for it before loading anything");
                        said = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.wait_for(|v| *v) => anyhow::bail!("stopped while waiting for --metrics-addr {addr}"),
                    }
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot listen on --metrics-addr {addr}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct T {
        #[command(flatten)]
        m: MetricsArgs,
    }

    fn args(a: &[&str]) -> Result<MetricsArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(a.iter().copied())).map(|t| t.m)
    }

    #[test]
    fn flags_and_their_dependencies() {
        let a = args(&[]).expect("defaults");
        assert_eq!(a.metrics_bind_wait, Duration::from_secs(60));
        assert_eq!(a.metrics_max_connections, 64);
        assert!(args(&["--metrics-tls-cert", "c"]).is_err(), "a cert needs its key");
        assert!(args(&["--metrics-client-ca", "ca"]).is_err(), "client certificates need TLS");
        assert!(args(&["--metrics-token-file", "t"]).is_err(), "a token is sent only over TLS");
        assert!(args(&["--metrics-max-connections", "0"]).is_err());
        assert!(args(&["--metrics-header-timeout", "0s"]).is_err());
        let a = args(&[
            "--metrics-tls-cert",
            "c",
            "--metrics-tls-key",
            "k",
            "--metrics-token-file",
            "t",
            "--metrics-header-timeout",
            "1.5s",
        ])
        .expect("tls + token");
        assert_eq!(a.metrics_header_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_addr("10.0.0.5:9464"), Ok("10.0.0.5:9464".parse().expect("addr")));
        assert_eq!(listen_addr("[fd00::5]:9464"), Ok("[fd00::5]:9464".parse().expect("addr")));
        assert_eq!(listen_addr("fd00::5:9464"), Ok("[fd00::5]:9464".parse().expect("addr")));
        for bad in ["", "10.0.0.5", "10.0.0.5:", "host:9464", "fd00::5", "10.0.0.256:1"] {
            assert!(listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn waits_for_the_address_while_it_is_in_use() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let (_tx, rx) = watch::channel(false);
        let a = args(&["--metrics-addr", &addr, "--metrics-bind-wait", "0"]).expect("args");
        let e = a.bind(rx.clone()).await.expect_err("in use, no wait");
        assert!(format!("{e:#}").contains("cannot listen on --metrics-addr"), "{e:#}");
        let a = args(&["--metrics-addr", &addr, "--metrics-bind-wait", "10s"]).expect("args");
        let t = std::time::Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(held);
        });
        let l = a.bind(rx.clone()).await.expect("bound once the holder let go");
        assert!(t.elapsed() >= Duration::from_millis(450), "{:?}", t.elapsed());
        assert_eq!(l.local_addr().expect("addr").to_string(), addr);
        release.join().expect("thread");
        // A stop while waiting ends the wait.
        let (tx, rx) = watch::channel(false);
        let a = args(&["--metrics-addr", &addr, "--metrics-bind-wait", "60s"]).expect("args");
        let waiting = tokio::spawn(async move { a.bind(rx).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send(true).expect("stop");
        let r = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("ended");
        assert!(r.expect("task").is_err());
        drop(l);
    }
}
