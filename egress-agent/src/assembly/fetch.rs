//! The client of the peer API: one `GET /v1/link?…` to one agent over
//! mutual TLS ([`crate::api::peer::tls`]), bounded in time and size.
use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Link, select::LinkAnswer};
use crate::api::peer::{
    PATH,
    tls::{PeerTlsError, PeerTlsFiles, client_config},
};

/// Largest answer read (an answer holds at most `MAX_RECORDS` records).
const MAX_ANSWER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answer larger than {MAX_ANSWER} bytes, or cut: {0}")]
    Body(String),
    #[error("answered {status}: {text}")]
    Status { status: u16, text: String },
    #[error("answer is not a link answer: {0}")]
    Decode(serde_json::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
}

/// Asks agents about links, as this agent (its certificate).
#[derive(Clone)]
pub struct PeerClient {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    timeout: Duration,
}

impl PeerClient {
    /// Servers are verified against the agents' CA and `server_name` (the
    /// name in the agents' certificate).
    pub fn new(
        files: &PeerTlsFiles,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Self, PeerClientError> {
        let config = client_config(files)?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| PeerClientError::ServerName(server_name.to_string()))?;
        Ok(Self { tls: TlsConnector::from(Arc::new(config)), server_name, timeout })
    }

    /// The answer of the agent at `addr` (`host:port`) about `link`.
    pub async fn link(&self, addr: &str, link: &Link) -> Result<LinkAnswer, FetchError> {
        tokio::time::timeout(self.timeout, self.ask(addr, link))
            .await
            .unwrap_or(Err(FetchError::Timeout(self.timeout)))
    }

    async fn ask(&self, addr: &str, link: &Link) -> Result<LinkAnswer, FetchError> {
        let tcp = TcpStream::connect(addr).await.map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(self.server_name.clone(), tcp).await.map_err(FetchError::Tls)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let host = match &self.server_name {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            other => format!("{other:?}"),
        };
        let req = http::Request::get(format!("{PATH}?{}", link.query()))
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        driver.abort();
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
                text: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        serde_json::from_slice(&body).map_err(FetchError::Decode)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerClientError {
    #[error(transparent)]
    Tls(#[from] PeerTlsError),
    #[error("--peer-server-name `{0}` is not a DNS name")]
    ServerName(String),
}
