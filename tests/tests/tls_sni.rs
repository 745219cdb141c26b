//! TLS server names as targets (issue 20), through the real agent and real
//! TLS. The lab is [`egress_tests::sni_lab`] (also a `cargo xtask lab`
//! table): `openssl s_client` in a client namespace; in the server namespace
//! an SNI-routing passthrough gateway (HAProxy, hop `sni-gw`, `protocol:
//! tls-sni`), a Squid (hop `squid`, CONNECT) and `openssl s_server` origins.
//!
//! | row | path | fault | record of the client's flow |
//! |---|---|---|---|
//! | gateway healthy | client → sni-gw → origin | — | ok, `sni`, target = SNI |
//! | SNI not allowed | client → sni-gw | gateway rejects the name | tls_failed at sni-gw |
//! | origin refused | client → sni-gw → (refused) | no origin listening | tls_failed at sni-gw; the gateway's own leg refused |
//! | tunnel healthy | client → squid → origin | — | ok, 200, `sni` |
//! | TLS failure in a tunnel | client → squid → origin | origin wants TLS 1.3, client offers 1.2 | tls_failed (alert), 200, `sni` |
//! | TLS port | client → origin:443 | — / TLS 1.2 to a TLS 1.3 server | ok / tls_failed, `sni` |
//!
//! Each row compares what `s_client` saw, the client flow's record (verdict,
//! reason, failed hop, leg, proxy status, target or SNI, the TLS alert) and,
//! for the gateway and the failed tunnel, the chain record with its legs.
use std::time::Duration;

use egress_tests::{
    agent::metric_sum,
    demo, require_root,
    sni_lab::{ORIGIN_REFUSED, SniLab, WAIT, rows},
};

#[test]
fn tls_server_names_and_handshake_failures_through_a_gateway_a_tunnel_and_a_tls_port() {
    require_root!();
    let lab = SniLab::new().expect("tls lab");
    let mut agent = lab.agent().expect("agent");

    let rows = rows(&lab, &mut agent).expect("rows");
    demo::print(&rows);
    for r in &rows {
        assert!(r.ok, "{}: expected {:?}, got {:?}", r.name, r.expected, r.got);
    }
    // The gateway's own leg to the refusing origin, as its own record: the
    // origin leg's failure, seen on the gateway's socket.
    let origin_leg = agent
        .wait_for(WAIT, |v| {
            v["dst"] == ORIGIN_REFUSED && v["comm"] == "haproxy" && v["reason"] == "refused"
        })
        .expect("the gateway's refused origin connect");
    assert_eq!(origin_leg["leg"], "sni-gw->internet", "{origin_leg}");

    let text = agent.settled_metrics(Duration::from_secs(5)).expect("scrape");
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[]), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0, "{text}");
    assert!(agent.stop().expect("stop"));
}
