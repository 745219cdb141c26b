//! A real proxy that cuts its answer into many TCP segments, through the
//! real agent (issue 18, "no false failure from a missing or split status
//! line"): the kernel's payload programs capture every segment of the answer
//! with its stream offset and the agent reassembles it, so a tunnel whose
//! `HTTP/1.1 200 Connection established` came split inside its status line,
//! one header line per segment, or one byte per segment is `ok`/200 with the
//! proxy's evidence (its `Via`) parsed. A tunnel whose answer never came
//! before its close is `unknown`, never `failed`.
//!
//! The proxy (198.18.118.2:3128, hop `split-proxy` of the agent's config) is
//! a small CONNECT server in its own network namespace; each request names
//! its own target, which says how the answer is to be cut.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    image::TempDir,
    require_root,
};
use serde_json::Value;

const PROXY: &str = "198.18.118.2:3128";
const HOP: &str = "split-proxy";
const ANSWER: &[u8] =
    b"HTTP/1.1 200 Connection established\r\nVia: 1.1 split-proxy (eo-test)\r\nProxy-Agent: eo-test\r\n\r\n";

/// How the proxy answers a request, by the first label of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// "HTTP/1." | "1 2" | "00 Connection established\r\n" | headers.
    InsideStatusLine,
    /// One segment per line (status, each header, the empty line).
    PerLine,
    /// One byte per segment for the whole status line.
    PerByte,
    /// No answer: the proxy reads the request, then closes (FIN).
    ProxyCloses,
    /// No answer: the proxy reads the request and waits; the client gives
    /// up and closes first.
    ClientCloses,
}

impl Cut {
    const ALL: [Cut; 5] =
        [Cut::InsideStatusLine, Cut::PerLine, Cut::PerByte, Cut::ProxyCloses, Cut::ClientCloses];

    fn label(self) -> &'static str {
        match self {
            Cut::InsideStatusLine => "inside-status",
            Cut::PerLine => "per-line",
            Cut::PerByte => "per-byte",
            Cut::ProxyCloses => "proxy-closes",
            Cut::ClientCloses => "client-closes",
        }
    }

    fn from_target(t: &str) -> Option<Cut> {
        Cut::ALL.into_iter().find(|c| t.starts_with(&format!("{}.", c.label())))
    }

    fn target(self) -> String {
        format!("{}.split.test:443", self.label())
    }

    fn answers(self) -> bool {
        !matches!(self, Cut::ProxyCloses | Cut::ClientCloses)
    }

    /// The answer's segments.
    fn pieces(self) -> Vec<&'static [u8]> {
        let status_end = ANSWER.windows(2).position(|w| w == b"\r\n").map_or(0, |p| p + 2);
        match self {
            Cut::InsideStatusLine => {
                vec![&ANSWER[..7], &ANSWER[7..10], &ANSWER[10..status_end], &ANSWER[status_end..]]
            }
            Cut::PerLine => {
                let mut v = Vec::new();
                let mut at = 0;
                while at < ANSWER.len() {
                    let end = ANSWER[at..]
                        .windows(2)
                        .position(|w| w == b"\r\n")
                        .map_or(ANSWER.len(), |p| at + p + 2);
                    v.push(&ANSWER[at..end]);
                    at = end;
                }
                v
            }
            Cut::PerByte => {
                let mut v: Vec<&[u8]> = (0..status_end).map(|i| &ANSWER[i..i + 1]).collect();
                v.push(&ANSWER[status_end..]);
                v
            }
            Cut::ProxyCloses | Cut::ClientCloses => Vec::new(),
        }
    }
}

