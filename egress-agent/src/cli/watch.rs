//! `egress-agent watch`: live flow records on stdout.
use std::{io::Write as _, time::Duration};

use clap::Args;

use crate::{
    cli::{FilterArgs, ProbeArgs},
    output::{Format, TABLE_HEADER, chain_line, json_line, table_row},
    pipeline::Output,
    session::{Session, shutdown_on_signals},
};

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print stitched chain records (one per request through the proxy
    /// chain, naming the hop that broke) instead of flow records.
    #[arg(long)]
    pub chains: bool,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long)]
    pub duration: Option<u64>,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut session = Session::start(&args.probe).await?;
    let mut shutdown = shutdown_on_signals()?;
    if let Some(secs) = args.duration {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut sig = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = sig.changed() => {}
            }
            let _ = tx.send(true);
        });
        shutdown = rx;
    }
    eprintln!("egress-agent watch: standalone mode, probes loaded by this process; {}", session.attached_summary());
    let out = std::io::stdout();
    let chains = args.chains;
    if args.filter.output == Format::Table && !chains {
        let mut o = out.lock();
        let _ = writeln!(o, "{TABLE_HEADER}");
        let _ = o.flush();
    }
    let filter = args.filter.flows.clone();
    let format = args.filter.output;
    let mut broken = false;
    session
        .pipeline(
            move |rec| {
                let line = match (rec, chains, format) {
                    (Output::Flow(r), false, _) if broken || r.quiet || !filter.matches(r) => return,
                    (Output::Flow(r), false, Format::Table) => table_row(r),
                    (Output::Flow(r), false, Format::Json) => json_line(r),
                    (Output::Chain(c), true, Format::Table) => chain_line(c),
                    (Output::Chain(c), true, Format::Json) => json_line(c),
                    _ => return,
                };
                if broken {
                    return;
                }
                let mut o = out.lock();
                // A closed pipe (e.g. `| head`) ends output, not the process.
                broken = writeln!(o, "{line}").and_then(|_| o.flush()).is_err();
            },
            shutdown,
        )
        .await
}
