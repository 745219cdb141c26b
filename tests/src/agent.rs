//! The real `egress-agent` binary as a child process.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, channel},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Path of the agent binary: $EGRESS_AGENT_BIN, else the workspace's debug build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("EGRESS_AGENT_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/egress-agent")
    })
}

/// The API socket a `Run` agent on `metrics` gets by default (per agent, so
/// agents of parallel tests never share one).
pub fn api_socket_for(metrics: &SocketAddr) -> PathBuf {
    std::env::temp_dir().join(format!("eo-api-{}-{}.sock", std::process::id(), metrics.port()))
}

#[derive(Debug, Clone)]
pub enum AgentMode {
    /// `watch -o json` + extra args.
    Watch(Vec<String>),
    /// `run --metrics-addr ADDR --log-flows` + extra args.
    Run { metrics: SocketAddr, extra: Vec<String> },
    /// `run --metrics-addr ADDR` + extra args, without the flow log: the
    /// daemon as deployed (benchmarks).
    Daemon { metrics: SocketAddr, extra: Vec<String> },
}

pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    /// One message when "programs attached" shows on stderr.
    ready: Receiver<()>,
    pub records: Vec<Value>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub metrics_addr: Option<SocketAddr>,
    /// Set when the agent serves its metrics port over TLS with client
    /// certificates of these (`--metrics-tls-*`): scrapes then present the
    /// client certificate.
    pub scrape_tls: Option<crate::scrape::Certs>,
}

impl Agent {
    /// Start the agent and wait until its programs are attached.
    pub fn start(mode: AgentMode) -> anyhow::Result<Self> {
        Self::start_wrapped(&[], mode)
    }

    /// Like [`Agent::start`], the agent run through `wrapper` (a program and
    /// its arguments that exec the agent, e.g. `setpriv … --` or `nsenter …`).
    pub fn start_wrapped(wrapper: &[String], mode: AgentMode) -> anyhow::Result<Self> {
        let (c, metrics_addr) = Self::command(wrapper, mode)?;
        Self::start_command(c, metrics_addr)
    }

    /// The agent started but not waited for (it may wait for its port, say):
    /// [`Agent::wait_ready`] when it should be.
    pub fn spawn(mode: AgentMode) -> anyhow::Result<Self> {
        let (c, metrics_addr) = Self::command(&[], mode)?;
        Self::spawn_command(c, metrics_addr)
    }

    /// The command line of `mode`, through `wrapper`, and its metrics address.
    fn command(
        wrapper: &[String],
        mode: AgentMode,
    ) -> anyhow::Result<(Command, Option<SocketAddr>)> {
        let bin = agent_bin();
        if !bin.exists() {
            bail!("{} not built: run `cargo xtask build` or set EGRESS_AGENT_BIN", bin.display());
        }
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let metrics_addr = match &mode {
            AgentMode::Watch(extra) => {
                c.args(["watch", "--standalone", "-o", "jsonl"]).args(extra);
                None
            }
            AgentMode::Run { metrics, extra } => {
                c.args(["run", "--log-flows", "--metrics-addr", &metrics.to_string()]);
                // Each agent its own API socket unless the test names one.
                if !extra.iter().any(|a| a == "--api-socket" || a == "--no-api") {
                    c.args(["--api-socket", &api_socket_for(metrics).display().to_string()]);
                }
                c.args(extra);
                Some(*metrics)
            }
            AgentMode::Daemon { metrics, extra } => {
                c.args(["run", "--metrics-addr", &metrics.to_string()]).args(extra);
                Some(*metrics)
            }
        };
        Ok((c, metrics_addr))
    }

