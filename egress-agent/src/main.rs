//! The `egress-agent` binary: parse the command line, set up logging, run
//! the command, and print an error with its whole chain (`{e:#}`) and the
//! exit code the command chose.
use std::process::ExitCode;

use clap::Parser as _;
use egress_agent::cli::{Cli, Command, check, explain, flows, run, watch};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match cli.command {
        Command::Run(a) => run::run(a).await.map(|()| 0),
        Command::Watch(a) => watch::watch(a).await,
        Command::Flows(a) => flows::flows(a).await,
        Command::Explain(a) => explain::run(a).await,
        Command::Check(a) => check::check(a).await.map(|ok| if ok { 0 } else { 1 }),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "egress-agent",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("egress-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
