//! The command line, the binary's edge: clap types, one module per command
//! (`run`, `watch`, `flows`, `explain`, `check`, `completions`), and how
//! records are filtered and rendered for people. Commands build plain
//! [`SessionOptions`](crate::session::SessionOptions) from their flags
//! ([`args`]); errors are `anyhow` from here up.
pub mod args;
pub mod assemble;
pub mod attempt;
pub mod check;
pub mod explain;
pub mod filter;
pub mod flows;
pub mod metrics_args;
pub mod peer_args;
pub mod print;
pub mod run;
pub mod table;
pub mod watch;

use clap::{Parser, Subcommand};

pub use self::args::EXIT_NO_DATA;

/// egress-observer node agent: which process tried to reach what, and where it broke.
///
/// Watches every egress TCP connection on this host with eBPF tracepoints and
/// gives each one a verdict: ok, failed (refused, timeout, unreachable, reset,
/// proxy_denied, proxy_upstream_error, bypass, dns_failed, policy_denied) or
/// degraded (retransmits),
/// naming the proxy hop that broke.
#[derive(Debug, Parser)]
#[command(
    name = "egress-agent",
    version,
    propagate_version = true,
    after_help = "Exit codes: 0 ok; 1 error; 2 bad usage; 3 no recent records for what was asked (flows, explain)."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `egress_agent=debug`.
    #[arg(long, global = true, env = "EGRESS_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start and matched once: boxing the arguments buys nothing"
)]
pub enum Command {
    /// Run the agent as a daemon: metrics on --metrics-addr, until SIGTERM/SIGINT.
    ///
    /// Example: egress-agent run --metrics-addr 0.0.0.0:9464
    Run(run::RunArgs),
    /// Print egress connection outcomes live: from the running agent's API
    /// socket, or, when no agent runs (a plain VM), by loading the probes
    /// itself (standalone mode). Says on stderr which mode it is in.
    ///
    /// Examples:
    ///   egress-agent watch
    ///   egress-agent watch --verdict failed -o jsonl
    ///   egress-agent watch --chains -n payments
    ///   egress-agent watch --standalone --duration 60
    Watch(watch::WatchArgs),
    /// Print the running agent's recent records (its in-memory history).
    ///
    /// Examples:
    ///   egress-agent flows --verdict failed --since 10m
    ///   egress-agent flows --hop gce-proxy --reason proxy_denied -o wide
    ///   egress-agent flows --dst 203.0.113.0/24 --port 443 --last 20 -o json
    ///   egress-agent flows --chains -f
    Flows(flows::FlowsArgs),
    /// Explain the recent attempts to reach HOST[:PORT], hop by hop, with a
    /// one-line conclusion. Exit code 3 when there are none.
    ///
    /// Examples:
    ///   egress-agent explain login.microsoftonline.com:443
    ///   egress-agent explain 203.0.113.10 --since 1h -o json
    ///   egress-agent explain login.microsoftonline.com:443 --assemble   # every hop's own agent joined
    Explain(explain::ExplainArgs),
    /// Report what this kernel supports and whether every program attaches.
    ///
    /// Exits 1 when the minimum set (inet_sock_set_state + ring buffer) cannot work.
    Check(check::CheckArgs),
    /// Print a shell completion script.
    ///
    /// Example: egress-agent completions bash > /etc/bash_completion.d/egress-agent
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{args::parse_ring_bytes, *};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn private_ranges_parse() {
        let cli = Cli::try_parse_from([
            "egress-agent",
            "watch",
            "--private-ranges",
            "10.0.0.0/8,fd00::/8",
        ])
        .expect("parse");
        let Command::Watch(w) = cli.command else { panic!("watch") };
        assert_eq!(w.session.private_ranges.len(), 2);
        assert!(
            Cli::try_parse_from(["egress-agent", "watch", "--private-ranges", "10.0.0.0/99"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["egress-agent", "watch"]).expect("parse");
        let Command::Watch(w) = cli.command else { panic!("watch") };
        assert_eq!(w.session.private_ranges.len(), 7);
    }

    #[test]
    fn completions_cover_every_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "egress-agent",
            &mut out,
        );
        let script = String::from_utf8(out).expect("utf8");
        for w in ["watch", "flows", "explain", "check", "--verdict", "--api-socket", "--since"] {
            assert!(script.contains(w), "bash completion lacks {w}");
        }
    }

    #[test]
    fn unknown_filter_values_list_the_accepted_ones() {
        let e = Cli::try_parse_from(["egress-agent", "flows", "--reason", "bogus"])
            .expect_err("bogus reason");
        let msg = e.to_string();
        assert!(msg.contains("proxy_denied") && msg.contains("bypass"), "{msg}");
        assert!(
            Cli::try_parse_from([
                "egress-agent",
                "flows",
                "--verdict",
                "failed",
                "--dst",
                "10.0.0.0/8",
                "--since",
                "5m",
                "-o",
                "wide"
            ])
            .is_ok()
        );
    }

    #[test]
    fn ring_bytes_validated() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("2048").is_err());
        assert!(parse_ring_bytes("x").is_err());
    }
}
