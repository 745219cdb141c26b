//! `egress-agent run`: the daemon. The pipeline's records go to the sinks:
//! metrics (served over HTTP), the local API, and the export of records off
//! the node (stdout lines, native or ECS, and OTLP logs).
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{ArgAction, Args, ValueEnum};

use super::{args::SessionArgs, metrics_args::MetricsArgs, peer_args::PeerServeArgs};
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
    sinks::{
        export::{
            self, ExportOptions, Format,
            ecs::Observer,
            otlp::OtlpOptions,
            select::{OkPolicy, Selection},
        },
        http,
    },
};

/// Which records leave the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogRecords {
    None,
    /// Every failed, degraded or unknown flow and chain (bypasses included)
    /// and every failed DNS lookup, once per request; ok records per --log-ok.
    Audit,
    /// Every record.
    All,
}

/// The line format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// The records' own JSON (`"record":"flow"`, `chain`, `dns`).
    Json,
    /// Elastic Common Schema 9.4, with Cloud Logging's `severity` and `time`.
    Ecs,
}

/// What happens to ok records under `--log-records audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogOk {
    Off,
    /// One in --log-ok-sample, marked `sampled: N`.
    Sample,
    /// Counted per namespace, workload (or unit), destination class and hop;
    /// one `"record":"aggregate"` row per key every --log-ok-interval.
    Aggregate,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Records written as JSON lines on stdout (and sent to --otlp-endpoint):
    /// none; audit = every failure, degradation, bypass and failed DNS lookup
    /// (one line per request: a chain record carries its legs; failed lookups
    /// of one asker for one name within 0.3 s are one line with a `count`),
    /// ok records per --log-ok; all = every record.
    #[arg(long, value_enum, env = "EGRESS_LOG_RECORDS", default_value_t = LogRecords::None)]
    pub log_records: LogRecords,
    /// Every record as a JSON line on stdout: --log-records all, whatever
    /// --log-records says.
    #[arg(long)]
    pub log_flows: bool,
    /// Line format on stdout: json = the records' own JSON; ecs = Elastic
    /// Common Schema 9.4 (`@timestamp`, `event.*`, `source.*`,
    /// `destination.*`, `process.*`, `orchestrator.*`, `egress.*`) with
    /// Cloud Logging's `severity` and `time`. The last one given counts.
    #[arg(long, value_enum, env = "EGRESS_LOG_FORMAT", default_value_t = LogFormat::Json, overrides_with = "log_format")]
    pub log_format: LogFormat,
    /// Ok records under --log-records audit: off; sample = one in
    /// --log-ok-sample; aggregate = a count per namespace, workload, destination
    /// class and hop every --log-ok-interval. Failures are never sampled.
    #[arg(long, value_enum, default_value_t = LogOk::Off)]
    pub log_ok: LogOk,
    /// N of --log-ok sample: one ok record in N is written.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_ok_sample: u32,
    /// Interval of --log-ok aggregate (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    pub log_ok_interval: Duration,
    /// Write the exported records on stdout (false: only to --otlp-endpoint).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub log_stdout: bool,
    /// OpenTelemetry Collector OTLP/HTTP endpoint, e.g.
    /// http://otel-collector:4318 (`/v1/logs` is added unless the URL has a
    /// path): the records --log-records selects, as OTLP logs (protobuf, ECS
    /// fields as attributes), batched, retried with backoff; dropped and
    /// counted while it is down. Extra headers: OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long, env = "EGRESS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// CA certificates (PEM) trusted for an https:// endpoint, besides the system's.
    #[arg(long, env = "EGRESS_OTLP_CA")]
    pub otlp_ca: Option<PathBuf>,
    /// Time one batch may take to reach the collector, retries included.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub otlp_timeout: Duration,
    /// Records waiting for the collector at most; past it they are dropped, counted.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub otlp_queue: u64,
    /// Local API socket for `watch`, `flows` and `explain` (root-only).
    #[arg(long, env = "EGRESS_API_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
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
    pub api_write_timeout: Duration,
    /// Do not serve the local API.
    #[arg(long)]
    pub no_api: bool,
    /// Longest a stop may take after SIGTERM/SIGINT: the programs are
    /// detached, the rings drained, open flows and lookups sent as `unknown`
    /// records; past this the agent exits with status 1 whatever is left.
    /// Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "EGRESS_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s", value_name = "DURATION")]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub peer: PeerServeArgs,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// A positive duration (`--log-ok-interval`, `--otlp-timeout`).
fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err(format!("`{s}` is too short (at least 100ms)")),
        Err(e) => Err(e.to_string()),
    }
}

/// This node's name in exported records and in answers to peers: --node-name,
/// else the hostname.
fn node_name(args: &RunArgs) -> String {
    args.session.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
}

impl RunArgs {
    /// The export these flags ask for, as plain data.
    pub fn export_options(&self) -> anyhow::Result<ExportOptions> {
        let selection = match (self.log_flows, self.log_records) {
            (true, _) | (_, LogRecords::All) => Selection::All,
            (_, LogRecords::Audit) => Selection::Audit,
            (_, LogRecords::None) => Selection::None,
        };
        if self.otlp_endpoint.is_some() && selection == Selection::None {
            anyhow::bail!("--otlp-endpoint needs --log-records audit or all (what to send)");
        }
        let otlp = self.otlp_endpoint.as_ref().map(|e| OtlpOptions {
            endpoint: e.clone(),
            ca: self.otlp_ca.clone(),
            timeout: self.otlp_timeout,
            queue: self.otlp_queue as usize,
        });
        Ok(ExportOptions {
            selection,
            ok: match self.log_ok {
                LogOk::Off => OkPolicy::Off,
                LogOk::Sample => OkPolicy::Sample(self.log_ok_sample),
                LogOk::Aggregate => OkPolicy::Aggregate(self.log_ok_interval),
            },
            format: match self.log_format {
                LogFormat::Json => Format::Json,
                LogFormat::Ecs => Format::Ecs,
            },
            stdout: self.log_stdout,
            otlp,
            observer: Observer {
                hostname: node_name(self),
                version: env!("CARGO_PKG_VERSION").into(),
            },
        })
    }
}

