//! Least exposure of the metrics port, on the real agent as the DaemonSet
//! runs it: in a "node" network namespace (hostNetwork), bound to the node's
//! IP, TLS with the certificates `deploy/tls/make-certs.sh` makes, /metrics
//! for Prometheus' client certificate or the bearer token only.
//!
//! ```text
//!  pod 198.18.77.2 ── 198.18.77.1  node  198.18.78.1 (node IP, :9464) ── 198.18.78.2 prometheus
//!   (default route via the node)    agent                                  (another machine)
//! ```
//!
//! A pod on the node reaches the node's IP, as in a cluster: without
//! credentials it gets 401 for /metrics (nothing of the metrics), a wrong
//! token 403, a certificate of another CA no TLS session at all; the probes'
//! paths answer it. With the client certificate or the token, the same pod
//! (and Prometheus, from outside) reads /metrics. Nothing listens on the
//! node's other addresses. The connection cap and the handshake timeout hold
//! against clients in the pod, and every refusal is counted.
use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::metric_sum,
    image::TempDir,
    require_root,
    scrape::{Certs, Credential, curl, fetch},
};

const NODE_IP: &str = "198.18.78.1";
const PORT: u16 = 9464;

fn in_ns(ns: &Netns) -> Vec<String> {
    vec!["ip".into(), "netns".into(), "exec".into(), ns.name.clone()]
}

fn get(
    ns: &Netns,
    certs: &Certs,
    addr: SocketAddr,
    path: &str,
    cred: Credential<'_>,
) -> anyhow::Result<(u16, String)> {
    let prefix = in_ns(ns);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    fetch(curl(&prefix, certs, addr, path, cred))
}

/// From a thread in `ns`: `n` connections held open, then one more. Returns
/// (how soon the extra one was closed, how soon the first held one was).
fn cap_and_timeout(ns: &Netns, addr: SocketAddr, n: usize) -> (Option<Duration>, Option<Duration>) {
    ns.within("eo-exposure-cap", move || {
        let held: Vec<TcpStream> = (0..n).filter_map(|_| TcpStream::connect(addr).ok()).collect();
        assert_eq!(held.len(), n, "all {n} connections accepted");
        std::thread::sleep(Duration::from_millis(200));
        let closed_within = |mut s: TcpStream, limit: Duration| {
            let t = Instant::now();
            s.set_read_timeout(Some(limit)).ok()?;
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) | Err(_) if t.elapsed() < limit => Some(t.elapsed()),
                _ => None,
            }
        };
        let extra =
            TcpStream::connect(addr).ok().and_then(|s| closed_within(s, Duration::from_secs(3)));
        let first = held.into_iter().next().and_then(|s| closed_within(s, Duration::from_secs(5)));
        (extra, first)
    })
    .expect("thread in the pod namespace")
}

