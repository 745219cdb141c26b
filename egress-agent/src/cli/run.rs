//! `egress-agent run`: the daemon. The pipeline's records go to the sinks:
//! metrics (served over HTTP), the local API, the JSON flow log.
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use super::args::SessionArgs;
use crate::{
    api::{self, server::ApiOptions, wire::Status},
    config::parse_duration,
    pipeline::Output,
    records::{Record, rfc3339},
    session::{Session, shutdown_on_signals},
    sinks::{flow_log::FlowLog, http},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "EGRESS_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Also print every flow record and chain record (`"record":"chain"`) as
    /// a JSON line on stdout.
    #[arg(long)]
    pub log_flows: bool,
    /// Local API socket for `watch`, `flows` and `explain` (root-only).
    #[arg(long, env = "EGRESS_API_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub api_socket: std::path::PathBuf,
    /// Records kept in memory for `flows` and `explain` (0 keeps none;
    /// `watch` still streams).
    #[arg(long, default_value_t = api::DEFAULT_HISTORY)]
    pub api_history: usize,
    /// Do not serve the local API.
    #[arg(long)]
    pub no_api: bool,
    /// Longest a stop may take after SIGTERM/SIGINT: the programs are
    /// detached, the rings drained, open flows and lookups sent as `unknown`
    /// records; past this the agent exits with status 1 whatever is left.
    /// Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "EGRESS_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s", value_name = "DURATION")]
    pub shutdown_grace: std::time::Duration,
    #[command(flatten)]
    pub session: SessionArgs,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Bind first: a port in use is a clear error before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let config = args.session.load_config()?;
    let mut session = Session::start(args.session.options(config, args.log_flows)).await?;
    let shutdown = shutdown_on_signals()?;
    watchdog(shutdown.clone(), args.shutdown_grace);
    let server = tokio::spawn(http::serve(listener, session.metrics.clone(), shutdown.clone()));
    let api = if args.no_api {
        None
    } else {
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started: rfc3339(std::time::SystemTime::now()),
            attached: session.attached_summary(),
            history: 0,
            history_capacity: args.api_history,
        };
        let opts = ApiOptions { path: args.api_socket.clone(), history: args.api_history, status };
        Some(api::server::start(opts, &session.metrics.registry, shutdown.clone())?)
    };
    tracing::info!(addr = %args.metrics_addr, api = %if api.is_some() { args.api_socket.display().to_string() } else { "off".into() }, "egress-agent running; {}", session.attached_summary());
    let log = args.log_flows.then(FlowLog::stdout);
    let mut api = api;
    session
        .pipeline(
            move |out| match out {
                Output::Idle => {
                    if let Some(api) = &mut api {
                        api.flush();
                    }
                }
                Output::Record(Record::Flow(r)) if r.quiet => {}
                Output::Record(rec) => {
                    if let Some(log) = &log {
                        log.write(&rec);
                    }
                    if let Some(api) = &mut api {
                        api.publish(rec);
                    }
                }
            },
            shutdown,
        )
        .await?;
    tracing::info!("ring drained; stopping");
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!("metrics server: {e}"),
        Err(_) => tracing::warn!("metrics server did not stop within 5 s"),
        _ => {}
    }
    Ok(())
}

/// Once the stop begins, a thread of its own (not the runtime, which may be
/// the thing stuck) ends the process when the grace is over.
fn watchdog(mut shutdown: tokio::sync::watch::Receiver<bool>, grace: std::time::Duration) {
    tokio::spawn(async move {
        if shutdown.wait_for(|v| *v).await.is_err() {
            return;
        }
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                "stop took longer than --shutdown-grace {:?}; exiting with what is left unsent",
                started.elapsed()
            );
            std::process::exit(1);
        });
    });
}
