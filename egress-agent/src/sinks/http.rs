//! The HTTP sink: /metrics (Prometheus text), /healthz, /readyz.
use std::sync::Arc;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, sync::watch};

use super::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        // The server starts only after the kernel programs are attached.
        .route("/readyz", get(|| async { "ready\n" }))
}

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await
}