    /// An agent started by `c` as it is (e.g. `podman run … IMAGE run
    /// --log-flows …`): its stdout lines are records, "programs attached" on
    /// its stderr means ready, `metrics_addr` is where its /metrics is.
    pub fn start_command(c: Command, metrics_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let mut agent = Self::spawn_command(c, metrics_addr)?;
        // Verifying the programs takes tens of seconds on old kernels under
        // TCG (the VM matrix raises the limit with EGRESS_AGENT_READY_SECS).
        let ready = Duration::from_secs(
            std::env::var("EGRESS_AGENT_READY_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(30),
        );
        if let Err(e) = agent.wait_ready(ready) {
            let _ = agent.child.kill();
            return Err(e);
        }
        Ok(agent)
    }

    /// Spawn `c` with its output collected; not waited for.
    pub fn spawn_command(mut c: Command, metrics_addr: Option<SocketAddr>) -> anyhow::Result<Self> {
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {c:?}"))?;
        let (tx, lines) = channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = channel();
        let stderr = child.stderr.take().context("stderr")?;
        let store = stderr_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("programs attached") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut s) = store.lock() {
                    s.push(line);
                }
            }
        });
        Ok(Self {
            child,
            lines,
            ready: ready_rx,
            records: Vec::new(),
            stderr: stderr_lines,
            metrics_addr,
            scrape_tls: None,
        })
    }

    /// Wait until its programs are attached ("programs attached" on stderr).
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        if self.ready.recv_timeout(within).is_err() {
            bail!("agent not ready within {within:?}; stderr:\n{}", self.stderr_text());
        }
        Ok(())
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// PID of the agent process (of the wrapper, which execs the agent in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.join("\n")).unwrap_or_default()
    }

    /// Collect records that arrived so far.
    pub fn poll(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                self.records.push(v);
            }
        }
    }

    /// Wait until a record matches `pred`; returns it.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.wait_for_after(0, timeout, pred)
    }

    /// [`Agent::wait_for`] among the records from index `from` on (those
    /// that came after a point the caller noted with `records.len()`).
    pub fn wait_for_after(
        &mut self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.records.iter().skip(from).find(|v| pred(v)) {
                return Ok(v.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no matching record within {timeout:?}; records:\n{}\nstderr:\n{}",
                    self.records.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n"),
                    self.stderr_text()
                );
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(l) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        self.records.push(v);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("agent exited; stderr:\n{}", self.stderr_text())
                }
            }
        }
    }

    /// One line on the agent's state, for a row or test that got no record:
    /// alive or not, events produced and delivered, the last stderr line.
    pub fn health(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(Some(st)) => format!("agent exited ({st})"),
            Ok(None) => "agent alive".to_string(),
            Err(e) => format!("agent state unknown ({e})"),
        };
        let events = match self.http_get("/metrics") {
            Ok(t) => format!(
                "events produced {} delivered {} lost {} (decode errors {}, kernel read \
                 errors {}, kernel flows tracked {}, flows held {}, program runs the kernel \
                 skipped {})",
                metric_sum(&t, "egress_events_produced_total", &[]),
                metric_sum(&t, "egress_events_delivered_total", &[]),
                metric_sum(&t, "egress_events_lost_total", &[]),
                metric_sum(&t, "egress_decode_errors_total", &[]),
                metric_sum(&t, "egress_kernel_read_errors_total", &[]),
                metric_sum(&t, "egress_kernel_flows_tracked", &[]),
                metric_sum(&t, "egress_flows_tracked", &[]),
                metric_sum(&t, "egress_program_runs_skipped_total", &[])
            ),
            Err(e) => format!("no scrape ({e:#})"),
        };
        let last = self.stderr.lock().ok().and_then(|s| s.last().cloned()).unwrap_or_default();
        format!("{state}, {events}; last stderr: {last}")
    }

    /// A /metrics scrape taken once the books balance: every event the
    /// kernel produced was delivered or counted lost (the ring may still
    /// hold a few right after traffic). Waits at most `within`, then returns
    /// the last scrape whatever it says (the caller's assertions tell).
    pub fn settled_metrics(&self, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let text = self.http_get("/metrics")?;
            let produced = metric_sum(&text, "egress_events_produced_total", &[]);
            let accounted = metric_sum(&text, "egress_events_delivered_total", &[])
                + metric_sum(&text, "egress_events_lost_total", &[("stage", "ring")]);
            if produced <= accounted || Instant::now() > deadline {
                return Ok(text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics (or another path) from a `run` agent.
    pub fn http_get(&self, path: &str) -> anyhow::Result<String> {
        let addr = self.metrics_addr.context("agent not started with run")?;
        match &self.scrape_tls {
            Some(certs) => crate::scrape::get_with_cert(certs, addr, path),
            None => http_get(addr, path),
        }
    }

    /// SIGTERM, wait up to `within`, then collect every record the agent
    /// wrote on its way out. Returns the exit status success and how long
    /// the stop took.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<(bool, Duration)> {
        let t0 = Instant::now();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let ok = loop {
            if let Some(st) = self.child.try_wait()? {
                break st.success();
            }
            if t0.elapsed() > within {
                let _ = self.child.kill();
                bail!("agent did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t0.elapsed();
        // stdout is closed: the reader thread ends once it has passed on all.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                self.records.push(v);
            }
        }
        Ok((ok, took))
    }

    /// SIGTERM and wait; returns the exit status success.
    pub fn stop(mut self) -> anyhow::Result<bool> {
        self.terminate(Duration::from_secs(15)).map(|(ok, _)| ok)
    }

    /// Like [`Agent::stop`], then every line the agent wrote up to its exit
    /// (what it drains on SIGTERM included) is in `records`.
    pub fn stop_keeping_records(&mut self) -> anyhow::Result<bool> {
        self.terminate(Duration::from_secs(15)).map(|(ok, _)| ok)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Minimal HTTP/1.0 GET returning the body (loopback only).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// Sum of every sample of `name` whose labels contain all of `labels` (k="v").
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = series.split_once('{').map_or((series, ""), |(n, rest)| (n, rest));
            (n == name && labels.iter().all(|(k, v)| lbl.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether this kernel takes kprobes (the kprobe PMU or tracefs `kprobe_events`).
pub fn kernel_has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
}

/// The `egress_program_attached` samples of programs this kernel can take:
/// without kprobes the optional `conntrack_confirm` kprobe can never attach,
/// and a program the agent reports on standby (`egress_program_standby` 1:
/// another hook does its job here) is not meant to, so tests that expect
/// every program attached (or a capability to detach one) leave them out.
pub fn attachable_program_lines(text: &str) -> Vec<&str> {
    let kprobes = kernel_has_kprobes();
    let standby: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("egress_program_standby{"))
        .filter(|l| l.ends_with(" 1"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    text.lines()
        .filter(|l| l.starts_with("egress_program_attached{"))
        .filter(|l| kprobes || !l.contains("program=\"conntrack_confirm\""))
        .filter(|l| !l.split('"').nth(1).is_some_and(|p| standby.contains(&p)))
        .collect()
}

/// A free loopback port for a metrics listener.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sum_matches_labels() {
        let t = "# HELP x\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\nxy{a=\"1\"} 100\nx 5\n";
        assert_eq!(super::metric_sum(t, "x", &[("a", "1")]), 7.0);
        assert_eq!(super::metric_sum(t, "x", &[("b", "3")]), 4.0);
        let m = "egress_program_attached{program=\"a\"} 1\negress_program_attached{program=\"conntrack_confirm\"} 0\negress_program_attached{program=\"s\"} 0\negress_program_standby{program=\"s\"} 1\negress_program_standby{program=\"a\"} 0\nother 1\n";
        let lines = super::attachable_program_lines(m);
        assert_eq!(lines.len(), if super::kernel_has_kprobes() { 2 } else { 1 }, "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("\"s\"")), "{lines:?}");
        assert_eq!(super::metric_sum(t, "x", &[]), 12.0);
    }
}
