//! The gateway vantage: on the machine a `routed` hop runs on (a Cilium
//! egress gateway node, a NAT instance), the flows it forwarded and SNATed
//! to one of the hop's `egress_ips`, judged as their conntrack entries end.
//!
//! There is no socket on the gateway for such a flow: conntrack is the
//! evidence. A flow is the hop's when it was SNATed to one of the hop's
//! `egress_ips` and its destination is one the hop serves (`destinations`,
//! as on the client side: a NAT instance that also SNATs other traffic
//! forwards it outside the chain). The entry's original tuple names the client (`src`, a pod's
//! address) and the destination it asked for; its reply tuple the egress IP
//! and port it left as (`snat`). Its status says what came back from the
//! origin: a completed handshake (`ok`), a reply without one (a reset:
//! `refused`), or nothing (`timeout`, "no answer from the origin"). A
//! failure is placed beyond the gateway: at the next hop, or `internet`.
//!
//! Records go out with `vantage: gateway` and are counted in
//! `egress_routed_forwarded_total{hop,result}` (hop names from the config:
//! bounded). They are not flows of this node's workloads: not in
//! `egress_connections_total`.
use std::{net::IpAddr, time::SystemTime};

use crate::config::Routed;

use prometheus::{IntCounterVec, Registry};

use crate::{
    attribution::nat::{Forwarded, NatTable, OriginAnswer},
    config::{ChainSettings, INTERNET},
    records::{FlowRecord, Phase, Reason, Verdict, mono_now_ns, rfc3339},
    sinks::{MetricError, register as reg},
};

/// The value of a record's `vantage` field for these verdicts.
pub const GATEWAY_VANTAGE: &str = "gateway";

/// A routed hop as its gateway sees it.
#[derive(Debug, Clone)]
struct GatewayHop {
    name: String,
    routed: Routed,
    /// Who sends it flows: the previous hop, or `client`.
    from: String,
    /// Where a failure past it is: the next hop, or `internet`.
    beyond: String,
}

/// The routed hops of the chain that have egress IPs.
fn gateway_hops(chain: &ChainSettings) -> Vec<GatewayHop> {
    let hops = &chain.hops;
    hops.iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let r = h.routed.as_ref().filter(|r| !r.egress_ips.is_empty())?;
            Some(GatewayHop {
                name: h.name.clone(),
                routed: r.clone(),
                from: if i == 0 { "client".to_string() } else { hops[i - 1].name.clone() },
                beyond: hops.get(i + 1).map_or_else(|| INTERNET.to_string(), |n| n.name.clone()),
            })
        })
        .collect()
}

/// Every egress IP a routed hop of `chain` SNATs to (what conntrack watches).
pub fn egress_ips(chain: &ChainSettings) -> Vec<IpAddr> {
    gateway_hops(chain).into_iter().flat_map(|h| h.routed.egress_ips).collect()
}

/// The routed hop a forwarded flow went through: SNATed to its egress IP,
/// to a destination it serves.
fn hop_of<'a>(hops: &'a [GatewayHop], f: &Forwarded) -> Option<&'a GatewayHop> {
    let (ip, dst) = (f.reply.dst.ip(), f.original.dst.ip());
    hops.iter().find(|h| h.routed.egress_ips.contains(&ip) && h.routed.serves(dst))
}

/// The `result` label of a forwarded flow.
fn result(a: OriginAnswer) -> &'static str {
    match a {
        OriginAnswer::Established => "ok",
        OriginAnswer::NotEstablished | OriginAnswer::Reset => "refused",
        OriginAnswer::None => "no_reply",
    }
}

/// The record of one forwarded flow through `hop`.
fn record(f: &Forwarded, hop: &GatewayHop) -> FlowRecord {
    let (src, dst, snat) = (f.original.src, f.original.dst, f.reply.dst);
    let seen = format!("conntrack ({}): {src} -> {dst} SNATed to {snat}", f.netns);
    let (verdict, reason, evidence) = match f.answer {
        OriginAnswer::Established => (Verdict::Ok, None, format!("{seen}: handshake completed")),
        OriginAnswer::NotEstablished => (
            Verdict::Failed,
            Some(Reason::Refused),
            format!(
                "{seen}: the origin answered without completing the handshake (reset): failed beyond the gateway"
            ),
        ),
        OriginAnswer::Reset => (
            Verdict::Failed,
            Some(Reason::Refused),
            format!(
                "{seen}: reset before any reply was recorded (the origin refused the connect): failed beyond the gateway"
            ),
        ),
        OriginAnswer::None => (
            Verdict::Failed,
            Some(Reason::Timeout),
            format!("{seen}: no answer from the origin: failed beyond the gateway"),
        ),
    };
    let now = mono_now_ns();
    FlowRecord {
        time: rfc3339(SystemTime::now()),
        phase: if verdict == Verdict::Ok { Phase::Close } else { Phase::Connect },
        src: Some(src),
        dst: Some(dst),
        dst_actual: (f.reply.src != dst).then_some(f.reply.src),
        snat: Some(snat),
        verdict,
        reason,
        hop: Some(hop.name.clone()),
        leg: Some(format!("{}->{}", hop.from, hop.name)),
        flow_id: format!("ct-{snat}-{dst}-{now:x}"),
        vantage: Some(GATEWAY_VANTAGE.to_string()),
        failed_hop: (verdict == Verdict::Failed).then(|| hop.beyond.clone()),
        evidence: Some(evidence),
        start_mono_ns: now,
        record_mono_ns: now,
        nat_checked: Some(true),
        ..FlowRecord::default()
    }
}

