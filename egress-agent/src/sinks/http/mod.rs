//! The HTTP sink: /metrics (Prometheus text), /healthz, /readyz on one
//! port, plain or TLS ([`tls`]), /metrics behind client-certificate or
//! bearer-token authentication when configured ([`auth`]; the two probes
//! never ask), and bounded so that no client can hold it:
//! - at most [`Limits::max_connections`] connections at once; one more is
//!   closed at accept;
//! - a TLS handshake must finish within [`Limits::header_timeout`], and so
//!   must every request's header block (an idle keep-alive connection is
//!   closed after that long too);
//! - a header block larger than [`Limits::max_header_bytes`] gets 431, a
//!   request with a body 413: nothing here takes a body;
//! - a connection lives at most [`Limits::connection_deadline`] (a client
//!   that never reads its answer).
//!
//! Every refusal is counted in `egress_http_rejected_total{reason}`.
pub mod auth;
pub mod tls;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge, Registry};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use self::{
    auth::{Auth, Decision},
    tls::{Reload, Tls},
};
use super::{
    metrics::Metrics,
    register::{self as reg, MetricError},
};

/// Bounds of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// For a TLS handshake, and for each request's header block.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub connection_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            max_header_bytes: 8 * 1024,
            connection_deadline: Duration::from_secs(60),
        }
    }
}

/// Why a connection or request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    ConnectionLimit,
    TlsHandshake,
    HeaderTimeout,
    TooLarge,
    BadRequest,
    Deadline,
    Unauthenticated,
    Forbidden,
}

impl Rejection {
    pub const ALL: [Self; 8] = [
        Self::ConnectionLimit,
        Self::TlsHandshake,
        Self::HeaderTimeout,
        Self::TooLarge,
        Self::BadRequest,
        Self::Deadline,
        Self::Unauthenticated,
        Self::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::TlsHandshake => "tls_handshake",
            Self::HeaderTimeout => "header_timeout",
            Self::TooLarge => "too_large",
            Self::BadRequest => "bad_request",
            Self::Deadline => "deadline",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
        }
    }
}

/// The server's own metrics.
pub struct HttpMetrics {
    pub rejected: IntCounterVec,
    pub connections: IntGauge,
    pub tls_reloads: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricError> {
        let m = Self {
            rejected: reg::counter_vec(
                r,
                "egress_http_rejected_total",
                "Connections and requests the metrics port refused, by reason (connection_limit, tls_handshake, header_timeout, too_large, bad_request, deadline, unauthenticated, forbidden).",
                &["reason"],
            )?,
            connections: reg::gauge(
                r,
                "egress_http_connections",
                "Connections open on the metrics port.",
            )?,
            tls_reloads: reg::counter_vec(
                r,
                "egress_http_tls_reloads_total",
                "Reloads of the metrics port's TLS files after they changed, by result (ok, error: the previous files stay in force).",
                &["result"],
            )?,
        };
        for r in Rejection::ALL {
            m.rejected.with_label_values(&[r.as_str()]);
        }
        for r in ["ok", "error"] {
            m.tls_reloads.with_label_values(&[r]);
        }
        Ok(m)
    }

    fn reject(&self, r: Rejection) {
        self.rejected.with_label_values(&[r.as_str()]).inc();
    }
}

/// Everything the server needs, validated before anything is served.
pub struct HttpServer {
    pub limits: Limits,
    tls: Option<Tls>,
    auth: Auth,
    metrics: Arc<Metrics>,
    own: HttpMetrics,
}

impl HttpServer {
    /// `tls` and `auth` as loaded from their files; the server's metrics
    /// are registered on `metrics`' registry.
    pub fn new(
        limits: Limits,
        tls: Option<Tls>,
        token: Option<auth::TokenFile>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MetricError> {
        let own = HttpMetrics::new(&metrics.registry)?;
        let auth = Auth { client_ca: tls.as_ref().is_some_and(Tls::client_ca), token };
        Ok(Self { limits, tls, auth, metrics, own })
    }

    /// "https, client certificate or bearer token" and the like, for the log.
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let who = match (self.auth.client_ca, self.auth.token.is_some()) {
            (false, false) => "/metrics unauthenticated",
            (true, false) => "/metrics for verified client certificates",
            (false, true) => "/metrics for the bearer token",
            (true, true) => "/metrics for verified client certificates or the bearer token",
        };
        format!("{scheme}, {who}")
    }

