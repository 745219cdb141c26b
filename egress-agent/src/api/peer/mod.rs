//! The peer API: what this agent tells another agent about one link of a
//! request, so `egress-agent explain --assemble` on the client's node can
//! join the chain across machines (see [`crate::assembly`]).
//!
//! `run --peer-addr ADDR` serves, over mutual TLS ([`tls`]: a client
//! certificate of the agents' CA is required in the handshake),
//! exactly one request:
//!
//! ```text
//! GET /v1/link?peer=10.0.1.10:43512&local=10.0.2.10:3128
//! → 200 {"node":"…","link":{…},"records":[…],"truncated":false}
//! ```
//!
//! The answer holds the records of this agent's history (`--api-history`)
//! that end in that link, the chains they belong to and those chains' legs
//! ([`crate::assembly::select`]), at most [`MAX_RECORDS`]. There is no
//! listing: an authenticated peer learns about links whose exact address
//! pair (both ports) it already knows. Bounded like the metrics port: at
//! most [`MAX_CONNECTIONS`] connections, a handshake and header deadline,
//! no request bodies, a connection lifetime. Every refusal is counted in
//! `egress_peer_requests_total{result}`.
pub mod tls;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounterVec;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;

use super::server::History;
pub use crate::assembly::select::MAX_RECORDS;
use crate::{
    assembly::{
        Link,
        select::{LinkAnswer, select},
    },
    sinks::register::{self as reg, MetricError},
};

/// Where agents serve the peer API unless told otherwise.
pub const DEFAULT_PORT: u16 = 9465;
/// The name in the agents' certificate, which clients verify.
pub const DEFAULT_SERVER_NAME: &str = "egress-agent-peer";
/// The one path.
pub const PATH: &str = "/v1/link";
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;
const HANDSHAKE: Duration = Duration::from_secs(5);
const CONNECTION: Duration = Duration::from_secs(30);
const MAX_HEADER: usize = 8 * 1024;

/// The `result` label values of `egress_peer_requests_total`.
const RESULTS: [&str; 7] = [
    "ok",
    "bad_request",
    "not_found",
    "tls_handshake",
    "connection_limit",
    "deadline",
    "unavailable",
];

struct Ctx {
    history: History,
    node: String,
    requests: IntCounterVec,
}

impl Ctx {
    fn count(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }
}

/// Serve the peer API on `listener` until `shutdown`; answers come from
/// `history`, signed `node`.
pub fn start(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    history: History,
    node: String,
    registry: &prometheus::Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, MetricError> {
    let requests = reg::counter_vec(
        registry,
        "egress_peer_requests_total",
        "Requests and connections on the peer API (--peer-addr), by result: ok, bad_request, not_found, tls_handshake (no or an unknown client certificate), connection_limit, deadline, unavailable",
        &["result"],
    )?;
    for r in RESULTS {
        requests.with_label_values(&[r]);
    }
    let ctx = Arc::new(Ctx { history, node, requests });
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    Ok(tokio::spawn(accept(listener, acceptor, ctx, shutdown)))
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("peer API: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.count("connection_limit");
            continue;
        };
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let work = async {
                let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!("peer API: TLS handshake: {e}");
                        return ctx.count("tls_handshake");
                    }
                    Err(_) => return ctx.count("tls_handshake"),
                };
                let c = ctx.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let res = respond(&c, &req);
                    async move { Ok::<_, Infallible>(res) }
                });
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE)
                    .max_buf_size(MAX_HEADER * 2)
                    .keep_alive(true);
                if let Err(e) = b.serve_connection(TokioIo::new(tls), svc).await {
                    tracing::debug!("peer API: {e}");
                }
            };
            if tokio::time::timeout(CONNECTION, work).await.is_err() {
                ctx.count("deadline");
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

fn respond(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        ctx.count("not_found");
        return text(StatusCode::NOT_FOUND, format!("not found: GET {PATH}?peer=…&local=…\n"));
    }
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) != Some(0));
    if req.method() != Method::GET || has_body {
        ctx.count("bad_request");
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "GET without a body only\n");
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return res;
    }
    let link = match Link::from_query(req.uri().query().unwrap_or("")) {
        Ok(l) => l,
        Err(e) => {
            ctx.count("bad_request");
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    };
    let Some((records, truncated)) = ctx.history.with(|h| select(h, &link, MAX_RECORDS)) else {
        ctx.count("unavailable");
        return text(StatusCode::SERVICE_UNAVAILABLE, "history unavailable\n");
    };
    let answer = LinkAnswer { node: ctx.node.clone(), link, records, truncated };
    match serde_json::to_vec(&answer) {
        Ok(body) => {
            ctx.count("ok");
            let mut res = text(StatusCode::OK, body);
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        Err(e) => {
            ctx.count("unavailable");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer: {e}\n"))
        }
    }
}

#[cfg(test)]
mod tests;
