//! A `protocol: routed` hop (issue 20 part 3): a transparent gateway that
//! forwards and SNATs, seen from both ends by one agent on the host (its
//! probes see every namespace's sockets; its conntrack module follows the
//! gateway's namespace, as an agent on the gateway machine would). The
//! topology is [`egress_tests::routed_lab`]'s (also a `cargo xtask lab`
//! table): client → gateway (SNAT to an egress IP) → origin, with the
//! origin's port 8081 REJECTed, 8082 DROPped, and an unserved destination.
use std::{net::SocketAddr, time::Instant};

use egress_tests::{
    Agent,
    agent::metric_sum,
    require_root,
    routed_lab::{CLIENT, EGRESS_IP, GATEWAY_WAIT, HOP, ORIGIN, RoutedLab, UNSERVED, WAIT, sa},
};
use serde_json::Value;

fn is(v: &Value, field: &str, want: &str) -> bool {
    v[field].as_str() == Some(want)
}

#[test]
fn a_routed_gateway_with_snat_is_a_hop_seen_from_both_ends() {
    require_root!();
    let lab = RoutedLab::new().expect("routed lab");
    let mut agent = lab.agent().expect("agent");
    let t0 = Instant::now();

    // Healthy, refused, dropped, and a destination the hop does not serve.
    let ok_src = lab.connect(sa(ORIGIN, 8080)).expect("client").expect("healthy connect");
    assert_eq!(
        lab.connect(sa(ORIGIN, 8081)).expect("client"),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(lab.connect(sa(ORIGIN, 8082)).expect("client").is_err(), "DROP: no connection");
    lab.connect(sa(UNSERVED, 8080)).expect("client").expect("unserved connect");

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