    pub fn authenticated(&self) -> bool {
        self.auth.required()
    }
}

/// Serve until `shutdown` turns true; then stop accepting (the port is free
/// at once) and return. Connections still open end on their own bounds.
pub async fn serve(
    listener: TcpListener,
    server: HttpServer,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let server = Arc::new(server);
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return Ok(()),
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: do not spin.
                tracing::warn!("metrics port: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            server.own.reject(Rejection::ConnectionLimit);
            drop(stream);
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            server.own.connections.inc();
            let deadline = server.limits.connection_deadline;
            if tokio::time::timeout(deadline, connection(stream, &server)).await.is_err() {
                server.own.reject(Rejection::Deadline);
            }
            server.own.connections.dec();
            drop(slot);
        });
    }
}

async fn connection(stream: TcpStream, server: &Arc<HttpServer>) {
    // Answers are small and whole: no Nagle delay on them.
    let _ = stream.set_nodelay(true);
    let Some(tls) = &server.tls else {
        return http(stream, false, server).await;
    };
    let (acceptor, reload) = tls.acceptor(tls::RELOAD_CHECK);
    match reload {
        Reload::Unchanged => {}
        Reload::Reloaded => server.own.tls_reloads.with_label_values(&["ok"]).inc(),
        Reload::Failed => server.own.tls_reloads.with_label_values(&["error"]).inc(),
    }
    let stream =
        match tokio::time::timeout(server.limits.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("metrics port: TLS handshake: {e}");
                return server.own.reject(Rejection::TlsHandshake);
            }
            Err(_) => return server.own.reject(Rejection::TlsHandshake),
        };
    // With a client CA, a presented certificate was verified in the handshake.
    let client_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
    http(stream, client_cert, server).await;
}

/// HTTP/1.1 on one connection, with the header timeout and size cap.
async fn http<S>(io: S, client_cert: bool, server: &Arc<HttpServer>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicU32::new(0));
    let (s, n) = (server.clone(), served.clone());
    let svc = service_fn(move |req: Request<Incoming>| {
        n.fetch_add(1, Ordering::Relaxed);
        let res = respond(&s, client_cert, &req);
        async move { Ok::<_, Infallible>(res) }
    });
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(server.limits.header_timeout)
        .max_header_size(server.limits.max_header_bytes)
        .max_buf_size(server.limits.max_header_bytes.max(8192) * 2)
        .keep_alive(true);
    if let Err(e) = b.serve_connection(TokioIo::new(io), svc).await {
        // An idle keep-alive connection timing out after its requests were
        // served is a normal end, not a refusal.
        let r = if e.is_timeout() {
            (served.load(Ordering::Relaxed) == 0).then_some(Rejection::HeaderTimeout)
        } else if e.is_parse_too_large() {
            Some(Rejection::TooLarge)
        } else if e.is_parse() || e.is_parse_version_h2() {
            Some(Rejection::BadRequest)
        } else {
            None // the client went away
        };
        if let Some(r) = r {
            server.own.reject(r);
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

fn respond(
    server: &HttpServer,
    client_cert: bool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) != Some(0));
    if has_body {
        server.own.reject(Rejection::TooLarge);
        let mut res = text(StatusCode::PAYLOAD_TOO_LARGE, "no request takes a body\n");
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found: /metrics, /healthz, /readyz\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        // The server starts only after the kernel programs are attached.
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => {
            let authorization = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
            match server.auth.check(client_cert, authorization) {
                Decision::Allowed => {
                    let mut res = text(StatusCode::OK, server.metrics.render());
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    res
                }
                Decision::Unauthenticated => {
                    server.own.reject(Rejection::Unauthenticated);
                    let mut res = text(
                        StatusCode::UNAUTHORIZED,
                        "/metrics needs a client certificate or a bearer token\n",
                    );
                    if server.auth.token.is_some() {
                        res.headers_mut().insert(
                            header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer realm=\"egress-agent\""),
                        );
                    }
                    res
                }
                Decision::Forbidden => {
                    server.own.reject(Rejection::Forbidden);
                    text(StatusCode::FORBIDDEN, "credentials not accepted\n")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
