//! `egress-agent run`: the daemon. The pipeline's records go to the sinks:
//! metrics (served over HTTP), the local API, the JSON flow log.
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use super::args::SessionArgs;
use crate::{
    api::{
        self,
        server::{ApiLimits, ApiOptions},
        wire::Status,
    },
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
    /// Clients of the local API at once; more are told so and closed
    /// (counted in egress_api_clients_dropped_total{reason="too_many_clients"}).
    #[arg(long, default_value_t = api::server::DEFAULT_MAX_CLIENTS, value_parser = clap::value_parser!(u16).range(1..))]
    pub api_max_clients: u16,
    /// An API client that does not take a write within this time is
    /// dropped, its undelivered records counted (egress_api_records_dropped_total{reason="slow_client"}).
    #[arg(long, default_value = "5s", value_parser = parse_write_timeout, value_name = "DURATION")]
    pub api_write_timeout: std::time::Duration,
    /// Do not serve the local API.
    #[arg(long)]
    pub no_api: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `--api-write-timeout`: a duration of at least 10 ms and at most an hour.
fn parse_write_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(10) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("`{s}`: between 10ms and 1h"));
    }
    Ok(d)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Bind first: a port in use is a clear error before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    if !args.no_api {
        api::socket::preflight(&args.api_socket)?;
    }
    let config = args.session.load_config()?;
    let mut session = Session::start(args.session.options(config)).await?;
    let shutdown = shutdown_on_signals()?;
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
        let limits = ApiLimits {
            max_clients: usize::from(args.api_max_clients),
            write_timeout: args.api_write_timeout,
            ..ApiLimits::default()
        };
        let opts =
            ApiOptions { path: args.api_socket.clone(), history: args.api_history, status, limits };
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
