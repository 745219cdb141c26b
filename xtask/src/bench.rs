//! `cargo xtask bench`: the connect storm of issue 17 (no tracing / agent /
//! bpftrace, rotated in every round) with CPU per connection split into the
//! kernel programs and the agent's user space, events lost, the agent at a
//! realistic node load, memory with many tracked sockets, and the pipeline
//! benchmark; prints the table and appends a row to BENCHMARKS.md.
use std::{fmt::Write as _, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use egress_tests::bench::{self, BenchOptions, Mode, Report, report::ROW_HEADER};

use crate::{cargo, root, setup};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds; each runs the storm once per mode, order rotated.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per storm.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connecting threads in the storm.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds of the extra storm after each traced one, with the kernel's
    /// per-program run-time accounting on (0 skips).
    #[arg(long, default_value_t = 2)]
    cost_seconds: u64,
    /// Seconds of the realistic node load (0 skips).
    #[arg(long, default_value_t = 10)]
    load_seconds: u64,
    /// Connects per second of the realistic load, spread over the cgroups.
    #[arg(long, default_value_t = 2000.0)]
    load_rate: f64,
    /// Pod cgroups (one worker process each) of the realistic load.
    #[arg(long, default_value_t = 50)]
    load_cgroups: usize,
    /// Tracked connections held open at once for the memory bound (0 skips).
    #[arg(long, default_value_t = 100_000)]
    hold: usize,
    /// Flows in the synthesized stream of the pipeline benchmark (0 skips).
    #[arg(long, default_value_t = 200_000)]
    pipeline_flows: u64,
    /// Storm modes, comma-separated (one alone is for profiling it).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::None, Mode::Agent, Mode::Bpftrace])]
    modes: Vec<Mode>,
    /// Nice value of the measuring (storms, agents, bpftrace, workers: all
    /// inherit it) so that other builds on a shared machine take less of
    /// the CPUs from every mode alike; builds run at the caller's.
    #[arg(long, default_value_t = -10, allow_hyphen_values = true)]
    nice: i32,
    /// Print the table only; do not append a row to BENCHMARKS.md.
    #[arg(long)]
    no_record: bool,
    /// Extra argument for the agent (repeatable), e.g. `--agent-arg=--no-api`
    /// to measure what a feature costs.
    #[arg(long, allow_hyphen_values = true)]
    agent_arg: Vec<String>,
    /// Argument of a variant agent (repeatable): adds the mode "agent + alt
    /// args" to every round, so a feature's cost is measured A/B in one run,
    /// e.g. `--alt-agent-arg=--connect-intent=true`.
    #[arg(long, allow_hyphen_values = true)]
    alt_agent_arg: Vec<String>,
    /// Another build of the agent for the variant mode (e.g. a copy of
    /// target/release/egress-agent from before a change): A/B of two builds.
    #[arg(long)]
    alt_agent_bin: Option<PathBuf>,
}

pub(crate) fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1048576.0);
    format!("{} × {cpu}, {mem_gib:.0} GiB", sh("nproc", &[]))
}

