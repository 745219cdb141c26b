//! `egress-agent run`: the daemon. The pipeline's records go to the sinks:
//! metrics (served over HTTP), the local API, the JSON flow log.
use clap::Args;

use super::{args::SessionArgs, metrics_args::MetricsArgs};
use crate::{
    api::{self, server::ApiOptions, wire::Status},
    pipeline::Output,
    records::{Record, rfc3339},
    session::{Session, shutdown_on_signals},
    sinks::{flow_log::FlowLog, http},
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
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
    #[command(flatten)]
    pub session: SessionArgs,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Files and the port first: a bad file or a port in use is a clear
    // error before anything is loaded; while a previous agent still holds
    // the port (a restart, a rolling update), wait for it (--metrics-bind-wait).
    let config = args.session.load_config()?;
    let files = args.metrics.load()?;
    let shutdown = shutdown_on_signals()?;
    let listener = args.metrics.bind(shutdown.clone()).await?;
    let mut session = Session::start(args.session.options(config)).await?;
    let http_server = args.metrics.server(files, session.metrics.clone())?;
    let served = http_server.describe();
    let server = tokio::spawn(http::serve(listener, http_server, shutdown.clone()));
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
    tracing::info!(addr = %args.metrics.metrics_addr, metrics = %served, api = %if api.is_some() { args.api_socket.display().to_string() } else { "off".into() }, "egress-agent running; {}", session.attached_summary());
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
