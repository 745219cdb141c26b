//! Back-pressure never reaches the ring: the real agent with its stdout on a
//! pipe nobody reads, and with an OTLP collector (a real OTLP/HTTP receiver,
//! tests/fixtures/otlp_receiver.py, decoding the protobuf with PyPI's
//! opentelemetry-proto) that is down for 10 s and then back, and over TLS.
//! Records that cannot go out are dropped and counted
//! (`egress_export_dropped_total{sink}`); the agent observes on, loses
//! nothing from its ring and stops on SIGTERM.
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{agent_bin, api_socket_for, free_port, http_get, metric_sum},
    require_root,
};
use serde_json::{Map, Value};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `n` refused connects from this process (each one a failed flow record).
fn refuse(port: u16, n: usize) {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..n {
        assert!(TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err(), "{to} answered");
    }
}

/// The Python OTLP/HTTP receiver: every log record it decoded, as JSON.
struct Receiver {
    child: Child,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(port: u16, tls: Option<(&PathBuf, &PathBuf)>, got: Arc<Mutex<Vec<Value>>>) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/otlp_receiver.py");
        let mut c = Command::new("python3");
        c.arg(script).arg(port.to_string());
        if let Some((cert, key)) = tls {
            c.arg(cert).arg(key);
        }
        let mut child =
            c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3 receiver");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        let mut first = String::new();
        err.read_line(&mut first).expect("receiver stderr");
        assert!(
            first.starts_with("listening"),
            "receiver did not start (is opentelemetry-proto installed? `cargo xtask setup`): {first}"
        );
        let out = child.stdout.take().expect("stdout");
        let store = got.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    store.lock().expect("lock").push(v);
                }
            }
        });
        Self { child, got }
    }

    fn ours(&self) -> Vec<Value> {
        let me = i64::from(std::process::id());
        let got = self.got.lock().expect("lock");
        got.iter()
            .filter(|r| r["attributes"]["process.pid"].as_i64() == Some(me))
            .cloned()
            .collect()
    }

    fn wait_ours(&self, n: usize, within: Duration) -> Vec<Value> {
        let by = Instant::now() + within;
        loop {
            let ours = self.ours();
            if ours.len() >= n || Instant::now() > by {
                return ours;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ECS document's fields as the dotted attributes OTLP carries.
fn flat(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if prefix.is_empty()
                    && ["@timestamp", "time", "severity", "message"].contains(&k.as_str())
                {
                    continue;
                }
                flat(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

fn otlp_agent(metrics: SocketAddr, endpoint: &str, extra: &[&str]) -> Agent {
    let mut args: Vec<String> = [
        "--api-socket",
        &api_socket_for(&metrics).display().to_string(),
        "--log-records",
        "audit",
        "--log-format",
        "ecs",
        "--otlp-endpoint",
        endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Agent::start(AgentMode::Daemon { metrics, extra: args }).expect("agent")
}

fn export_counts(agent: &Agent, sink: &str) -> (f64, f64) {
    let text = agent.http_get("/metrics").expect("scrape");
    (
        metric_sum(&text, "egress_export_records_total", &[("sink", sink)]),
        metric_sum(&text, "egress_export_dropped_total", &[("sink", sink)]),
    )
}

#[test]
fn a_collector_down_for_10s_costs_counted_drops_then_recovers() {
    require_root!();
    let port = free_port().expect("port");
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(port, None, got.clone());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut agent = otlp_agent(metrics, &endpoint, &["--otlp-queue", "16", "--otlp-timeout", "2s"]);
    let closed = closed_port();

    // Up: each failed connect arrives with the attributes of its stdout line.
    refuse(closed, 5);
    let ours = receiver.wait_ours(5, Duration::from_secs(10));
    assert_eq!(ours.len(), 5, "received {ours:#?}");
    agent.poll();
    for r in &ours {
        let a = &r["attributes"];
        assert_eq!(
            (a["event.outcome"].as_str(), a["egress.reason"].as_str()),
            (Some("failure"), Some("refused"))
        );
        assert_eq!(
            (a["destination.port"].as_i64(), a["destination.ip"].as_str()),
            (Some(i64::from(closed)), Some("127.0.0.1"))
        );
        assert_eq!(
            (r["severity_text"].as_str(), r["severity_number"].as_i64()),
            (Some("ERROR"), Some(17))
        );
        assert_eq!(r["event_name"], "egress.flow");
        assert_eq!(r["resource"]["service.name"], "egress-observer");
        assert!(r["body"].as_str().is_some_and(|b| b.starts_with("failed: refused")), "{r}");
        let line = agent
            .records
            .iter()
            .find(|l| l["egress"]["flow_id"] == a["egress.flow_id"])
            .unwrap_or_else(|| panic!("no stdout line for {a}"));
        let mut want = Map::new();
        flat("", line, &mut want);
        assert_eq!(a.as_object(), Some(&want), "OTLP attributes = the ECS line's fields");
    }

    // Down for 10 s: failures go on (4/s); they are dropped, counted.
    drop(receiver);
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(10) {
        refuse(closed, 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            http_get(metrics, "/healthz").is_ok(),
            "agent unhealthy while the collector is down"
        );
    }
    let (_, dropped) = export_counts(&agent, "otlp");
    assert!(dropped > 0.0, "nothing dropped while the collector was down");

    // Back: new failures arrive again.
    let receiver = Receiver::start(port, None, got);
    let before = receiver.ours().len();
    refuse(closed, 5);
    let ours = receiver.wait_ours(before + 5, Duration::from_secs(15));
    assert!(
        ours.len() >= before + 5,
        "no recovery: {} of ours after the restart",
        ours.len() - before
    );
    // Every line written on stdout was either accepted by the collector or dropped.
    let by = Instant::now() + Duration::from_secs(10);
    let (sent, dropped, lines) = loop {
        let (lines, _) = export_counts(&agent, "stdout");
        let (sent, dropped) = export_counts(&agent, "otlp");
        if sent + dropped == lines || Instant::now() > by {
            break (sent, dropped, lines);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        sent + dropped,
        lines,
        "otlp sent {sent} + dropped {dropped} != stdout lines {lines}"
    );
    assert_eq!(receiver.got.lock().expect("lock").len() as f64, sent, "received = sent");
    let text = agent.http_get("/metrics").expect("scrape");
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[("stage", "ring")]), 0.0);
    eprintln!("collector down 10 s: sent {sent}, dropped {dropped}, stdout {lines}");
    assert!(agent.stop().expect("stop"), "agent exit status");
}

#[test]
fn otlp_over_tls_trusts_the_given_ca() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("eo-otlp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // A private CA and a server certificate it signed for 127.0.0.1 (as an
    // in-cluster collector's would be).
    let p = |f: &str| dir.join(f);
    let (ca, cert, key) = (p("ca.pem"), p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        &[
            &["req", "-x509", "-days", "1", "-subj", "/CN=otlp-test-ca"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[&["req", "-subj", "/CN=127.0.0.1"][..], &ec, &["-keyout", "key.pem", "-out", "req.csr"]]
            .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = free_port().expect("port");
    let receiver = Receiver::start(port, Some((&cert, &key)), Arc::default());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let endpoint = format!("https://127.0.0.1:{port}");
    let ca = ca.display().to_string();
    let agent = otlp_agent(metrics, &endpoint, &["--otlp-ca", &ca, "--log-stdout", "false"]);
    refuse(closed_port(), 3);
    let ours = receiver.wait_ours(3, Duration::from_secs(10));
    assert_eq!(ours.len(), 3, "received over TLS: {ours:#?}");
    assert_eq!(export_counts(&agent, "stdout"), (0.0, 0.0), "--log-stdout false");
    assert!(agent.stop().expect("stop"));
    // Without the CA the collector is not trusted: records are dropped, counted.
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let agent = otlp_agent(metrics, &endpoint, &["--otlp-timeout", "1s"]);
    refuse(closed_port(), 2);
    let by = Instant::now() + Duration::from_secs(10);
    while export_counts(&agent, "otlp").1 < 2.0 && Instant::now() < by {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(export_counts(&agent, "otlp").0, 0.0, "an untrusted collector got records");
    assert!(export_counts(&agent, "otlp").1 >= 2.0, "untrusted: not counted as dropped");
    assert!(agent.stop().expect("stop"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_blocked_stdout_drops_counted_and_observation_goes_on() {
    require_root!();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let bin = agent_bin();
    assert!(bin.exists(), "{} not built: run `cargo xtask build`", bin.display());
    let mut child = Command::new(&bin)
        .args(["run", "--metrics-addr", &metrics.to_string(), "--api-socket"])
        .arg(api_socket_for(&metrics))
        .args(["--log-records", "all", "--log-format", "ecs"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    // The read end stays open and is never read: the pipe fills and blocks.
    let _unread = child.stdout.take().expect("stdout");
    let by = Instant::now() + Duration::from_secs(30);
    while http_get(metrics, "/readyz").is_err() {
        assert!(Instant::now() < by, "agent not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed = closed_port();
    let n = 12_000;
    let t0 = Instant::now();
    // Paced (≈3k/s) so that only the blocked stdout could lose anything.
    for _ in 0..n / 300 {
        refuse(closed, 300);
        std::thread::sleep(Duration::from_millis(100));
    }
    let scrape = || http_get(metrics, "/metrics").expect("scrape");
    let by = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = scrape();
        let failed = metric_sum(&t, "egress_connections_total", &[("reason", "refused")]);
        if failed >= n as f64 || Instant::now() > by {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let written = metric_sum(&text, "egress_export_records_total", &[("sink", "stdout")]);
    let dropped = metric_sum(&text, "egress_export_dropped_total", &[("sink", "stdout")]);
    let failed = metric_sum(&text, "egress_connections_total", &[("reason", "refused")]);
    eprintln!(
        "{n} refused connects in {:?}: counted {failed}, stdout written {written}, dropped {dropped}",
        t0.elapsed()
    );
    assert!(failed >= n as f64, "the agent stopped observing: {failed} of {n}");
    assert!(dropped > 0.0, "nothing dropped with stdout blocked");
    assert_eq!(
        metric_sum(&text, "egress_events_lost_total", &[("stage", "ring")]),
        0.0,
        "the ring lost events"
    );
    // SIGTERM: it stops although its writer is stuck in write().
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let by = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "exit {st}");
            break;
        }
        if Instant::now() > by {
            let _ = child.kill();
            panic!("agent did not stop within 15 s of SIGTERM with a blocked stdout");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run of [`volume_per_1k_connections_per_second`]: `secs` seconds of
/// 1000 connects/s from this process, one in 100 refused; what the agent
/// wrote on stdout (lines and bytes of this process's records, all lines).
fn volume_run(extra: &[&str], secs: u64) -> (usize, usize, usize, usize, usize) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut args: Vec<String> =
        vec!["--api-socket".into(), api_socket_for(&metrics).display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut agent = Agent::start(AgentMode::Daemon { metrics, extra: args }).expect("agent");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let open = l.local_addr().expect("addr");
    let accepting = std::thread::spawn(move || {
        for s in l.incoming() {
            if s.is_err() {
                break;
            }
        }
    });
    let closed = closed_port();
    let t0 = Instant::now();
    for i in 0..secs * 1000 {
        // Paced: connect i is due at t0 + i ms.
        let due = t0 + Duration::from_millis(i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if i % 100 == 99 {
            refuse(closed, 1);
        } else {
            drop(TcpStream::connect_timeout(&open, Duration::from_secs(1)).expect("connect"));
        }
    }
    // The last interval's aggregates and held lines, then stop (drains).
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.stop_keeping_records().expect("stop"));
    drop(TcpStream::connect(open));
    drop(accepting);
    let me = u64::from(std::process::id());
    let size = |l: &Value| l.to_string().len() + 1;
    let mine: Vec<&Value> = agent
        .records
        .iter()
        .filter(|l| {
            l["process"]["pid"].as_u64() == Some(me)
                || (l["egress"]["record"] == "aggregate" && l["egress"]["unit"].is_string())
        })
        .collect();
    let all_bytes = agent.records.iter().map(size).sum();
    let refused = mine.iter().filter(|l| l["egress"]["reason"] == "refused").count();
    for l in
        mine.iter().filter(|l| l["egress"]["reason"] != "refused" && l["egress"]["verdict"] != "ok")
    {
        eprintln!("  also: {}", l["message"]);
    }
    (mine.len(), mine.iter().map(|l| size(l)).sum(), agent.records.len(), all_bytes, refused)
}

#[test]
fn volume_per_1k_connections_per_second() {
    require_root!();
    let secs = 10;
    let base = ["--log-records", "audit", "--log-format", "ecs"];
    let runs: [(&str, Vec<&str>); 3] = [
        ("audit, ok off (deployed)", base.to_vec()),
        (
            "audit, ok sample 1/100",
            [&base[..], &["--log-ok", "sample", "--log-ok-sample", "100"]].concat(),
        ),
        (
            "audit, ok aggregate 10s",
            [&base[..], &["--log-ok", "aggregate", "--log-ok-interval", "10s"]].concat(),
        ),
    ];
    for (name, extra) in runs {
        let (lines, bytes, all_lines, all_bytes, refused) = volume_run(&extra, secs);
        eprintln!(
            "volume {name}: {lines} lines of ours, {bytes} bytes in {secs} s = {:.0} B/s ({} B/line); all lines {all_lines}, {all_bytes} bytes",
            bytes as f64 / secs as f64,
            bytes.checked_div(lines).unwrap_or(0)
        );
        if name.starts_with("audit, ok off") {
            // 1 % of 10k connects refused: each one line (and a degraded
            // connect, a SYN lost to a full accept queue, is a line too).
            assert_eq!(refused, (secs * 10) as usize, "refused connects = their lines");
        }
    }
}