/// The pipeline benchmark (a `harness = false` bench of egress-agent):
/// events per second per core, one value per repetition.
fn pipeline(flows: u64) -> anyhow::Result<Vec<f64>> {
    let flows = flows.to_string();
    let args = ["bench", "--package", "egress-agent", "--bench", "pipeline", "--", &flows, "5"];
    println!("+ cargo {}", args.join(" "));
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root())
        .env("PATH", setup::tool_path())
        .output()
        .context("running cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pipeline benchmark failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let rates: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("PIPELINE "))
        .inspect(|l| println!("  {l}"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("events_per_core_s="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    if rates.is_empty() {
        bail!("pipeline benchmark printed no result:\n{text}");
    }
    Ok(rates)
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    cargo(&["build", "--release", "--package", "egress-agent"])?;
    let pipeline = if a.pipeline_flows > 0 { pipeline(a.pipeline_flows)? } else { Vec::new() };
    let agent_bin = root().join("target/release/egress-agent");
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("EGRESS_AGENT_BIN", &agent_bin) };
    let config = root().join("deploy/kubernetes/base/config.yaml");
    // The deployed configuration (chain → proxy ports → cgroup_skb hooks),
    // cgroup attribution on; no API server here, so Kubernetes metadata off.
    // The cgroup v2 root is the agent's own choice (mountinfo), as deployed:
    // on a hybrid host /sys/fs/cgroup is a tmpfs, and naming it would leave
    // the cgroup programs unattached and out of the measurement.
    let mut agent_args =
        ["--config", &config.to_string_lossy(), "--kube", "false"].map(String::from).to_vec();
    agent_args.extend(a.agent_arg.iter().cloned());
    // SAFETY: no pointers; on Linux this sets the calling thread's nice
    // value, which the threads and processes it starts from now inherit.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, a.nice) } != 0 {
        println!("(nice {} not set: {})", a.nice, std::io::Error::last_os_error());
    }
    let mut modes = a.modes.clone();
    if let Some(b) = &a.alt_agent_bin {
        anyhow::ensure!(b.is_file(), "--alt-agent-bin {}: no such file", b.display());
    }
    if (!a.alt_agent_arg.is_empty() || a.alt_agent_bin.is_some())
        && !modes.contains(&Mode::AgentAlt)
    {
        modes.push(Mode::AgentAlt);
    }
    let opts = BenchOptions {
        rounds: a.rounds,
        storm: Duration::from_secs(a.seconds),
        threads: a.threads,
        cost_window: Duration::from_secs(a.cost_seconds),
        hold: a.hold,
        agent_args: agent_args.clone(),
        alt_agent_args: a.alt_agent_arg.clone(),
        alt_agent_bin: a.alt_agent_bin.clone(),
        modes,
    };
    println!(
        "== connect storm: {} rounds × {:?}, {} s each (+ {} s with bpf_stats for a tracer), {} connecting threads + 1 accepting",
        a.rounds, opts.modes, a.seconds, a.cost_seconds, a.threads
    );
    let trials = bench::storms(&opts, |t| {
        let mut extra = format!(
            " storm {:.2} µs/conn ({:.1} % user, {:.2} cores)",
            t.storm.cpu_us_per_connect(),
            100.0 * t.storm.user_share(),
            t.storm.busy_cores()
        );
        if let Some(k) = &t.kernel {
            let _ = write!(extra, "; programs {:.2} µs/conn", k.us_per_connect());
        }
        if let (Some(s), Some(us)) = (t.agent, t.agent_us_per_connect()) {
            let _ = write!(
                extra,
                "; agent {us:.2} µs/conn, events produced {} delivered {} lost {}",
                s.produced,
                s.delivered,
                s.lost_ring + s.lost_other
            );
        }
        println!("  round {} {:<18} {:>9.0} connects/s{extra}", t.round, t.mode.name(), t.rate);
    })?;
    let exe = std::env::current_exe().context("own executable")?;
    let load = if a.load_seconds > 0 {
        println!(
            "== realistic node load: {} connects/s over {} cgroups for {} s",
            a.load_rate, a.load_cgroups, a.load_seconds
        );
        let lo = bench::load::LoadOptions {
            rate: a.load_rate,
            cgroups: a.load_cgroups,
            duration: Duration::from_secs(a.load_seconds),
        };
        let exe = exe.to_string_lossy().into_owned();
        let worker = |i: usize, rate: f64, secs: f64| {
            [
                exe.clone(),
                "bench-load-worker".into(),
                i.to_string(),
                rate.to_string(),
                secs.to_string(),
            ]
            .to_vec()
        };
        Some(bench::realistic_load(&opts, &lo, &worker)?)
    } else {
        None
    };
    let hold = if a.hold > 0 {
        println!("== {} tracked connections held open", a.hold);
        let worker = |addrs: &[std::net::SocketAddr], n: usize| {
            let mut c = Command::new(&exe);
            c.arg("bench-hold-worker").arg(n.to_string()).args(addrs.iter().map(|a| a.to_string()));
            c
        };
        Some(bench::hold(&opts, &worker)?)
    } else {
        None
    };
    let mut r = Report::new(&trials, hold, load, &pipeline);
    r.machine = machine();
    r.kernel = sh("uname", &["-r"]);
    let dirty = if sh(
        "git",
        &["-C", &root().to_string_lossy(), "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty()
    {
        ""
    } else {
        "+dirty"
    };
    r.commit = format!(
        "{}{dirty}",
        sh("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"])
    );
    r.date = sh("date", &["-u", "+%Y-%m-%d %H:%M"]);
    r.command = format!(
        "cargo xtask bench --rounds {} --seconds {} --threads {} --cost-seconds {} --load-seconds {} --load-rate {} --load-cgroups {} --hold {} --nice {} (agent: egress-agent run {}){}",
        a.rounds,
        a.seconds,
        a.threads,
        a.cost_seconds,
        a.load_seconds,
        a.load_rate,
        a.load_cgroups,
        a.hold,
        a.nice,
        agent_args.join(" ").replace(&root().to_string_lossy().to_string(), "."),
        match (&a.alt_agent_bin, a.alt_agent_arg.is_empty()) {
            (None, true) => String::new(),
            (bin, _) => format!(
                " (alt:{}{})",
                bin.as_ref().map_or(String::new(), |b| format!(" binary {}", b.display())),
                if a.alt_agent_arg.is_empty() {
                    String::new()
                } else {
                    format!(" args {}", a.alt_agent_arg.join(" "))
                }
            ),
        }
    );
    println!();
    print!("{}", r.table());
    println!("(bench took {:.0} s)", started.elapsed().as_secs_f64());
    if !a.no_record {
        append_row(&r)?;
    }
    Ok(())
}

/// Append this run's row under the results table of BENCHMARKS.md.
fn append_row(r: &Report) -> anyhow::Result<()> {
    let path: PathBuf = root().join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.contains(ROW_HEADER.lines().next().unwrap_or_default()) {
        let _ = write!(text, "\n## Results: the storm of issue 17\n\n{ROW_HEADER}\n");
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(text, "{}", r.row());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("row appended to {}", path.display());
    Ok(())
}
