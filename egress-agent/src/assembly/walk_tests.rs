//! The walk on records shaped as each machine's agent writes them: the
//! client node's client leg, and on each hop's machine the hop vantage's
//! accepted connection (`src` its peer, `dst_actual` the hop's own address,
//! leg `client->gke-squid` or `gke-squid->gce-proxy` as `legs::classify_accepted`
//! names it), its chain and its upstream legs.
use std::{collections::HashMap, net::SocketAddr};

use super::*;
use crate::records::{ChainRecord, LegSummary, Reason};

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

const CLIENT: &str = "10.0.1.10:43512";
const HOP1: &str = "10.0.2.10:3128";
const HOP1_UP: &str = "10.0.2.10:50001";
const HOP2: &str = "10.128.2.100:3128";
const HOP2_UP: &str = "10.128.2.100:51001";

fn failed(reason: Reason, at: &str) -> (Verdict, Option<Reason>, Option<String>) {
    (Verdict::Failed, Some(reason), Some(at.into()))
}

fn client_leg(v: (Verdict, Option<Reason>, Option<String>), status: Option<u16>) -> FlowRecord {
    FlowRecord {
        flow_id: "a-1".into(),
        leg: Some("client->gke-squid".into()),
        hop: Some("gke-squid".into()),
        vantage: Some("client".into()),
        src: Some(a(CLIENT)),
        dst: Some(a("10.96.0.10:3128")),
        dst_actual: Some(a(HOP1)),
        verdict: v.0,
        reason: v.1,
        failed_hop: v.2,
        proxy_status: status,
        ..FlowRecord::default()
    }
}

/// Where a hop's machine stands in one request: its name, the next hop,
/// the accepted link `peer -> local`, its upstream leg `up_src -> up_dst`.
struct Side {
    hop: &'static str,
    next: &'static str,
    peer: &'static str,
    local: &'static str,
    up_src: &'static str,
    up_dst: &'static str,
}

/// A hop machine's records of one accepted connection and its upstream leg.
fn hop_records(
    side: Side,
    v: (Verdict, Option<Reason>, Option<String>),
    up: (Verdict, Option<Reason>, Option<u16>),
) -> Vec<Record> {
    let Side { hop, next, peer, local, up_src, up_dst } = side;
    let inbound = FlowRecord {
        flow_id: format!("{hop}-in"),
        // As the hop's agent names it: the previous hop of the chain, or
        // `client` before the first.
        leg: Some(format!("{}->{hop}", if hop == "gke-squid" { "client" } else { "gke-squid" })),
        hop: Some(hop.into()),
        vantage: Some(HOP_VANTAGE.into()),
        src: Some(a(peer)),
        dst: Some(a(local)),
        dst_actual: Some(a(local)),
        chain_id: Some(format!("{hop}-c")),
        verdict: v.0,
        reason: v.1,
        failed_hop: v.2,
        ..FlowRecord::default()
    };
    // A degraded upstream leg: its SYN was retransmitted (the agent's
    // connect-time degradation).
    let syn = u32::from(up.0 == Verdict::Degraded);
    let upstream = FlowRecord {
        flow_id: format!("{hop}-up"),
        leg: Some(format!("{hop}->{next}")),
        hop: Some(next.into()),
        src: Some(a(up_src)),
        dst: Some(a(up_dst)),
        verdict: up.0,
        reason: up.1,
        proxy_status: up.2,
        retransmits: syn,
        syn_retransmits: syn,
        ..FlowRecord::default()
    };
    // The hop's own chain, as its stitcher judges it (the walk reads the
    // accepted connection's judgement; the chain gives the upstream legs).
    let chain = ChainRecord {
        chain_id: format!("{hop}-c"),
        legs: [&inbound, &upstream]
            .iter()
            .map(|f| LegSummary {
                flow_id: f.flow_id.clone(),
                leg: f.leg.clone().unwrap_or_default(),
                ..LegSummary::default()
            })
            .collect(),
        verdict: inbound.verdict,
        failed_hop: inbound.failed_hop.clone(),
        reason: inbound.reason,
        vantage: Some(HOP_VANTAGE.into()),
        ..ChainRecord::default()
    };
    vec![Record::Flow(inbound), Record::Flow(upstream), Record::Chain(chain)]
}