/// The gateway vantage of this agent: the routed hops it may be the gateway
/// of, the conntrack view that reports their forwarded flows, and their counter.
pub struct GatewayVantage {
    hops: Vec<GatewayHop>,
    nat: NatTable,
    forwarded: IntCounterVec,
}

impl GatewayVantage {
    /// None when no routed hop has egress IPs or conntrack is off.
    pub fn new(
        chain: &ChainSettings,
        nat: NatTable,
        registry: &Registry,
    ) -> Result<Option<Self>, MetricError> {
        let hops = gateway_hops(chain);
        if hops.is_empty() || !nat.is_enabled() {
            return Ok(None);
        }
        let forwarded = reg::counter_vec(
            registry,
            "egress_routed_forwarded_total",
            "Flows a routed hop on this machine forwarded (conntrack entries SNATed to its egress_ips), counted as they end, by hop and result: ok (handshake completed), refused (the origin answered without one: a reset), no_reply (no answer from the origin).",
            &["hop", "result"],
        )?;
        for h in &hops {
            for a in [OriginAnswer::Established, OriginAnswer::NotEstablished, OriginAnswer::None] {
                forwarded.with_label_values(&[&h.name, result(a)]);
            }
        }
        Ok(Some(Self { hops, nat, forwarded }))
    }

    /// Records of the forwarded flows that ended since the last call, counted.
    pub fn records(&self) -> Vec<FlowRecord> {
        self.nat
            .take_forwarded()
            .iter()
            .filter_map(|f| {
                let hop = hop_of(&self.hops, f)?;
                self.forwarded.with_label_values(&[&hop.name, result(f.answer)]).inc();
                Some(record(f, hop))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::nat::FlowKey, config::Config};

    fn chain() -> ChainSettings {
        Config::from_yaml(
            "version: 1\nchain:\n  hops:\n    - {name: egw, protocol: routed, match: {destinations: ['203.0.113.0/24'], egress_ips: ['192.0.2.10']}}\n    - {name: nat2, protocol: routed, match: {destinations: ['198.51.100.0/24']}}\n",
        )
        .expect("config")
        .chain
    }

    fn forwarded(answer: OriginAnswer) -> Forwarded {
        let sa = |s: &str| s.parse().expect("addr");
        Forwarded {
            original: FlowKey { src: sa("10.0.1.5:40000"), dst: sa("203.0.113.9:443") },
            reply: FlowKey { src: sa("203.0.113.9:443"), dst: sa("192.0.2.10:40000") },
            answer,
            netns: "self".into(),
        }
    }

    #[test]
    fn only_routed_hops_with_egress_ips_are_watched() {
        let c = chain();
        assert_eq!(egress_ips(&c), vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]);
        let h = gateway_hops(&c);
        assert_eq!((h[0].from.as_str(), h[0].beyond.as_str()), ("client", "nat2"));
        let mut f = forwarded(OriginAnswer::None);
        assert_eq!(hop_of(&h, &f).map(|h| h.name.as_str()), Some("egw"));
        f.original.dst = "198.51.100.1:443".parse().expect("addr");
        assert!(hop_of(&h, &f).is_none(), "SNATed, but to a destination it does not serve");
    }

    #[test]
    fn a_forwarded_flow_is_judged_by_what_came_back_from_the_origin() {
        let h = &gateway_hops(&chain())[0];
        let r = record(&forwarded(OriginAnswer::None), h);
        assert_eq!(
            (r.verdict, r.reason, r.failed_hop.as_deref(), r.vantage.as_deref()),
            (Verdict::Failed, Some(Reason::Timeout), Some("nat2"), Some(GATEWAY_VANTAGE))
        );
        assert_eq!((r.hop.as_deref(), r.leg.as_deref()), (Some("egw"), Some("client->egw")));
        assert_eq!(r.src, Some("10.0.1.5:40000".parse().expect("addr")), "origin: the client");
        assert_eq!(r.snat, Some("192.0.2.10:40000".parse().expect("addr")));
        assert!(r.evidence.as_deref().is_some_and(|e| e.contains("no answer from the origin")));
        for a in [OriginAnswer::NotEstablished, OriginAnswer::Reset] {
            let r = record(&forwarded(a), h);
            assert_eq!((r.verdict, r.reason), (Verdict::Failed, Some(Reason::Refused)), "{a:?}");
            assert_eq!(result(a), "refused");
        }
        let r = record(&forwarded(OriginAnswer::Established), h);
        assert_eq!((r.verdict, r.reason, r.failed_hop), (Verdict::Ok, None, None));
        assert_eq!(r.dst_actual, None, "no DNAT on the gateway");
    }

    #[test]
    fn no_vantage_without_conntrack() {
        let r = Registry::new();
        assert!(GatewayVantage::new(&chain(), NatTable::disabled(), &r).expect("ok").is_none());
    }
}
