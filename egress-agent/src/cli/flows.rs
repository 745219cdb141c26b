//! `egress-agent flows`: the running agent's recent records.
use clap::Args;

use super::{
    args::{ApiArgs, FilterArgs},
    watch,
};
use crate::{
    api::{
        client,
        wire::{Message, Request},
    },
    records::Record,
    session::shutdown_on_signals,
};

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// After the history, keep printing new records as they come.
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn flows(args: FlowsArgs) -> anyhow::Result<u8> {
    let f = &args.filter.flows;
    if args.follow {
        let stream = client::open(&args.api.api_socket, &Request::Follow { history: true }).await?;
        let shutdown = shutdown_on_signals()?;
        return watch::follow(stream, &args.filter, args.filter.printer(false), shutdown, true)
            .await;
    }
    let lines = client::snapshot(&args.api.api_socket).await?;
    let mut matching: Vec<&Record> = lines
        .iter()
        .filter_map(|m| match m {
            Message::Record(r) if args.filter.shows(r) && f.matches_record(r) => Some(r),
            _ => None,
        })
        .collect();
    if let Some(n) = f.last {
        let skip = matching.len().saturating_sub(n);
        matching.drain(..skip);
    }
    let mut p = args.filter.printer(true);
    p.header();
    for r in &matching {
        p.record(r);
    }
    p.finish();
    Ok(0)
}
