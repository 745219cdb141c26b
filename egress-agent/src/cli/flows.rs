//! `egress-agent flows`: the running agent's recent records.
use clap::Args;

use crate::{
    api::{Record, Request, client},
    cli::{ApiArgs, FilterArgs, print::Kind, watch},
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
        let shutdown = crate::session::shutdown_on_signals()?;
        return watch::follow(stream, &args.filter, args.filter.printer(false), shutdown, true).await;
    }
    let records = client::snapshot(&args.api.api_socket).await?;
    let mut matching: Vec<&Record> = records
        .iter()
        .filter(|r| match r {
            Record::Flow(x) => args.filter.kind() == Kind::Flows && f.matches(x),
            Record::Chain(c) => args.filter.kind() == Kind::Chains && f.matches_chain(c),
            Record::Dns(d) => args.filter.kind() == Kind::Dns && f.matches_dns(d),
            _ => false,
        })
        .collect();
    if let Some(n) = f.last {
        let skip = matching.len().saturating_sub(n);
        matching.drain(..skip);
    }
    let mut p = args.filter.printer(true);
    p.header();
    for r in &matching {
        watch::show(&mut p, r);
    }
    p.finish();
    Ok(0)
}
