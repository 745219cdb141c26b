//! Proxy tunnels whose ESTABLISHED the kernel skipped the set_state
//! program for keep their proxy's answer. The kernel skips the program's
//! run for a state change traced from a softirq that interrupts the same
//! program in a task on that CPU; the agent takes a skipped ESTABLISHED up
//! at the flow's first payload packet, where the proxy capture starts
//! (`egress-ebpf/src/payload.rs`), a hop's accepted connection at the
//! request coming in, any other flow's at its close.
//!
//! Two tests. The storm one: each tunnel's first SYN is dropped, so its
//! SYN-ACK comes back from the retransmit timer's softirq (an interrupt's,
//! not the connecting task's) while a loopback storm on the host keeps the
//! program busy in tasks; whether any ESTABLISHED lands nested is chance
//! (printed: the runs skipped and the number taken up), and every tunnel
//! must have its record with the proxy's answer read. The deterministic
//! one: the agent's test hook `--skip-established` leaves every
//! ESTABLISHED undone, as the kernel's skip would, and each path that
//! takes one up must give the record it would have had, marked untimed.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    cgroups::{Layout, TestCgroup},
    image::TempDir,
    require_root,
    traffic::{LoopbackStorm, Server, fetch},
};

const PROXY: &str = "198.18.119.2:3128";
const HOP: &str = "storm-proxy";
const TUNNELS: usize = 200;
const ANSWER: &[u8] =
    b"HTTP/1.1 200 Connection established\r\nVia: 1.1 storm-proxy (eo-test)\r\n\r\n";

/// A CONNECT proxy (a process of its own, in its own cgroup: the hop's
/// accepted connections are told by their owner): answers 200 to each
/// request, then waits for the client's close.
const PROXY_PY: &str = r#"
import socket, sys, threading
answer = sys.argv[3].encode().decode("unicode_escape").encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(256)
def serve(c):
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        d = c.recv(512)
        if not d:
            return c.close()
        head += d
    c.sendall(answer)
    while c.recv(512):
        pass
    c.close()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The proxy process, killed (by its PID) when dropped.
struct Proxy(std::process::Child);

