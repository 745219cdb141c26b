//! `egress-agent watch`: live records on stdout, from the running agent's
//! API when there is one, else from kernel programs this process loads
//! itself (standalone mode).
use std::time::Duration;

use clap::Args;

use super::{
    args::{ApiArgs, FilterArgs, SessionArgs},
    print::Printer,
};
use crate::{
    api::{
        client::{self, ClientError},
        wire::{Control, Message, Request},
    },
    pipeline::Output,
    records::Record,
    session::{Session, shutdown_on_signals},
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Load the probes in this process even when an agent runs.
    #[arg(long)]
    pub standalone: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Kernel-side options, used in standalone mode.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// Turns true on SIGINT/SIGTERM or after `secs`.
fn stop_signal(secs: Option<u64>) -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    let shutdown = shutdown_on_signals()?;
    let Some(secs) = secs else { return Ok(shutdown) };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut sig = shutdown;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = sig.changed() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    let shutdown = stop_signal(args.duration)?;
    if !args.standalone {
        match client::open(&args.api.api_socket, &Request::Follow { history: false }).await {
            Ok(stream) => {
                let status = client::status(&args.api.api_socket).await.ok();
                eprintln!(
                    "egress-agent watch: following the agent at {} (pid {}, {})",
                    args.api.api_socket.display(),
                    status.as_ref().map_or_else(|| "?".into(), |s| s.pid.to_string()),
                    status.as_ref().map_or("?", |s| s.attached.as_str())
                );
                return follow(stream, &args.filter, args.filter.printer(false), shutdown, false)
                    .await;
            }
            Err(ClientError::Connect(c)) if c.is_absent() => eprintln!(
                "egress-agent watch: no agent at {}; standalone mode",
                args.api.api_socket.display()
            ),
            Err(e) => return Err(e.into()),
        }
    }
    let config = args.session.load_config()?;
    let mut session = Session::start(args.session.options(config, true)).await?;
    eprintln!(
        "egress-agent watch: standalone mode, probes loaded by this process; {}",
        session.attached_summary()
    );
    let mut printer = args.filter.printer(false);
    printer.header();
    let filter = args.filter.flows.clone();
    session
        .pipeline(
            move |out| match out {
                Output::Record(Record::Flow(r)) if r.quiet => {}
                Output::Record(r) if filter.matches_record(&r) => printer.record(&r),
                _ => {}
            },
            shutdown,
        )
        .await?;
    Ok(0)
}

/// Print a follow stream until it ends or `shutdown`. With `history`, the
/// records before `history_end` are the agent's history: `--last` applies
/// to them. Returns the exit code.
pub async fn follow(
    mut stream: client::RecordStream,
    filter: &FilterArgs,
    mut printer: Printer,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    history: bool,
) -> anyhow::Result<u8> {
    let f = &filter.flows;
    printer.header();
    // The history's last `--last` records wait for `history_end` (at most
    // that many are held); without `--last` they are printed as they come.
    let mut backlog: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    let mut live = !history || f.last.is_none();
    loop {
        let next = tokio::select! {
            r = stream.next() => r?,
            _ = shutdown.changed() => return Ok(0),
        };
        let Some(rec) = next else {
            eprintln!("egress-agent: the agent closed the stream (stopped?)");
            return Ok(1);
        };
        match rec {
            Message::Control(Control::HistoryEnd) => {
                for r in std::mem::take(&mut backlog) {
                    printer.record(&r);
                }
                live = true;
            }
            Message::Control(Control::Lost { count }) => eprintln!(
                "egress-agent: {count} records dropped by the agent for this client (reading too slowly)"
            ),
            Message::Record(r) if !f.matches_record(&r) => {}
            Message::Record(r) if !live => {
                if filter.shows(&r) {
                    backlog.push_back(r);
                    if backlog.len() > f.last.unwrap_or(0) {
                        backlog.pop_front();
                    }
                }
            }
            Message::Record(r) => printer.record(&r),
        }
        if printer.broken {
            return Ok(0);
        }
    }
}
