//! Two agents on one host, as a rolling update or a restart briefly has
//! them: the DaemonSet's strategy (maxSurge 0, deploy/README.md "Upgrades")
//! and the agent's wait for its metrics port, on the real agent.
//!
//! A fake HTTP proxy (198.18.91.2:3128, hop `test-proxy` of the agents'
//! config) answers `200 Connection established` to a CONNECT; each request
//! names its own target, so which agent saw which request is known. The
//! proxy's status reaches an agent only through its cgroup_skb payload
//! programs: a request's record with `proxy_status: 200` proves them.
//!
//! 1. Same metrics port (the rolling update): the second agent, started
//!    while the first runs, waits for the port without loading anything and
//!    without crashing; once the first exits (SIGTERM, exit 0) it starts,
//!    and its payload programs capture the next requests. What Prometheus
//!    sums is right: the first agent's counter holds every request up to its
//!    exit, the second's only the later ones; together exactly the requests.
//! 2. Two agents attached at once (two ports: a second agent run by hand):
//!    neither crashes, both capture payload while both run (the cgroup_skb
//!    programs attach with BPF_F_ALLOW_MULTI: the second does not replace the
//!    first's), and the survivor still captures after the first exits. Both
//!    count the overlap: two serving agents would double-count in a sum,
//!    which is why the DaemonSet never has two (the test shows the numbers).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    image::TempDir,
    require_root,
};

const PROXY: &str = "198.18.91.2:3128";
const HOP: &str = "test-proxy";

/// Answers every CONNECT with 200, then waits for the client to close.
struct FakeProxy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeProxy {
    fn start(ns: &Netns) -> FakeProxy {
        let at: SocketAddr = PROXY.parse().expect("addr");
        let listener = ns
            .within("eo-upg-proxy", move || TcpListener::bind(at))
            .expect("thread")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                let _ = s.read(&mut b); // until the client closes
            }
        });
        FakeProxy { stop, thread: Some(thread) }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn target(i: usize) -> String {
    format!("req-{i}.upgrade.test:443")
}

/// Requests `range` from the client namespace, one after the other.
fn requests(client: &Netns, range: std::ops::Range<usize>) {
    client
        .within("eo-upgrade", move || {
            for i in range {
                let mut s = TcpStream::connect_timeout(
                    &PROXY.parse().expect("addr"),
                    Duration::from_secs(3),
                )
                .expect("connect to the proxy");
                s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
                let t = target(i);
                // One write: the agent reads the first payload segment only.
                s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
                    .expect("write");
                let mut b = [0u8; 64];
                let n = s.read(&mut b).expect("answer");
                assert!(
                    b[..n].starts_with(b"HTTP/1.1 200"),
                    "{:?}",
                    String::from_utf8_lossy(&b[..n])
                );
            }
        })
        .expect("client thread");
}

/// The agent's record of request `i`, with the proxy status its payload
/// programs read.
fn captured(agent: &mut Agent, i: usize, within: Duration) -> anyhow::Result<()> {
    let t = target(i);
    agent
        .wait_for(within, |v| {
            v["target"].as_str() == Some(t.as_str()) && v["proxy_status"] == 200 && v["hop"] == HOP
        })
        .map(|_| ())
}

fn has_record(agent: &mut Agent, i: usize) -> bool {
    agent.poll();
    let t = target(i);
    agent.records.iter().any(|v| v["target"].as_str() == Some(t.as_str()))
}

/// Requests through the proxy that the agent's /metrics counts.
fn counted(agent: &Agent) -> f64 {
    let text = agent.settled_metrics(Duration::from_secs(3)).expect("scrape");
    metric_sum(&text, "egress_connections_total", &[("hop", HOP)])
}

struct Lab {
    client: Netns,
    _server: Netns,
    _proxy: FakeProxy,
    tmp: TempDir,
    config: PathBuf,
}

fn lab(what: &str) -> Lab {
    let client = Netns::new("upg-client").expect("netns");
    let server = Netns::new("upg-proxy").expect("netns");
    Veth::link(&client, &["198.18.91.1/24"], &server, &["198.18.91.2/24"]).expect("link");
    let proxy = FakeProxy::start(&server);
    let tmp = TempDir::new(what).expect("tmp");
    let config = tmp.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!("version: 1\nchain:\n  name: upgrade\n  hops:\n    - name: {HOP}\n      match:\n        address: \"{PROXY}\"\n"),
    )
    .expect("config");
    Lab { client, _server: server, _proxy: proxy, tmp, config }
}