/// Agents by hop: (node, its records); a missing hop is an unreachable agent.
struct Fake(HashMap<&'static str, (&'static str, Vec<Record>)>);

impl Fetch for Fake {
    async fn fetch(&self, hop: &str, link: &Link) -> Vec<Result<LinkAnswer, String>> {
        match self.0.get(hop) {
            Some((node, records)) => {
                let (records, truncated) = super::super::select::select(records.iter(), link, 64);
                vec![Ok(LinkAnswer { node: (*node).into(), link: *link, records, truncated })]
            }
            None => vec![Err(format!("agent of {hop} unreachable"))],
        }
    }
}

fn said(w: &Walked) -> String {
    match (w.verdict, &w.failed_hop, w.reason) {
        (v, Some(h), Some(r)) => format!("{} at {h}: {}", v.as_str(), r.as_str()),
        (v, _, _) => v.as_str().to_string(),
    }
}

#[tokio::test]
async fn origin_refused_is_decided_by_the_vm_hop() {
    use Reason::*;
    let fake = Fake(HashMap::from([
        (
            "gke-squid",
            (
                "node-b",
                hop_records(
                    Side {
                        hop: "gke-squid",
                        next: "gce-proxy",
                        peer: CLIENT,
                        local: HOP1,
                        up_src: HOP1_UP,
                        up_dst: HOP2,
                    },
                    failed(ProxyUpstreamError, "gce-proxy"),
                    (Verdict::Failed, Some(ProxyUpstreamError), Some(503)),
                ),
            ),
        ),
        (
            "gce-proxy",
            (
                "gce-vm",
                hop_records(
                    Side {
                        hop: "gce-proxy",
                        next: "internet",
                        peer: HOP1_UP,
                        local: HOP2,
                        up_src: HOP2_UP,
                        up_dst: "198.19.1.11:443",
                    },
                    failed(Refused, "internet"),
                    (Verdict::Failed, Some(Refused), None),
                ),
            ),
        ),
    ]));
    let client = client_leg(failed(ProxyUpstreamError, "gce-proxy"), Some(503));
    let w = walk(&client, "node-a", &fake).await;
    assert_eq!(said(&w), "failed at internet: refused");
    assert_eq!(w.decided_by.as_deref(), Some("hop at gce-proxy (gce-vm)"));
    let legs: Vec<(&str, &str, &str)> =
        w.legs.iter().map(|l| (l.leg.as_str(), l.vantage.as_str(), l.agent.as_str())).collect();
    assert_eq!(
        legs,
        [
            ("client->gke-squid", "client", "node-a"),
            ("client->gke-squid", "hop", "node-b"),
            ("gke-squid->gce-proxy", "hop", "node-b"),
            ("gke-squid->gce-proxy", "hop", "gce-vm"),
            ("gce-proxy->internet", "hop", "gce-vm"),
        ]
    );
    assert!(w.notes.is_empty(), "{:?}", w.notes);
}

