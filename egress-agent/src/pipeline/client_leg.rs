//! The client-vantage stage: a client leg's record (`client->HOP`) gets the
//! verdict its own node can give — from the client's socket and the proxy's
//! answer only ([`super::vantage`]) — whatever else this agent happens to
//! see, so it holds on a node that sees nothing but the client leg.
use super::{
    flow_table::{AnswerEvidence, HOP_VANTAGE},
    vantage::{ClientFacts, ConnectOutcome, HopIdentity, INTERNET, VANTAGE, judge_client},
};
use crate::{
    config::{ChainSettings, HopProtocol},
    records::{FlowRecord, Phase, Reason, Verdict},
};

/// The chain as the vantage judgement knows it: hop names and the names
/// each proxy writes in its answers.
pub fn identities(chain: &ChainSettings) -> Vec<HopIdentity> {
    chain
        .hops
        .iter()
        .map(|h| HopIdentity {
            name: h.name.clone(),
            via_names: h.via_names.clone(),
            tls_sni: h.protocol == HopProtocol::TlsSni,
        })
        .collect()
}

/// The routed hops (transparent gateways) of the chain, by name.
pub fn routed(chain: &ChainSettings) -> Vec<String> {
    chain.hops.iter().filter(|h| h.routed.is_some()).map(|h| h.name.clone()).collect()
}

/// Judge a client leg through a routed hop (a transparent gateway) from the
/// client's vantage; false when `rec` is not one (then [`judge`] applies).
///
/// The client talks to the origin itself: the gateway writes no answer of
/// its own, so a failed connect cannot be placed between the gateway and the
/// origin from here. The hop is named as the first hop on the path, the
/// reason kept, and the evidence says what the client cannot tell.
pub fn judge_routed(rec: &mut FlowRecord, routed: &[String]) -> bool {
    let Some(hop) = rec.hop.as_deref().filter(|h| routed.iter().any(|r| r == h)) else {
        return false;
    };
    if rec.phase != Phase::Connect || !rec.leg.as_deref().is_some_and(|l| l.starts_with("client->"))
    {
        return false;
    }
    let to = rec.dst_actual.or(rec.dst).map_or_else(|| "?".to_string(), |d| d.to_string());
    let evidence = match rec.verdict {
        Verdict::Failed => {
            let why = rec.reason.map_or("failed", |r| r.as_str());
            let how = if rec.errno == 0 {
                "no errno".to_string()
            } else {
                format!("errno {}", rec.errno)
            };
            format!(
                "connect to {to} through routed hop {hop} {why} ({how}); from the client the gateway and the origin cannot be told apart"
            )
        }
        Verdict::Degraded => format!(
            "connect to {to} through routed hop {hop} after {} SYN retransmits; the client cannot tell where they were lost",
            rec.syn_retransmits
        ),
        _ => format!("connect to {to} through routed hop {hop} established (the origin answered)"),
    };
    rec.failed_hop =
        matches!(rec.verdict, Verdict::Failed | Verdict::Degraded).then(|| hop.to_string());
    rec.vantage = Some(VANTAGE.to_string());
    rec.evidence = Some(evidence);
    true
}