impl Proxy {
    fn start(ns: &Netns, cgroup: &TestCgroup) -> Proxy {
        let (ip, port) = PROXY.split_once(':').expect("ip:port");
        let answer = String::from_utf8_lossy(ANSWER).replace("\r\n", "\\r\\n");
        // The shell waits to be moved into the cgroup (from here: `ip netns
        // exec` mounts a sysfs of its own), then becomes the proxy: its
        // listener (and every connection it accepts) belongs to the cgroup.
        let mut child = ns
            .command(&[
                "sh",
                "-c",
                "read go && exec python3 -c \"$0\" \"$@\"",
                PROXY_PY,
                ip,
                port,
                &answer,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("proxy");
        cgroup.enter(child.id()).expect("into the cgroup");
        writeln!(child.stdin.as_mut().expect("stdin"), "go").expect("go");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("proxy output");
        assert_eq!(line.trim(), "listening", "the proxy started");
        Proxy(child)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One tunnel from the client namespace: whether the whole answer came.
fn tunnel(i: usize) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&PROXY.parse().expect("addr"), Duration::from_secs(15))
    else {
        return false;
    };
    let t = format!("t{i}.storm.test:443");
    if s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    got == ANSWER
}

/// The two namespaces, the proxy and the agent with the proxy as its hop
/// (`extra`: more agent flags).
struct Lab {
    client: Netns,
    server: Netns,
    // Declared before its cgroup: killed before the cgroup is removed.
    _proxy: Proxy,
    _cgroup: TestCgroup,
    agent: Agent,
    _tmp: TempDir,
}

impl Lab {
    fn start(name: &str, seed: u64, extra: &[&str]) -> Lab {
        let client = Netns::new(&format!("{name}-c")).expect("netns");
        let server = Netns::new(&format!("{name}-s")).expect("netns");
        Veth::link(&client, &["198.18.119.1/24"], &server, &["198.18.119.2/24"]).expect("link");
        let cgroup = TestCgroup::new(Layout::Unit, seed).expect("cgroup");
        let proxy = Proxy::start(&server, &cgroup);
        let tmp = TempDir::new(name).expect("tmp");
        let config = tmp.path().join("agent.yaml");
        let leaf = cgroup.path().file_name().and_then(|n| n.to_str()).expect("leaf");
        std::fs::write(
            &config,
            format!("version: 1\nchain:\n  name: storm\n  hops:\n    - name: {HOP}\n      match:\n        address: \"{PROXY}\"\n        cgroup: \"{leaf}\"\n"),
        )
        .expect("config");
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
        let mut args = ["--config", &config.display().to_string(), "--kube", "false"]
            .map(String::from)
            .to_vec();
        args.extend(["--conntrack", "false"].iter().chain(extra).map(|a| a.to_string()));
        let agent = Agent::start(AgentMode::Run { metrics, extra: args }).expect("agent");
        Lab { client, server, _proxy: proxy, _cgroup: cgroup, agent, _tmp: tmp }
    }

    /// Stop the agent (it must exit cleanly); the rest goes with the lab.
    fn stop(self) {
        assert!(self.agent.stop().expect("stop"));
    }
}

#[test]
fn tunnels_established_during_a_storm_keep_their_answer() {
    require_root!();
    let mut lab = Lab::start("nproxy", 721, &[]);
    let (client, agent) = (&lab.client, &mut lab.agent);
    // Every other SYN to the proxy is dropped: a tunnel whose first SYN
    // is dropped connects from the retransmit timer, a second later.
    let drop_rule = "iptables -A OUTPUT -p tcp --syn -d 198.18.119.2 --dport 3128 \
                     -m statistic --mode nth --every 2 --packet 0 -j DROP";
    client.run(&drop_rule.split_whitespace().collect::<Vec<_>>()).expect("drop rule");
    let storm = LoopbackStorm::start(400_000, Duration::from_secs(30)).expect("storm");
    std::thread::sleep(Duration::from_millis(500));
    // Eight clients at a time, spread over the storm.
    let answered: Vec<usize> = client
        .within("eo-nproxy-client", || {
            // Scoped: all eight run at once, each joined at the scope's end.
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..8)
                    .map(|w| {
                        scope.spawn(move || {
                            (w..TUNNELS).step_by(8).filter(|&i| tunnel(i)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut answered = Vec::new();
                for w in workers {
                    answered.extend(w.join().expect("client"));
                }
                answered
            })
        })
        .expect("client thread");
    let made = storm.stop();
    // A tunnel whose SYNs were all dropped until its client gave up has
    // nothing to show: the others are checked.
    assert!(answered.len() >= TUNNELS * 9 / 10, "{} of {TUNNELS} tunnels answered", answered.len());

    // Every answered tunnel's connect record, by its target.
    let record_of = |records: &[Value], i: usize| {
        let target = format!("t{i}.storm.test:443");
        records
            .iter()
            .find(|v| v["target"].as_str() == Some(&target) && v["phase"] == "connect")
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && answered.iter().any(|&i| record_of(&agent.records, i).is_none())
    {
        agent.poll();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut missing = Vec::new();
    let mut untimed = 0;
    for &i in &answered {
        let Some(rec) = record_of(&agent.records, i) else {
            missing.push(i);
            continue;
        };
        untimed += usize::from(rec["untimed"] == true);
        // Degraded where its SYN was retransmitted: the dropped first SYN.
        let expected = if rec["syn_retransmits"] == 0 { "ok" } else { "degraded" };
        assert_eq!(
            (rec["verdict"].as_str(), rec["proxy_status"].as_u64(), rec["proxy_via"].as_str()),
            (Some(expected), Some(200), Some(HOP)),
            "tunnel {i}: {rec}"
        );
    }
    let text = agent.http_get("/metrics").expect("metrics");
    let skipped =
        |p: &str| metric_sum(&text, "egress_program_runs_skipped_total", &[("program", p)]);
    eprintln!(
        "storm: {made} loopback connects; {} of {} tunnels answered recorded, {untimed} untimed; \
         runs skipped: {}; taken up later {}; {}",
        answered.len() - missing.len(),
        answered.len(),
        skipped("inet_sock_set_state_btf") + skipped("inet_sock_set_state"),
        metric_sum(&text, "egress_kernel_nested_recovered_total", &[]),
        agent.health(),
    );
    assert!(
        missing.is_empty(),
        "no connect record of tunnels {missing:?}; records:\n{}",
        agent.records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[]), 0.0, "{text}");
    lab.stop();
}

/// Every path that takes a skipped ESTABLISHED up, made deterministic with
/// the agent's test hook `--skip-established` (the set_state program leaves
/// every ESTABLISHED undone, as the kernel's skip would): a tunnel's is
/// taken up at its first payload packet (the CONNECT going out), the proxy
/// pod's accepted connection at the request coming in, a plain flow's at
/// its close. Each still has its record, marked untimed.
#[test]
fn skipped_establisheds_are_taken_up_by_later_hooks() {
    require_root!();
    let mut lab = Lab::start("nskip", 722, &["--skip-established"]);
    let plain: SocketAddr = "198.18.119.2:8080".parse().expect("addr");
    let server = Server::start(&lab.server, plain, 100).expect("plain server");
    assert!(lab.client.within("eo-nskip-client", || tunnel(0)).expect("client"), "answered");
    let got =
        fetch(&lab.client, "eo-nskip-plain", plain, 10, Duration::from_secs(5)).expect("client");
    assert_eq!((got.connect.is_ok(), got.bytes), (true, 100), "{got:?}");
    drop(server);

    let agent = &mut lab.agent;
    let target = "t0.storm.test:443";
    let tunnel_rec = agent
        .wait_for(Duration::from_secs(10), |v| {
            v["target"] == target && v["phase"] == "connect" && v["vantage"] == "client"
        })
        .expect("the tunnel's record");
    eprintln!("tunnel: {tunnel_rec}");
    assert_eq!(
        (tunnel_rec["verdict"].as_str(), tunnel_rec["proxy_status"].as_u64()),
        (Some("ok"), Some(200)),
        "{tunnel_rec}"
    );
    assert_eq!((&tunnel_rec["proxy_via"], &tunnel_rec["untimed"]), (&HOP.into(), &true.into()));
    let hop_rec = agent
        .wait_for(Duration::from_secs(10), |v| v["target"] == target && v["vantage"] == "hop")
        .expect("the proxy's accepted connection's record");
    eprintln!("hop: {hop_rec}");
    assert_eq!((&hop_rec["proxy_status"], &hop_rec["untimed"]), (&200.into(), &true.into()));
    assert_eq!(hop_rec["verdict"], "ok", "{hop_rec}");
    // The plain flow's connect record comes with its close (a direct
    // flow to a public address: a bypass, whatever its transport said).
    let plain_to = plain.to_string();
    let rec = agent
        .wait_for(Duration::from_secs(10), |v| {
            v["dst"] == plain_to.as_str() && v["phase"] == "connect"
        })
        .expect("the plain flow's connect record");
    eprintln!("plain: {rec}");
    assert_eq!((&rec["untimed"], &rec["errno"]), (&true.into(), &0.into()), "{rec}");
    let text = agent.http_get("/metrics").expect("metrics");
    assert!(
        metric_sum(&text, "egress_kernel_nested_recovered_total", &[]) >= 3.0,
        "three taken up: {text}"
    );
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[]), 0.0, "{text}");
    lab.stop();
}