/// A CONNECT proxy that writes its answer in pieces, TCP_NODELAY, a few
/// milliseconds apart: each piece is its own segment.
struct SplitProxy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 4096 {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let target = text.split_whitespace().nth(1).unwrap_or("");
    let Some(cut) = Cut::from_target(target) else { return };
    match cut {
        Cut::ProxyCloses => {
            std::thread::sleep(Duration::from_millis(50));
            return; // dropped: FIN, nothing unread (no reset)
        }
        Cut::ClientCloses => {}
        _ => {
            for piece in cut.pieces() {
                if s.write_all(piece).and_then(|()| s.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        }
    }
    // Until the client closes.
    while matches!(s.read(&mut b), Ok(n) if n > 0) {}
}

impl SplitProxy {
    fn start(ns: &Netns) -> SplitProxy {
        let at: SocketAddr = PROXY.parse().expect("addr");
        let listener = ns
            .within("eo-split-proxy", move || TcpListener::bind(at))
            .expect("thread")
            .expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        conns.push(std::thread::spawn(move || serve(s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        SplitProxy { stop, thread: Some(thread) }
    }
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request from the client namespace: what the client read back.
fn request(client: &Netns, cut: Cut) -> Vec<u8> {
    client
        .within("eo-split-client", move || {
            let mut s =
                TcpStream::connect_timeout(&PROXY.parse().expect("addr"), Duration::from_secs(3))
                    .expect("connect to the proxy");
            let t = cut.target();
            s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
                .expect("write");
            let mut got = Vec::new();
            let mut b = [0u8; 256];
            if cut == Cut::ClientCloses {
                // Gives up on the answer after 300 ms.
                s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&b[..n]);
                }
                return got;
            }
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
            got
        })
        .expect("client thread")
}

fn of(cut: Cut) -> impl Fn(&Value) -> bool {
    let t = cut.target();
    move |v| v["target"].as_str() == Some(t.as_str())
}

#[test]
fn split_or_missing_proxy_answers_are_never_false_failures() {
    require_root!();
    let client = Netns::new("split-client").expect("netns");
    let server = Netns::new("split-proxy").expect("netns");
    Veth::link(&client, &["198.18.118.1/24"], &server, &["198.18.118.2/24"]).expect("link");
    let _proxy = SplitProxy::start(&server);
    let tmp = TempDir::new("split-reply").expect("tmp");
    let config = tmp.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!("version: 1\nchain:\n  name: split\n  hops:\n    - name: {HOP}\n      match:\n        address: \"{PROXY}\"\n"),
    )
    .expect("config");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let extra =
        ["--config", &config.display().to_string(), "--kube", "false", "--conntrack", "false"]
            .map(String::from)
            .to_vec();
    let mut agent = Agent::start(AgentMode::Run { metrics, extra }).expect("agent");

    for cut in Cut::ALL {
        let got = request(&client, cut);
        if cut.answers() {
            assert_eq!(got, ANSWER, "{cut:?}: the client read the whole answer");
        } else {
            assert!(got.is_empty(), "{cut:?}: no answer: {:?}", String::from_utf8_lossy(&got));
        }
    }

    for cut in Cut::ALL.into_iter().filter(|c| c.answers()) {
        let rec = agent
            .wait_for(Duration::from_secs(10), of(cut))
            .unwrap_or_else(|e| panic!("{cut:?}: {e:#}"));
        eprintln!("{cut:?}: {rec}");
        assert_eq!(rec["verdict"], "ok", "{cut:?}: {rec}");
        assert_eq!(rec["proxy_status"], 200, "{cut:?}: {rec}");
        assert_eq!(rec["proxy_via"], "split-proxy", "{cut:?}: the evidence was parsed: {rec}");
        assert_eq!(rec["hop"], HOP, "{cut:?}: {rec}");
    }
    for cut in Cut::ALL.into_iter().filter(|c| !c.answers()) {
        let rec = agent
            .wait_for(Duration::from_secs(10), of(cut))
            .unwrap_or_else(|e| panic!("{cut:?}: {e:#}"));
        eprintln!("{cut:?}: {rec}");
        assert_eq!(rec["verdict"], "unknown", "{cut:?}: no answer seen is not a failure: {rec}");
        assert!(rec["proxy_status"].is_null(), "{cut:?}: {rec}");
    }
    // The closes came (every client socket is closed): nothing said failed,
    // neither a record nor the metrics.
    std::thread::sleep(Duration::from_secs(1));
    agent.poll();
    for cut in Cut::ALL {
        let bad: Vec<&Value> = agent
            .records
            .iter()
            .filter(|v| of(cut)(v) && (v["verdict"] == "failed" || v["verdict"] == "degraded"))
            .collect();
        assert!(bad.is_empty(), "{cut:?}: {bad:?}");
    }
    let text = agent.settled_metrics(Duration::from_secs(5)).expect("scrape");
    let answered = Cut::ALL.iter().filter(|c| c.answers()).count() as f64;
    assert_eq!(
        metric_sum(&text, "egress_proxy_tunnels_total", &[("hop", HOP), ("status", "200")]),
        answered,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "egress_connections_total", &[("hop", HOP), ("result", "failed")]),
        0.0,
        "{text}"
    );
    assert_eq!(metric_sum(&text, "egress_hop_failures_total", &[("hop", HOP)]), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[]), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0, "{text}");
    assert!(agent.stop().expect("stop"));
}