/// Judge `rec` from the client's vantage if it is a client leg's connect
/// record (its leg and hop already known).
///
/// A hop's accepted connection (`vantage` already `hop`) is judged the same
/// way from the answer the hop sent its client: the chain from that hop on,
/// as the hop's own machine sees it.
pub fn judge(rec: &mut FlowRecord, ev: Option<&AnswerEvidence>, chain: &[HopIdentity]) {
    let accepted = rec.vantage.as_deref() == Some(HOP_VANTAGE);
    if rec.phase != Phase::Connect
        || !(accepted || rec.leg.as_deref().is_some_and(|l| l.starts_with("client->")))
    {
        return;
    }
    let Some(client_hop) = rec.hop.as_deref().and_then(|h| chain.iter().position(|c| c.name == h))
    else {
        return;
    };
    let peer = rec.dst.map(|d| d.to_string());
    let connect = if rec.verdict == Verdict::Failed && ev.is_none() && !accepted {
        ConnectOutcome::Failed { errno: rec.errno, reason: rec.reason }
    } else {
        ConnectOutcome::Established
    };
    if connect == ConnectOutcome::Established && chain[client_hop].tls_sni {
        judge_sni_hop(rec, ev, &chain[client_hop].name, accepted);
        return;
    }
    let facts = ClientFacts {
        client_hop,
        peer: peer.as_deref(),
        connect,
        answer: ev.and_then(|e| e.answer.as_ref()),
        body: ev.map_or(&[][..], |e| e.body.as_slice()),
        body_bytes_total: ev.and_then(|e| e.body_bytes_total),
        closed: ev.map(|e| e.closed),
        answer_ms: ev.and_then(|e| e.answer_ms),
        retransmits: rec.retransmits,
    };
    let v = judge_client(chain, &facts);
    rec.vantage = Some(if accepted { HOP_VANTAGE } else { VANTAGE }.to_string());
    // The client's own degradation (its SYN retransmits to the proxy) stands
    // when the answer itself was fine.
    if !(v.verdict == Verdict::Ok && rec.verdict == Verdict::Degraded) {
        rec.verdict = v.verdict;
        rec.reason = v.reason;
    }
    rec.failed_hop = match rec.verdict {
        Verdict::Degraded => rec.hop.clone(),
        _ => v.failed_hop,
    };
    rec.evidence = Some(v.evidence);
    // The tunnel opened (the proxy's answer was fine) and the TLS handshake
    // inside it failed: past the last hop, at the origin.
    if let Some(why) = ev.and_then(|e| e.tls_failure.as_ref())
        && matches!(rec.verdict, Verdict::Ok | Verdict::Degraded)
    {
        rec.verdict = Verdict::Failed;
        rec.reason = Some(Reason::TlsFailed);
        rec.failed_hop = Some(INTERNET.to_string());
        rec.evidence = Some(why.clone());
    }
}

