//! Tests of the stitcher: legs joined into chains in any order, links bounded and expiring.
use super::*;

const C: &str = "client->gke-squid";
const H: &str = "gke-squid->gce-proxy";
const O: &str = "gce-proxy->internet";

fn rec(
    leg: &str,
    hop: &str,
    start: u64,
    end: u64,
    target: Option<&str>,
    status: Option<u16>,
    verdict: Verdict,
) -> FlowRecord {
    FlowRecord {
        leg: Some(leg.into()),
        hop: Some(hop.into()),
        start_mono_ns: start,
        record_mono_ns: end,
        target: target.map(str::to_string),
        proxy_status: status,
        verdict,
        dst: Some("203.0.113.5:443".parse().expect("addr")),
        ..FlowRecord::default()
    }
}

/// Feed `r`; the chain it completes once everything settled.
fn chain(s: &mut Stitcher, mut r: FlowRecord) -> Option<ChainRecord> {
    assert!(s.on_record(&mut r).is_none(), "a client leg's chain waits to settle");
    s.tick(None).pop()
}

#[test]
fn links_seen_twice_expire() {
    let mut s = Stitcher::default();
    let dst: SocketAddr = "10.96.0.10:3128".parse().expect("addr");
    // 20k flows, each seen at its connect and at its close.
    for port in 0..20_000u16 {
        let src = SocketAddr::from(([10, 0, 0, 7], 20_000 + port));
        let t = u64::from(port) * 1_000;
        for when in [t, t + 500] {
            let r = FlowRecord {
                src: Some(src),
                dst_actual: Some(dst),
                record_mono_ns: when,
                ..FlowRecord::default()
            };
            s.note_link(&r);
        }
    }
    assert!(s.links.len() <= KEEP_MAX, "{} links kept", s.links.len());
    // Long after: one more sighting expires every earlier one.
    let late = SocketAddr::from(([10, 0, 0, 8], 40_000));
    s.note_link(&FlowRecord {
        src: Some(late),
        dst_actual: Some(dst),
        record_mono_ns: 20_000_000 + KEEP_NS + 1,
        ..FlowRecord::default()
    });
    assert_eq!(s.links.len(), 2, "only the last flow's two keys stay");
    assert!(s.link_order.len() <= 2 * KEEP_MAX);
}

#[test]
fn stitches_by_target_and_time() {
    use Verdict::{Failed, Ok};
    let mut s = Stitcher::default();
    let t = Some("login.example.test:443");
    // Another request's legs, outside the time window: not joined.
    assert!(s.on_record(&mut rec(H, "gce-proxy", 5, 6, t, Some(200), Ok)).is_none());
    assert!(s.on_record(&mut rec(O, "internet", 120, 130, None, None, Failed)).is_none());
    assert!(s.on_record(&mut rec(H, "gce-proxy", 110, 140, t, Some(503), Failed)).is_none());
    let mut client = rec(C, "gke-squid", 100, 150, t, Some(503), Failed);
    assert!(s.on_record(&mut client).is_none());
    let c = s.tick(None).pop().expect("chain");
    assert_eq!(c.legs.len(), 3, "{c:?}");
    assert_eq!(c.failed_hop.as_deref(), Some("internet"));
    assert_eq!(client.chain_id.as_deref(), Some(c.chain_id.as_str()), "id given at once");
    assert_eq!(s.upstream.len(), 1, "the unrelated leg stays");
    // The next proxy refused the connect: no CONNECT line on that leg.
    assert!(s.on_record(&mut rec(H, "gce-proxy", 210, 211, None, None, Failed)).is_none());
    let c = chain(&mut s, rec(C, "gke-squid", 200, 260, t, Some(503), Failed)).expect("chain");
    assert_eq!((c.legs.len(), c.failed_hop.as_deref()), (2, Some("gce-proxy")));
    // hop 2 answers 503 because it could not resolve the target: dns_failed.
    let dns = DnsRecord {
        asked_by: Some("gce-proxy".into()),
        name: "login.example.test".into(),
        reason: Some(Reason::DnsFailed),
        record_mono_ns: 305,
        ..Default::default()
    };
    s.on_dns(&dns);
    assert!(s.on_record(&mut rec(H, "gce-proxy", 302, 310, t, Some(500), Failed)).is_none());
    let c = chain(&mut s, rec(C, "gke-squid", 300, 320, t, Some(500), Failed)).expect("chain");
    assert_eq!((c.failed_hop.as_deref(), c.reason), (Some("gce-proxy"), Some(Reason::DnsFailed)));
    // The same 503 without a failed lookup stays an upstream error.
    assert!(s.on_record(&mut rec(H, "gce-proxy", 402, 410, t, Some(503), Failed)).is_none());
    let c = chain(&mut s, rec(C, "gke-squid", 400, 420, t, Some(503), Failed)).expect("chain");
    assert_eq!(c.reason, Some(Reason::ProxyUpstreamError));
    // A bypass is a chain of one, at once.
    let c = s.on_record(&mut rec(DIRECT, DIRECT, 1, 2, None, None, Failed)).expect("chain");
    assert_eq!((c.failed_hop.as_deref(), c.reason), (Some("direct"), Some(Reason::Bypass)));
}

