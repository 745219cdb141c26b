//! `egress-agent run`: the daemon.
use std::{io::Write as _, net::SocketAddr};

use anyhow::Context as _;
use clap::Args;

use crate::{
    cli::ProbeArgs,
    output::json_line,
    pipeline::Output,
    server,
    session::{Session, shutdown_on_signals},
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
    #[command(flatten)]
    pub probe: ProbeArgs,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Bind first: a port in use is a clear error before anything is loaded.
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let mut session = Session::start(&args.probe).await?;
    let shutdown = shutdown_on_signals()?;
    let server = tokio::spawn(server::serve(listener, session.metrics.clone(), shutdown.clone()));
    tracing::info!(addr = %args.metrics_addr, "egress-agent running; {}", session.attached_summary());
    let log = args.log_flows;
    let out = std::io::stdout();
    session
        .pipeline(
            move |rec| {
                let line = match rec {
                    Output::Flow(r) if log && !r.quiet => json_line(r),
                    Output::Chain(c) if log => json_line(c),
                    Output::Dns(d) if log => json_line(d),
                    _ => return,
                };
                let mut o = out.lock();
                let _ = writeln!(o, "{line}").and_then(|_| o.flush());
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
