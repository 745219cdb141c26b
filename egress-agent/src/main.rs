use std::process::ExitCode;

use clap::Parser as _;
use egress_agent::cli::{Cli, Command, check, run, watch};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let res = match cli.command {
        Command::Run(a) => run::run(a).await.map(|()| true),
        Command::Watch(a) => watch::watch(a).await.map(|()| true),
        Command::Check(a) => check::check(a),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("egress-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