fn mode(metrics: SocketAddr, config: &Path, api: &Path) -> AgentMode {
    let extra = [
        "--config",
        &config.display().to_string(),
        "--api-socket",
        &api.display().to_string(),
        "--kube",
        "false",
        "--conntrack",
        "false",
    ]
    .map(String::from)
    .to_vec();
    AgentMode::Run { metrics, extra }
}

const RECORD: Duration = Duration::from_secs(10);

#[test]
fn rolling_update_on_one_port_neither_crashes_nor_double_counts() {
    require_root!();
    let lab = lab("upgrade-port");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut old = Agent::start(mode(metrics, &lab.config, &lab.tmp.path().join("old.sock")))
        .expect("old agent");
    requests(&lab.client, 0..5);
    for i in 0..5 {
        captured(&mut old, i, RECORD).unwrap_or_else(|e| panic!("old agent, request {i}: {e:#}"));
    }

    // The new agent, while the old one runs: it waits for the port.
    let mut new = Agent::spawn(mode(metrics, &lab.config, &lab.tmp.path().join("new.sock")))
        .expect("new agent");
    std::thread::sleep(Duration::from_secs(2));
    assert!(new.alive(), "the new agent crashed while the port was taken:\n{}", new.stderr_text());
    let waiting = new.stderr_text();
    assert!(waiting.contains("metrics address in use"), "{waiting}");
    assert!(
        !waiting.contains("programs attached"),
        "it loaded before the port was free:\n{waiting}"
    );
    requests(&lab.client, 5..10);
    for i in 5..10 {
        captured(&mut old, i, RECORD).unwrap_or_else(|e| panic!("old agent, request {i}: {e:#}"));
    }
    let old_count = counted(&old);
    assert_eq!(old_count, 10.0, "the old agent counted every request so far");

    // SIGTERM the old one; the new one takes the port and starts.
    let stopped = Instant::now();
    assert!(old.stop().expect("stop"), "the old agent exits 0 on SIGTERM");
    let exited = stopped.elapsed();
    new.wait_ready(Duration::from_secs(30)).expect("the new agent starts once the port is free");
    let gap = stopped.elapsed();
    assert!(new.alive());
    eprintln!("old agent stopped in {exited:?}; new agent attached {gap:?} after the SIGTERM");
    requests(&lab.client, 10..15);
    for i in 10..15 {
        captured(&mut new, i, RECORD)
            .unwrap_or_else(|e| panic!("new agent after the old exited, request {i}: {e:#}"));
    }
    let new_count = counted(&new);
    assert!(
        (0..10).all(|i| !has_record(&mut new, i)),
        "the new agent saw nothing before it started"
    );
    eprintln!(
        "counted: old agent {old_count} (its last scrape), new agent {new_count}; requests 15"
    );
    assert_eq!(new_count, 5.0, "the new agent counts only what came after it started");
    assert_eq!(old_count + new_count, 15.0, "no request counted twice, none lost");
    assert!(new.stop().expect("stop"));
}

#[test]
fn two_agents_attached_at_once_both_capture_and_the_survivor_goes_on() {
    require_root!();
    let lab = lab("upgrade-two");
    let m1 = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let m2 = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut first =
        Agent::start(mode(m1, &lab.config, &lab.tmp.path().join("1.sock"))).expect("first");
    let mut second =
        Agent::start(mode(m2, &lab.config, &lab.tmp.path().join("2.sock"))).expect("second");
    requests(&lab.client, 0..5);
    for i in 0..5 {
        captured(&mut second, i, RECORD)
            .unwrap_or_else(|e| panic!("second agent, request {i}: {e:#}"));
        captured(&mut first, i, RECORD).unwrap_or_else(|e| {
            panic!(
                "first agent lost its payload programs when the second attached, request {i}: {e:#}"
            )
        });
    }
    let (c1, c2) = (counted(&first), counted(&second));
    eprintln!(
        "both running, 5 requests: first counts {c1}, second {c2} (a sum over both: {})",
        c1 + c2
    );
    assert_eq!((c1, c2), (5.0, 5.0));
    assert!(first.alive() && second.alive());
    assert!(first.stop().expect("stop"), "the first exits 0");
    requests(&lab.client, 5..10);
    for i in 5..10 {
        captured(&mut second, i, RECORD)
            .unwrap_or_else(|e| panic!("second agent after the first exited, request {i}: {e:#}"));
    }
    assert_eq!(counted(&second), 10.0);
    assert!(second.alive());
    assert!(second.stop().expect("stop"));
}