#[test]
fn pods_without_credentials_are_refused_and_prometheus_is_served() {
    require_root!();
    let node = Netns::new("node").expect("netns");
    let pod = Netns::new("pod").expect("netns");
    let prom = Netns::new("prom").expect("netns");
    Veth::link(&node, &["198.18.77.1/24"], &pod, &["198.18.77.2/24"]).expect("pod link");
    Veth::link(&node, &[&format!("{NODE_IP}/24")], &prom, &["198.18.78.2/24"]).expect("node link");
    pod.run(&["ip", "route", "add", "default", "via", "198.18.77.1"]).expect("pod route");
    prom.run(&["ip", "route", "add", "default", "via", NODE_IP]).expect("prom route");

    let tmp = TempDir::new("exposure").expect("tmp");
    let certs = Certs::make(&tmp.path().join("tls"), &[]).expect("certs");
    // A client of another CA, checked against the real CA.
    let other = Certs::make(&tmp.path().join("other"), &[]).expect("other certs");
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(&mixed).expect("dir");
    std::fs::copy(certs.dir.join("ca.crt"), mixed.join("ca.crt")).expect("cp");
    for f in ["client.crt", "client.key"] {
        std::fs::copy(other.dir.join(f), mixed.join(f)).expect("cp");
    }
    let other = Certs { dir: mixed };
    let token = format!("{:032x}", (u128::from(std::process::id()) << 64) | 0x5eed_0f70_6b65);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");

    let addr: SocketAddr = format!("{NODE_IP}:{PORT}").parse().expect("addr");
    let mut extra = certs.agent_args();
    extra.extend(
        [
            "--metrics-token-file",
            &token_file.display().to_string(),
            "--metrics-max-connections",
            "4",
            "--metrics-header-timeout",
            "1s",
            "--kube",
            "false",
            "--conntrack",
            "false",
        ]
        .map(String::from),
    );
    let wrapper = ["nsenter".to_string(), format!("--net=/run/netns/{}", node.name), "--".into()];
    let agent =
        Agent::start_wrapped(&wrapper, AgentMode::Run { metrics: addr, extra }).expect("agent");

    // Prometheus, from another machine, with its client certificate.
    let (code, body) =
        get(&prom, &certs, addr, "/metrics", Credential::ClientCert).expect("prometheus");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("egress_build_info"), "{body}");

    // A pod on the node: the probes' paths answer, /metrics does not.
    for path in ["/healthz", "/readyz"] {
        let (code, body) = get(&pod, &certs, addr, path, Credential::None).expect(path);
        assert_eq!(code, 200, "{path} from the pod: {body}");
    }
    let (code, body) =
        get(&pod, &certs, addr, "/metrics", Credential::None).expect("pod, anonymous");
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("egress_"), "nothing of the metrics in the refusal: {body}");
    let (code, _) =
        get(&pod, &certs, addr, "/metrics", Credential::Bearer("guess")).expect("pod, wrong token");
    assert_eq!(code, 403);
    let e = get(&pod, &other, addr, "/metrics", Credential::ClientCert)
        .expect_err("a certificate of another CA gets no TLS session");
    eprintln!("pod with another CA's certificate: {e:#}");
    eprintln!("pod without credentials: 401 for /metrics, 200 for /healthz and /readyz");

    // The same pod with credentials.
    let (code, body) =
        get(&pod, &certs, addr, "/metrics", Credential::ClientCert).expect("pod, cert");
    assert_eq!(code, 200, "{body}");
    let (code, body) =
        get(&pod, &certs, addr, "/metrics", Credential::Bearer(&token)).expect("pod, token");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("egress_build_info"));

    // Bound to the node's IP only: not on its loopback nor on its pod-side address.
    for other_addr in ["127.0.0.1", "198.18.77.1"] {
        let url = format!("http://{other_addr}:{PORT}/healthz");
        let out = node.command(&["curl", "-sS", "--max-time", "3", &url]).output().expect("curl");
        assert_eq!(
            out.status.code(),
            Some(7),
            "{url} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Caps: 4 connections held from the pod, a 5th closed at once; the held
    // ones (no TLS handshake) closed after the 1 s header timeout.
    let (extra_closed, held_closed) = cap_and_timeout(&pod, addr, 4);
    eprintln!("5th connection closed after {extra_closed:?}, idle ones after {held_closed:?}");
    assert!(extra_closed.is_some_and(|d| d < Duration::from_millis(500)), "{extra_closed:?}");
    assert!(
        held_closed.is_some_and(|d| d > Duration::from_millis(500) && d < Duration::from_secs(3)),
        "{held_closed:?}"
    );

    // Every refusal counted (read with Prometheus' certificate).
    std::thread::sleep(Duration::from_millis(200));
    let (_, scrape) = get(&prom, &certs, addr, "/metrics", Credential::ClientCert).expect("scrape");
    let rejected =
        |reason| metric_sum(&scrape, "egress_http_rejected_total", &[("reason", reason)]);
    eprintln!(
        "rejected: unauthenticated {} forbidden {} tls_handshake {} connection_limit {}",
        rejected("unauthenticated"),
        rejected("forbidden"),
        rejected("tls_handshake"),
        rejected("connection_limit")
    );
    assert_eq!(rejected("unauthenticated"), 1.0);
    assert_eq!(rejected("forbidden"), 1.0);
    assert!(rejected("tls_handshake") >= 5.0, "another CA's certificate + 4 idle connections");
    assert_eq!(rejected("connection_limit"), 1.0);
    assert!(agent.stop().expect("stop"), "the agent exits 0 on SIGTERM");
}