#[test]
fn legs_are_joined_whatever_order_they_arrive_in() {
    use Verdict::Failed;
    let t = Some("login.example.test:443");
    let mut s = Stitcher::default();
    // The client leg first (its upstream legs waited for conntrack).
    let mut client = rec(C, "gke-squid", 100, 150, t, Some(503), Failed);
    assert!(s.on_record(&mut client).is_none());
    assert!(s.tick(Some(150 + SETTLE_NS - 1)).is_empty(), "still settling");
    assert!(s.on_record(&mut rec(O, "internet", 120, 130, None, None, Failed)).is_none());
    assert!(s.on_record(&mut rec(H, "gce-proxy", 110, 140, t, Some(503), Failed)).is_none());
    let c = s.tick(Some(150 + SETTLE_NS)).pop().expect("chain");
    assert_eq!((c.legs.len(), c.failed_hop.as_deref(), c.revision), (3, Some("internet"), 0));
    // Later than the settling: the judged chain is amended.
    let mut client = rec(C, "gke-squid", 200, 260, t, Some(503), Failed);
    assert!(s.on_record(&mut client).is_none());
    let first = s.tick(Some(260 + SETTLE_NS)).pop().expect("chain");
    assert_eq!((first.legs.len(), first.failed_hop.as_deref()), (1, Some("gke-squid")));
    let amended =
        s.on_record(&mut rec(H, "gce-proxy", 210, 211, None, None, Failed)).expect("amended chain");
    assert_eq!(
        (amended.chain_id.as_str(), amended.revision, amended.legs.len()),
        (first.chain_id.as_str(), 1, 2)
    );
    assert_eq!(amended.failed_hop.as_deref(), Some("gce-proxy"));
    // The origin leg of that hop amends it again, to the end of the chain.
    let again =
        s.on_record(&mut rec(O, "internet", 210, 211, None, None, Failed)).expect("amended");
    assert_eq!((again.revision, again.legs.len()), (2, 3));
    // Past the amending window a leg is just kept.
    assert!(s.tick(Some(260 + AMEND_NS)).is_empty());
    assert!(s.on_record(&mut rec(H, "gce-proxy", 220, 230, None, None, Failed)).is_none());
}

#[test]
fn an_accepted_connections_close_roots_no_second_chain() {
    let peer: SocketAddr = "10.8.0.7:40000".parse().expect("addr");
    let local: SocketAddr = "10.9.0.2:3128".parse().expect("addr");
    let accepted = |phase, verdict| FlowRecord {
        vantage: Some(HOP_VANTAGE.into()),
        src: Some(peer),
        dst: Some(local),
        dst_actual: Some(local),
        phase,
        ..rec(C, "gke-squid", 100, 150, Some("login.example.test:443"), Some(200), verdict)
    };
    let mut s = Stitcher::default();
    assert!(s.on_record(&mut accepted(Phase::Connect, Verdict::Ok)).is_none());
    // Its close, degraded by data retransmits (a slow machine's tail-loss probes).
    assert!(s.on_record(&mut accepted(Phase::Close, Verdict::Degraded)).is_none());
    let chains = s.tick(None);
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(chains[0].verdict, Verdict::Ok);
}