#[tokio::test]
async fn a_walk_stops_where_nothing_more_can_be_known_and_says_why() {
    use Reason::*;
    // Hop 1 refused by its parent: hop 1 decides; nothing is asked of hop 2.
    let hop1 = hop_records(
        Side {
            hop: "gke-squid",
            next: "gce-proxy",
            peer: CLIENT,
            local: HOP1,
            up_src: HOP1_UP,
            up_dst: HOP2,
        },
        failed(Refused, "gce-proxy"),
        (Verdict::Failed, Some(Refused), None),
    );
    let fake = Fake(HashMap::from([("gke-squid", ("node-b", hop1.clone()))]));
    let w = walk(&client_leg(failed(Refused, "gce-proxy"), Some(503)), "node-a", &fake).await;
    assert_eq!(said(&w), "failed at gce-proxy: refused");
    assert_eq!(w.views.len(), 2);
    assert_eq!(w.notes, ["the connection to gce-proxy never opened: nothing to ask its agent"]);
    // The client could not connect: its own view is all there is.
    let w = walk(&client_leg(failed(Timeout, "gke-squid"), None), "node-a", &fake).await;
    assert_eq!((said(&w), w.views.len()), ("failed at gke-squid: timeout".into(), 1));
    // Hop 1's agent has no record of this link (no hop vantage there).
    let other = Fake(HashMap::from([("gke-squid", ("node-b", Vec::new()))]));
    let w = walk(&client_leg(failed(ProxyDenied, "gke-squid"), Some(403)), "node-a", &other).await;
    assert_eq!(said(&w), "failed at gke-squid: proxy_denied");
    assert!(
        w.notes[0].starts_with(
            "gke-squid: no record of link 10.0.1.10:43512 -> 10.0.2.10:3128 on node-b"
        ),
        "{:?}",
        w.notes
    );
    // Hop 2's agent unreachable: hop 1's view stands, and the note says so.
    let fake = Fake(HashMap::from([(
        "gke-squid",
        (
            "node-b",
            hop_records(
                Side {
                    hop: "gke-squid",
                    next: "gce-proxy",
                    peer: CLIENT,
                    local: HOP1,
                    up_src: HOP1_UP,
                    up_dst: HOP2,
                },
                (Verdict::Ok, None, None),
                (Verdict::Ok, None, Some(200)),
            ),
        ),
    )]));
    let w = walk(&client_leg((Verdict::Ok, None, None), Some(200)), "node-a", &fake).await;
    assert_eq!(
        (said(&w), w.notes.as_slice()),
        ("ok".into(), ["gce-proxy: agent of gce-proxy unreachable".to_string()].as_slice())
    );
}

#[tokio::test]
async fn a_lost_syn_between_hops_is_hop_1s_to_tell() {
    let fake = Fake(HashMap::from([
        (
            "gke-squid",
            (
                "node-b",
                hop_records(
                    Side {
                        hop: "gke-squid",
                        next: "gce-proxy",
                        peer: CLIENT,
                        local: HOP1,
                        up_src: HOP1_UP,
                        up_dst: HOP2,
                    },
                    // The answer hop 1 sent was a timely 200: its own
                    // judgement of the accepted connection is `ok`.
                    (Verdict::Ok, None, None),
                    (Verdict::Degraded, Some(Reason::Retransmits), Some(200)),
                ),
            ),
        ),
        (
            "gce-proxy",
            (
                "gce-vm",
                hop_records(
                    Side {
                        hop: "gce-proxy",
                        next: "internet",
                        peer: HOP1_UP,
                        local: HOP2,
                        up_src: HOP2_UP,
                        up_dst: "198.19.1.10:443",
                    },
                    (Verdict::Ok, None, None),
                    (Verdict::Ok, None, None),
                ),
            ),
        ),
    ]));
    let w = walk(&client_leg((Verdict::Ok, None, None), Some(200)), "node-a", &fake).await;
    assert_eq!(said(&w), "degraded at gce-proxy: retransmits");
    assert_eq!(
        w.views.iter().map(|v| v.verdict).collect::<Vec<_>>(),
        [Verdict::Ok, Verdict::Degraded, Verdict::Ok]
    );
}

#[tokio::test]
async fn data_retransmits_of_a_slow_machine_do_not_degrade_a_hop() {
    let mut records = hop_records(
        Side {
            hop: "gke-squid",
            next: "gce-proxy",
            peer: CLIENT,
            local: HOP1,
            up_src: HOP1_UP,
            up_dst: HOP2,
        },
        (Verdict::Ok, None, None),
        (Verdict::Degraded, Some(Reason::Retransmits), Some(200)),
    );
    // The upstream leg's close: degraded by tail-loss probes, its SYN answered at once.
    for r in &mut records {
        if let Record::Flow(f) = r
            && f.flow_id == "gke-squid-up"
        {
            f.syn_retransmits = 0;
            f.retransmits = 2;
        }
    }
    let fake = Fake(HashMap::from([("gke-squid", ("node-b", records))]));
    let w = walk(&client_leg((Verdict::Ok, None, None), Some(200)), "node-a", &fake).await;
    assert_eq!(said(&w), "ok");
}
