//! The client-vantage stage: a client leg's record (`client->HOP`) gets the
//! verdict its own node can give — from the client's socket and the proxy's
//! answer only ([`super::vantage`]) — whatever else this agent happens to
//! see, so it holds on a node that sees nothing but the client leg.
use super::{
    flow_table::{AnswerEvidence, HOP_VANTAGE},
    vantage::{ClientFacts, ConnectOutcome, HopIdentity, INTERNET, VANTAGE, judge_client},
};
use crate::{
    config::ChainSettings,
    records::{FlowRecord, Phase, Reason, Verdict},
};

/// The chain as the vantage judgement knows it: hop names and the names
/// each proxy writes in its answers.
pub fn identities(chain: &ChainSettings) -> Vec<HopIdentity> {
    chain
        .hops
        .iter()
        .map(|h| HopIdentity { name: h.name.clone(), via_names: h.via_names.clone() })
        .collect()
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
