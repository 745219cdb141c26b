//! A `protocol: routed` hop (issue 20 part 3): a transparent gateway that
//! forwards and SNATs, seen from both ends by one agent on the host (its
//! probes see every namespace's sockets; its conntrack module follows the
//! gateway's namespace, as an agent on the gateway machine would).
//!
//! ```text
//! client 198.18.120.2 ── 198.18.120.1 gateway 198.18.121.1 ── 198.18.121.2 origin
//!                                 SNAT to 198.18.121.10 (egress IP)   (+ 198.18.123.2)
//! ```
//! The hop serves 198.18.121.0/24; 198.18.123.2 is reached through the same
//! gateway but is not a served destination. Faults are deterministic
//! iptables rules in the origin: port 8081 REJECTed with a reset, port 8082
//! DROPped. Addresses exist only inside the test's namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    image::TempDir,
    netns::Rule,
    require_root,
};
use serde_json::Value;

const HOP: &str = "egw";
const CLIENT: &str = "198.18.120.2";
const GW_IN: &str = "198.18.120.1";
const GW_OUT: &str = "198.18.121.1";
const EGRESS_IP: &str = "198.18.121.10";
const ORIGIN: &str = "198.18.121.2";
const UNSERVED: &str = "198.18.123.2";
const WAIT: Duration = Duration::from_secs(20);
/// Unreplied entries end after the (lowered) SYN_SENT timeout and the
/// conntrack garbage collector's next pass.
const GATEWAY_WAIT: Duration = Duration::from_secs(150);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// Accepts on every origin address, answers "ok", closes; stops on drop.
struct Origin {
    stop: Arc<AtomicBool>,
}