#[test]
fn an_accepted_connection_roots_a_hop_chain_unless_its_client_end_is_local() {
    use Verdict::{Failed, Ok};
    let t = Some("login.example.test:443");
    let peer: SocketAddr = "10.8.0.7:40000".parse().expect("addr");
    let local: SocketAddr = "10.9.0.2:3128".parse().expect("addr");
    let accepted = |start, end| FlowRecord {
        vantage: Some(HOP_VANTAGE.into()),
        src: Some(peer),
        dst: Some(local),
        dst_actual: Some(local),
        pod: Some("squid-0".into()),
        ..rec(C, "gke-squid", start, end, t, Some(503), Failed)
    };
    // The client is on another machine: the hop's chain, from its leg on.
    let mut s = Stitcher::default();
    assert!(s.on_record(&mut rec(H, "gce-proxy", 110, 140, t, Some(503), Failed)).is_none());
    assert!(s.on_record(&mut rec(O, "internet", 120, 130, None, None, Failed)).is_none());
    let mut a = accepted(100, 150);
    assert!(s.on_record(&mut a).is_none());
    let c = s.tick(Some(150 + SETTLE_NS)).pop().expect("hop chain");
    assert_eq!(c.vantage.as_deref(), Some(HOP_VANTAGE));
    assert_eq!((c.legs.len(), c.failed_hop.as_deref()), (3, Some("internet")), "{c:?}");
    assert_eq!((c.src, c.pod.as_deref()), (Some(peer), None), "the requester is the peer");
    assert_eq!(a.chain_id.as_deref(), Some(c.chain_id.as_str()));
    // The client end seen here too (its leg's source and real
    // destination are the accepted connection's peer and local
    // address): one chain, rooted at the client's leg.
    let mut s = Stitcher::default();
    let mut client = FlowRecord {
        src: Some(peer),
        dst: Some("10.96.0.10:3128".parse().expect("addr")),
        dst_actual: Some(local),
        ..rec(C, "gke-squid", 99, 151, t, Some(200), Ok)
    };
    assert!(s.on_record(&mut accepted(100, 150)).is_none());
    assert!(s.on_record(&mut client).is_none());
    let chains = s.tick(None);
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert_eq!(chains[0].vantage, None);
    // Through SNAT, the far end saw the SNAT source.
    let mut s = Stitcher::default();
    let mut client = FlowRecord {
        src: Some("192.168.1.5:1234".parse().expect("addr")),
        snat: Some(peer),
        dst_actual: Some(local),
        ..rec(C, "gke-squid", 99, 151, t, Some(200), Ok)
    };
    assert!(s.on_record(&mut client).is_none());
    assert!(s.on_record(&mut accepted(100, 150)).is_none());
    assert_eq!(s.tick(None).len(), 1);
    // The DNAT not known here (conntrack off): the client's own socket,
    // its source address and port, is still the accepted peer.
    let mut s = Stitcher::default();
    let service: SocketAddr = "10.96.0.10:3128".parse().expect("addr");
    let mut client = FlowRecord {
        src: Some(peer),
        dst: Some(service),
        dst_actual: Some(service),
        ..rec(C, "gke-squid", 99, 151, t, Some(200), Ok)
    };
    assert!(s.on_record(&mut client).is_none());
    assert!(s.on_record(&mut accepted(100, 150)).is_none());
    assert_eq!(s.tick(None).len(), 1, "one chain: the client's");
}

#[test]
fn an_sni_routers_origin_leg_is_joined_by_server_name_or_time() {
    use Verdict::{Failed, Ok};
    const G: &str = "client->sni-gw";
    const U: &str = "sni-gw->internet";
    let sni = |mut r: FlowRecord, name: &str| {
        r.sni = Some(name.to_string());
        r
    };
    let t = Some("api.example.test:8443");
    let mut s = Stitcher::default();
    // Another name's origin leg in the same window: not this chain's.
    let mut other = sni(rec(U, "internet", 105, 106, None, None, Ok), "other.test");
    assert!(s.on_record(&mut other).is_none());
    // The origin on another port than the gateway's, its name read there.
    let mut origin = sni(rec(U, "internet", 110, 120, None, None, Ok), "api.example.test");
    assert!(s.on_record(&mut origin).is_none());
    let gw = sni(rec(G, "sni-gw", 100, 150, t, None, Ok), "api.example.test");
    let c = chain(&mut s, gw).expect("chain");
    assert_eq!((c.legs.len(), c.sni.as_deref()), (2, Some("api.example.test")), "{c:?}");
    assert_eq!(c.legs[1].verdict, Ok);

    // A refused origin connect never sent a hello: time alone joins it, and
    // it explains the router's close.
    let mut refused = rec(U, "internet", 210, 211, None, None, Failed);
    refused.reason = Some(Reason::Refused);
    assert!(s.on_record(&mut refused).is_none());
    let mut gw = sni(rec(G, "sni-gw", 200, 260, t, None, Failed), "api.example.test");
    gw.reason = Some(Reason::TlsFailed);
    let c = chain(&mut s, gw.clone()).expect("chain");
    assert_eq!(
        (c.legs.len(), c.failed_hop.as_deref(), c.reason),
        (2, Some("internet"), Some(Reason::Refused)),
        "{c:?}"
    );
    // Nothing failed past it: the router's own (the name not allowed).
    (gw.start_mono_ns, gw.record_mono_ns) = (300, 360);
    let c = chain(&mut s, gw).expect("chain");
    assert_eq!(
        (c.legs.len(), c.failed_hop.as_deref(), c.reason),
        (1, Some("sni-gw"), Some(Reason::TlsFailed)),
        "{c:?}"
    );
    // A TLS failure inside a tunnel that opened: the origin's.
    let mut tunnel = sni(rec(C, "gke-squid", 400, 460, t, Some(200), Failed), "x.test");
    tunnel.reason = Some(Reason::TlsFailed);
    let c = chain(&mut s, tunnel).expect("chain");
    assert_eq!((c.failed_hop.as_deref(), c.reason), (Some("internet"), Some(Reason::TlsFailed)));
}