/// `--api-write-timeout`: a duration of at least 10 ms and at most an hour.
fn parse_write_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("`{s}`: between 10ms and 1h"));
    }
    Ok(d)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Files and the ports first: a bad file or a port in use is a clear
    // error before anything is loaded; while a previous agent still holds
    // the metrics port (a restart, a rolling update), wait for it
    // (--metrics-bind-wait).
    let config = args.session.load_config()?;
    let files = args.metrics.load()?;
    let export_opts = args.export_options()?;
    if !args.no_api {
        api::socket::preflight(&args.api_socket)?;
    }
    // The peer API likewise: its files and its port before anything is loaded.
    let peer = match args.peer.peer_addr {
        Some(addr) => {
            if args.no_api {
                anyhow::bail!("--peer-addr answers from the local API's history: drop --no-api");
            }
            let tls = api::peer::tls::server_config(&args.peer.tls.files("--peer-addr")?)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on --peer-addr {addr}"))?;
            Some((l, tls))
        }
        None => None,
    };
    let shutdown = shutdown_on_signals()?;
    watchdog(shutdown.clone(), args.shutdown_grace);
    let listener = args.metrics.bind(shutdown.clone()).await?;
    let mut session =
        Session::start(args.session.options(config, export_opts.selection == Selection::All))
            .await?;
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
        let limits = ApiLimits {
            max_clients: usize::from(args.api_max_clients),
            write_timeout: args.api_write_timeout,
            ..ApiLimits::default()
        };
        let opts =
            ApiOptions { path: args.api_socket.clone(), history: args.api_history, status, limits };
        Some(api::server::start(opts, &session.metrics.registry, shutdown.clone())?)
    };
    if let (Some((listener, tls)), Some(api)) = (peer, &api) {
        api::peer::start(
            listener,
            tls,
            api.history(),
            node_name(&args),
            &session.metrics.registry,
            shutdown.clone(),
        )?;
        if args.api_history == 0 {
            tracing::warn!("--peer-addr with --api-history 0: peers will find no records");
        }
    }
    tracing::info!(addr = %args.metrics.metrics_addr, metrics = %served, peer = %args.peer.peer_addr.map_or_else(|| "off".into(), |a| a.to_string()), api = %if api.is_some() { args.api_socket.display().to_string() } else { "off".into() }, "egress-agent running; {}", session.attached_summary());
    let (mut export, exporting) = if export_opts.enabled() {
        let (h, x) =
            export::start(&export_opts, &session.metrics.registry, Box::new(std::io::stdout()))
                .context("starting the record export")?;
        (Some(h), Some(x))
    } else {
        (None, None)
    };
    let mut api = api;
    session
        .pipeline(
            move |out| match out {
                Output::Idle => {
                    if let Some(api) = &mut api {
                        api.flush();
                    }
                    if let Some(e) = &mut export {
                        e.flush();
                    }
                }
                Output::Record(Record::Flow(r)) if r.quiet => {}
                Output::Record(rec) => {
                    if let Some(e) = &mut export {
                        e.offer(&rec);
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
    if let Some(x) = exporting {
        x.finish(Duration::from_secs(5)).await;
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!("metrics server: {e}"),
        Err(_) => tracing::warn!("metrics server did not stop within 5 s"),
        _ => {}
    }
    Ok(())
}

/// Once the stop begins, a thread of its own (not the runtime, which may be
/// the thing stuck) ends the process when the grace is over.
fn watchdog(mut shutdown: tokio::sync::watch::Receiver<bool>, grace: Duration) {
    tokio::spawn(async move {
        if shutdown.wait_for(|v| *v).await.is_err() {
            return;
        }
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                "stop took longer than --shutdown-grace {:?}; exiting with what is left unsent",
                started.elapsed()
            );
            std::process::exit(1);
        });
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn export(args: &[&str]) -> anyhow::Result<ExportOptions> {
        let cli = Cli::try_parse_from([&["egress-agent", "run"], args].concat())?;
        let Command::Run(run) = cli.command else { panic!("run") };
        run.export_options()
    }

    #[test]
    fn export_flags_become_plain_options() {
        let o = export(&[]).expect("defaults");
        assert!(!o.enabled(), "nothing is exported unless asked");
        let o = export(&["--log-records", "audit", "--log-format", "ecs"]).expect("deployed");
        assert_eq!(
            (o.selection, o.format, o.ok, o.stdout),
            (Selection::Audit, Format::Ecs, OkPolicy::Off, true)
        );
        // The image test adds these to the DaemonSet's: the last format wins, --log-flows is all.
        let o = export(&[
            "--log-records",
            "audit",
            "--log-format",
            "ecs",
            "--log-flows",
            "--log-format",
            "json",
        ])
        .expect("override");
        assert_eq!((o.selection, o.format), (Selection::All, Format::Json));
        let o =
            export(&["--log-records", "audit", "--log-ok", "aggregate", "--log-ok-interval", "5m"])
                .expect("agg");
        assert_eq!(o.ok, OkPolicy::Aggregate(Duration::from_secs(300)));
        let o = export(&["--log-records", "audit", "--log-ok", "sample", "--log-ok-sample", "10"])
            .expect("sample");
        assert_eq!(o.ok, OkPolicy::Sample(10));
        let o = export(&[
            "--log-records",
            "all",
            "--otlp-endpoint",
            "https://c:4318",
            "--log-stdout",
            "false",
        ])
        .expect("otlp");
        let otlp = o.otlp.expect("otlp options");
        assert_eq!(
            (otlp.endpoint.as_str(), otlp.timeout, otlp.queue, o.stdout),
            ("https://c:4318", Duration::from_secs(10), 8192, false)
        );
        assert!(
            export(&["--otlp-endpoint", "http://c:4318"]).is_err(),
            "OTLP without records to send"
        );
        assert!(export(&["--log-ok-interval", "10ms"]).is_err());
        assert!(export(&["--log-ok-sample", "0"]).is_err());
    }
}