impl Origin {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        ns.spawn("eo-routed-origin", move || {
            let l = TcpListener::bind(("0.0.0.0", 8080)).expect("origin listen");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
        .expect("origin thread");
        rx.recv_timeout(Duration::from_secs(5)).expect("origin listening");
        Self { stop }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connect from the client namespace (3 s bound); on success read the
/// answer and close. Returns the local address, or the error kind.
fn connect(ns: &Netns, to: SocketAddr) -> Result<SocketAddr, std::io::ErrorKind> {
    ns.within("eo-routed-cli", move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.kind())?;
        let local = s.local_addr().map_err(|e| e.kind())?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert_eq!(buf, b"ok", "the origin's answer through the gateway");
        Ok(local)
    })
    .expect("client thread")
}

fn is(v: &Value, field: &str, want: &str) -> bool {
    v[field].as_str() == Some(want)
}

#[test]
fn a_routed_gateway_with_snat_is_a_hop_seen_from_both_ends() {
    require_root!();
    let client = Netns::new("rgc").expect("client ns");
    let gateway = Netns::new("rgw").expect("gateway ns");
    let origin = Netns::new("rgo").expect("origin ns");
    Veth::link(&client, &[&format!("{CLIENT}/24")], &gateway, &[&format!("{GW_IN}/24")])
        .expect("client veth");
    let out = Veth::link(
        &gateway,
        &[&format!("{GW_OUT}/24"), &format!("{EGRESS_IP}/24")],
        &origin,
        &[&format!("{ORIGIN}/24")],
    )
    .expect("origin veth");
    origin.run(&["ip", "addr", "add", &format!("{UNSERVED}/32"), "dev", &out.b_if]).expect("addr");
    client.run(&["ip", "route", "add", "default", "via", GW_IN]).expect("client route");
    gateway
        .run(&["ip", "route", "add", &format!("{UNSERVED}/32"), "via", ORIGIN])
        .expect("gateway route");
    gateway.sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
    // The NAT instance: everything leaving towards the origin side is SNATed.
    let _snat = Rule::add(
        &gateway,
        false,
        "nat",
        &["POSTROUTING", "-o", &out.a_if, "-j", "SNAT", "--to-source", EGRESS_IP],
    )
    .expect("SNAT rule");
    // Short conntrack timeouts: an entry's end (when it is judged) comes in seconds.
    for (k, v) in [("syn_sent", "3"), ("time_wait", "1"), ("close", "1"), ("fin_wait", "2")] {
        gateway
            .sysctl(&format!("net.netfilter.nf_conntrack_tcp_timeout_{k}"), v)
            .expect("conntrack timeout");
    }
    let _reject = Rule::add(
        &origin,
        false,
        "filter",
        &["INPUT", "-p", "tcp", "--dport", "8081", "-j", "REJECT", "--reject-with", "tcp-reset"],
    )
    .expect("REJECT rule");
    let _drop = Rule::add(
        &origin,
        false,
        "filter",
        &["INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP"],
    )
    .expect("DROP rule");
    let _origin = Origin::start(&origin);

    let tmp = TempDir::new("routed-gw").expect("tmp");
    let config = tmp.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nchain:\n  hops:\n    - name: {HOP}\n      protocol: routed\n      match:\n        destinations: ['198.18.121.0/24']\n        egress_ips: ['{EGRESS_IP}']\n"
        ),
    )
    .expect("config");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let extra = [
        "--config",
        &config.display().to_string(),
        "--kube",
        "false",
        "--conntrack-netns",
        &format!("/run/netns/{}", gateway.name),
    ]
    .map(String::from)
    .to_vec();
    let mut agent = Agent::start(AgentMode::Run { metrics, extra }).expect("agent");
    let t0 = std::time::Instant::now();

    // Healthy, refused, dropped, and a destination the hop does not serve.
    let ok_src = connect(&client, sa(ORIGIN, 8080)).expect("healthy connect");
    assert_eq!(connect(&client, sa(ORIGIN, 8081)), Err(std::io::ErrorKind::ConnectionRefused));
    let dropped = connect(&client, sa(ORIGIN, 8082));
    assert!(dropped.is_err(), "DROP: the connect must not succeed");
    connect(&client, sa(UNSERVED, 8080)).expect("unserved connect");

    // Client vantage: legs through the hop, named; not bypasses.
    let client_rec = |agent: &mut Agent, dst: SocketAddr| {
        agent
            .wait_for(WAIT, |v| {
                is(v, "dst", &dst.to_string())
                    && is(v, "vantage", "client")
                    && v["src"].as_str().is_some_and(|s| s.starts_with(CLIENT))
            })
            .unwrap_or_else(|e| panic!("client record to {dst}: {e:#}"))
    };
    let r = client_rec(&mut agent, sa(ORIGIN, 8080));
    assert!(is(&r, "hop", HOP) && is(&r, "leg", "client->egw"), "{r}");
    assert!(is(&r, "verdict", "ok") && r["reason"].is_null(), "{r}");
    assert!(is(&r, "src", &ok_src.to_string()), "{r}");
    let r = client_rec(&mut agent, sa(ORIGIN, 8081));
    assert!(is(&r, "verdict", "failed") && is(&r, "reason", "refused"), "{r}");
    assert!(is(&r, "failed_hop", HOP), "named as the first hop on the path: {r}");
    assert!(
        r["evidence"].as_str().is_some_and(|e| e.contains("cannot be told apart")),
        "the client says what it cannot tell: {r}"
    );
    let r = client_rec(&mut agent, sa(ORIGIN, 8082));
    assert!(is(&r, "verdict", "failed") && is(&r, "reason", "timeout"), "{r}");
    assert!(is(&r, "hop", HOP) && is(&r, "failed_hop", HOP), "{r}");
    // Outside the served CIDRs: not the hop's (a bypass, as without it).
    let r = agent
        .wait_for(WAIT, |v| is(v, "dst", &sa(UNSERVED, 8080).to_string()) && v["leg"].is_string())
        .unwrap_or_else(|e| panic!("unserved record: {e:#}"));
    assert!(is(&r, "hop", "direct") && is(&r, "reason", "bypass"), "{r}");

    // Gateway vantage: the forwarded legs, from conntrack, as they end.
    let gw_rec = |agent: &mut Agent, dst: SocketAddr, verdict: &str| {
        let r = agent
            .wait_for(GATEWAY_WAIT, |v| {
                is(v, "vantage", "gateway")
                    && is(v, "dst", &dst.to_string())
                    && is(v, "verdict", verdict)
            })
            .unwrap_or_else(|e| panic!("gateway record to {dst}: {e:#}"));
        eprintln!("gateway record to {dst} after {:?}", t0.elapsed());
        r
    };
    let r = gw_rec(&mut agent, sa(ORIGIN, 8082), "failed");
    assert!(is(&r, "hop", HOP) && is(&r, "reason", "timeout"), "{r}");
    assert!(is(&r, "failed_hop", "internet"), "beyond the gateway: {r}");
    assert!(r["src"].as_str().is_some_and(|s| s.starts_with(CLIENT)), "origin = the client: {r}");
    assert!(r["snat"].as_str().is_some_and(|s| s.starts_with(EGRESS_IP)), "{r}");
    assert!(r["evidence"].as_str().is_some_and(|e| e.contains("no answer from the origin")), "{r}");
    let r = gw_rec(&mut agent, sa(ORIGIN, 8081), "failed");
    assert!(is(&r, "reason", "refused") && is(&r, "failed_hop", "internet"), "{r}");
    let r = gw_rec(&mut agent, sa(ORIGIN, 8080), "ok");
    assert!(is(&r, "src", &ok_src.to_string()) && is(&r, "leg", "client->egw"), "{r}");

    let text = agent.http_get("/metrics").expect("metrics");
    let count = |result| {
        metric_sum(&text, "egress_routed_forwarded_total", &[("hop", HOP), ("result", result)])
    };
    assert_eq!((count("ok"), count("refused"), count("no_reply")), (1.0, 1.0, 1.0), "{text}");
    agent.poll();
    assert!(
        !agent
            .records
            .iter()
            .any(|v| is(v, "vantage", "gateway") && is(v, "dst", &sa(UNSERVED, 8080).to_string())),
        "a destination the hop does not serve is not its forwarded leg"
    );
    agent.stop().expect("agent stop");
}