/// A client leg to an SNI router (`protocol: tls-sni`), established: no
/// answer of its own; the TLS start through it decides. A ClientHello
/// answered by an alert, or by a reset or close with nothing back, is this
/// hop's failure (the SNI not allowed, or its origin leg failed: the
/// gateway's own upstream leg, where an agent sees it, says which).
fn judge_sni_hop(rec: &mut FlowRecord, ev: Option<&AnswerEvidence>, hop: &str, accepted: bool) {
    rec.vantage = Some(if accepted { HOP_VANTAGE } else { VANTAGE }.to_string());
    let name = rec.sni.as_deref().map_or_else(String::new, |n| format!(" for {n}"));
    if let Some(why) = ev.and_then(|e| e.tls_failure.as_ref()) {
        rec.verdict = Verdict::Failed;
        rec.reason = Some(Reason::TlsFailed);
        rec.failed_hop = Some(hop.to_string());
        rec.evidence = Some(format!("{why} (through {hop})"));
        return;
    }
    let start = ev.and_then(|e| e.tls.as_ref());
    rec.evidence = Some(match start {
        Some(t) if t.settled() => format!("TLS handshake went on through {hop}{name}"),
        Some(_) => format!("ClientHello{name} sent through {hop}; nothing back yet"),
        None => format!("no ClientHello seen through {hop}"),
    });
    rec.failed_hop = (rec.verdict == Verdict::Degraded).then(|| hop.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tls::{TlsOutcome, TlsStart};

    fn chain() -> Vec<HopIdentity> {
        vec![HopIdentity { name: "istio-egress".into(), via_names: vec![], tls_sni: true }]
    }

    fn leg(verdict: Verdict) -> FlowRecord {
        FlowRecord {
            leg: Some("client->istio-egress".into()),
            hop: Some("istio-egress".into()),
            sni: Some("api.example.test".into()),
            verdict,
            ..FlowRecord::default()
        }
    }

    fn evidence(server: Option<TlsOutcome>, failure: Option<&str>) -> AnswerEvidence {
        AnswerEvidence {
            tls: Some(TlsStart { hello: true, sni: Some("api.example.test".into()), server }),
            tls_failure: failure.map(str::to_string),
            closed: failure.is_some(),
            ..AnswerEvidence::default()
        }
    }

    #[test]
    fn an_sni_router_is_judged_by_the_tls_start_through_it() {
        let mut ok = leg(Verdict::Ok);
        judge(&mut ok, Some(&evidence(Some(TlsOutcome::Handshake), None)), &chain());
        assert_eq!((ok.verdict, ok.reason, ok.failed_hop.as_deref()), (Verdict::Ok, None, None));
        assert_eq!(ok.vantage.as_deref(), Some(VANTAGE));
        assert_eq!(
            ok.evidence.as_deref(),
            Some("TLS handshake went on through istio-egress for api.example.test")
        );

        let why = "TLS: reset after the ClientHello for api.example.test, no handshake bytes back";
        let mut bad = leg(Verdict::Ok);
        judge(&mut bad, Some(&evidence(None, Some(why))), &chain());
        assert_eq!(
            (bad.verdict, bad.reason, bad.failed_hop.as_deref()),
            (Verdict::Failed, Some(Reason::TlsFailed), Some("istio-egress"))
        );
        assert_eq!(bad.evidence, Some(format!("{why} (through istio-egress)")));

        // A connect to the router that failed is a connect failure, as for any hop.
        let mut refused = leg(Verdict::Failed);
        (refused.reason, refused.errno) = (Some(Reason::Refused), 111);
        judge(&mut refused, None, &chain());
        assert_eq!(
            (refused.reason, refused.failed_hop.as_deref()),
            (Some(Reason::Refused), Some("istio-egress"))
        );
    }

    #[test]
    fn a_tls_failure_inside_an_opened_tunnel_is_the_origins() {
        let proxy = vec![HopIdentity { name: "squid".into(), via_names: vec![], tls_sni: false }];
        let mut r = leg(Verdict::Ok);
        (r.leg, r.hop, r.proxy_status) =
            (Some("client->squid".into()), Some("squid".into()), Some(200));
        let answer =
            crate::pipeline::vantage::parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let ev = AnswerEvidence {
            answer,
            ..evidence(
                Some(TlsOutcome::Alert {
                    level: crate::pipeline::tls::AlertLevel::Fatal,
                    description: 40,
                }),
                Some("TLS: fatal alert"),
            )
        };
        judge(&mut r, Some(&ev), &proxy);
        assert_eq!(
            (r.verdict, r.reason, r.failed_hop.as_deref(), r.evidence.as_deref()),
            (Verdict::Failed, Some(Reason::TlsFailed), Some(INTERNET), Some("TLS: fatal alert"))
        );
    }
}

#[cfg(test)]
mod routed_tests {
    use super::*;
    use crate::records::Reason;

    fn leg(verdict: Verdict, reason: Option<Reason>, errno: i32) -> FlowRecord {
        FlowRecord {
            dst: Some("203.0.113.9:443".parse().expect("addr")),
            hop: Some("egw".into()),
            leg: Some("client->egw".into()),
            verdict,
            reason,
            errno,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn a_routed_leg_names_the_gateway_and_keeps_the_reason_without_claiming_more() {
        let routed = vec!["egw".to_string()];
        let mut r = leg(Verdict::Failed, Some(Reason::Refused), libc::ECONNREFUSED);
        assert!(judge_routed(&mut r, &routed));
        assert_eq!(
            (r.verdict, r.reason, r.failed_hop.as_deref(), r.vantage.as_deref()),
            (Verdict::Failed, Some(Reason::Refused), Some("egw"), Some(VANTAGE))
        );
        let ev = r.evidence.unwrap_or_default();
        assert!(ev.contains("routed hop egw refused (errno 111)"), "{ev}");
        assert!(ev.contains("cannot be told apart"), "{ev}");

        let mut r = leg(Verdict::Ok, None, 0);
        assert!(judge_routed(&mut r, &routed));
        assert_eq!((r.verdict, r.failed_hop), (Verdict::Ok, None));
        assert!(r.evidence.is_some_and(|e| e.contains("established")));

        // Not routed, or not a client leg's connect: left to the proxy judgement.
        let mut r = leg(Verdict::Failed, Some(Reason::Timeout), libc::ETIMEDOUT);
        assert!(!judge_routed(&mut r, &["other".to_string()]));
        r.phase = Phase::Close;
        assert!(!judge_routed(&mut r, &routed));
        assert_eq!(r.evidence, None);
    }
}
