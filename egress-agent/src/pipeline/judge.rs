//! The verdict stage: what a flow's kernel facts, a proxy's status line and
//! the legs of a chain say happened. Pure functions over records; the flow
//! table and the stitcher call them.
use crate::records::{DNS_TIMEOUT, LegSummary, Reason, Verdict};

use crate::config::INTERNET;

/// Inputs a verdict is drawn from, as the kernel reported them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    /// `sk_err` at the transition, or the errno joined from `inet_sk_error_report`.
    pub errno: i32,
    pub reset_seen: bool,
    pub syn_retransmits: u32,
    pub retransmits: u32,
}

/// Reason of a connect that never reached ESTABLISHED.
pub fn connect_failure(f: &Facts) -> Reason {
    match f.errno {
        libc::ECONNREFUSED => Reason::Refused,
        libc::ETIMEDOUT => Reason::Timeout,
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => {
            Reason::Unreachable
        }
        libc::ECONNRESET => Reason::Reset,
        0 if f.reset_seen => Reason::Refused,
        // No error but SYNs went unanswered: the application gave up first
        // (e.g. curl --connect-timeout): still a connect timeout.
        0 if f.syn_retransmits > 0 => Reason::Timeout,
        _ => Reason::Other,
    }
}

/// Verdict of a connect that succeeded.
pub fn connected(f: &Facts, threshold: u32) -> (Verdict, Option<Reason>) {
    if threshold > 0 && f.syn_retransmits >= threshold {
        (Verdict::Degraded, Some(Reason::Retransmits))
    } else {
        (Verdict::Ok, None)
    }
}

/// Verdict of an established connection at its close.
pub fn closed(f: &Facts, threshold: u32) -> (Verdict, Option<Reason>) {
    if f.reset_seen || f.errno == libc::ECONNRESET {
        (Verdict::Failed, Some(Reason::Reset))
    } else if f.errno == libc::ETIMEDOUT {
        (Verdict::Failed, Some(Reason::Timeout))
    } else if threshold > 0 && f.retransmits >= threshold {
        (Verdict::Degraded, Some(Reason::Retransmits))
    } else {
        (Verdict::Ok, None)
    }
}

/// Verdict of a proxy's answer to a CONNECT (or proxied request).
pub fn proxy_status(status: u16) -> (Verdict, Option<Reason>) {
    match status {
        200..=399 => (Verdict::Ok, None),
        403 | 407 => (Verdict::Failed, Some(Reason::ProxyDenied)),
        502..=504 => (Verdict::Failed, Some(Reason::ProxyUpstreamError)),
        _ => (Verdict::Failed, Some(Reason::Other)),
    }
}

/// Verdict of a DNS lookup, by its rcode: NXDOMAIN, SERVFAIL, REFUSED and no
/// answer in time (`timeout`) are failed lookups.
pub fn lookup(rcode: &str) -> (Verdict, Option<Reason>) {
    if matches!(rcode, "NXDOMAIN" | "SERVFAIL" | "REFUSED" | DNS_TIMEOUT) {
        (Verdict::Failed, Some(Reason::DnsFailed))
    } else {
        (Verdict::Ok, None)
    }
}

/// The hop that broke, from the legs in chain order.
///
/// A proxy's answer is relayed unchanged downstream, so a status is blamed on
/// the deepest leg that explains it: the first leg whose *connect* failed
/// (that hop is unreachable), else the deepest leg carrying the same error
/// status (that hop answered it), else — a 5xx with no upstream leg that
/// explains it — the hop that answered, for an upstream it could not reach.
pub fn judge(legs: &[LegSummary]) -> (Verdict, Option<String>, Option<Reason>) {
    let Some(client) = legs.first() else { return (Verdict::Ok, None, None) };
    // A leg that failed without a proxy answer: its connect failed (or it was
    // cut): the hop it went to is where the chain broke. A TLS failure
    // through an SNI router is explained by a failed leg past it (the router
    // closes on its origin's refusal).
    let cut = |l: &&LegSummary| l.verdict == Verdict::Failed && l.proxy_status.is_none();
    if let Some(l) = legs
        .iter()
        .filter(cut)
        .find(|l| l.reason != Some(Reason::TlsFailed))
        .or_else(|| legs.iter().find(cut))
    {
        return (Verdict::Failed, Some(l.hop.clone()), l.reason);
    }
    match client.proxy_status {
        Some(s) if s >= 400 => {
            let deepest = legs.iter().rev().find(|l| l.proxy_status == Some(s)).unwrap_or(client);
            let reason = proxy_status(s).1;
            // A 5xx from the deepest proxy with no failed upstream leg: the
            // failure is past it (origin side), or it could not resolve/reach
            // an upstream we do not see.
            let hop = if reason == Some(Reason::ProxyUpstreamError)
                && deepest.hop == legs.last().map_or("", |l| l.hop.as_str())
            {
                if legs.len() > 1 && legs.last().is_some_and(|l| l.hop == INTERNET) {
                    INTERNET.to_string()
                } else {
                    deepest.hop.clone()
                }
            } else {
                deepest.hop.clone()
            };
            (Verdict::Failed, Some(hop), reason)
        }
        // The tunnel opened and the TLS handshake inside it failed: the origin's.
        _ if client.verdict == Verdict::Failed && client.reason == Some(Reason::TlsFailed) => {
            (Verdict::Failed, Some(INTERNET.to_string()), Some(Reason::TlsFailed))
        }
        _ => match legs.iter().find(|l| l.verdict == Verdict::Degraded) {
            Some(l) => (Verdict::Degraded, Some(l.hop.clone()), l.reason),
            // The client's proxy answer was never seen: not known.
            None if client.verdict == Verdict::Unknown => (Verdict::Unknown, None, None),
            None => (Verdict::Ok, None, None),
        },
    }
}

/// The verdict of a hop's chain as its own machine sees it: `accepted`, the
/// hop vantage's judgement of the answer the hop gave its client (status and
/// headers: which hop past it failed, and why), and the hop's own `upstream`
/// legs of that request, in chain order.
///
/// - a failure: the accepted connection's judgement (the answer relayed
///   back names the hop that made it better than the legs' statuses do);
///   `legs`, the legs' own judgement, where that names no hop; the accepted
///   connection's own degradation likewise (first in chain order);
/// - otherwise `degraded` only on evidence a slow machine does not fake: an
///   upstream leg the agent judged degraded at its connect whose SYN was
///   retransmitted (no SYN-ACK for a whole initial RTO). Data retransmits
///   (tail-loss probes and spurious timeouts of a slow or loaded machine,
///   as under emulation) and a slow answer leave the hop's verdict alone;
///   the legs keep their own records;
/// - otherwise the accepted connection's judgement (`ok`, or `unknown` when
///   its answer was not seen).
pub fn hop_chain<'a>(
    accepted: (Verdict, Option<String>, Option<Reason>),
    upstream: impl IntoIterator<Item = &'a LegSummary>,
    legs: impl FnOnce() -> (Verdict, Option<String>, Option<Reason>),
) -> (Verdict, Option<String>, Option<Reason>) {
    // Its own (a failure, or its own client leg's SYN retransmitted: first
    // in chain order).
    match accepted {
        (Verdict::Failed, None, _) => return legs(),
        (Verdict::Failed | Verdict::Degraded, ..) => return accepted,
        _ => {}
    }
    match upstream.into_iter().find(|l| l.verdict == Verdict::Degraded && l.syn_retransmits > 0) {
        Some(l) => (Verdict::Degraded, Some(l.hop.clone()), Some(Reason::Retransmits)),
        None => accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(errno: i32, reset_seen: bool, syn: u32, all: u32) -> Facts {
        Facts { errno, reset_seen, syn_retransmits: syn, retransmits: all }
    }

    #[test]
    fn connect_failures() {
        assert_eq!(connect_failure(&f(libc::ECONNREFUSED, true, 0, 0)), Reason::Refused);
        assert_eq!(connect_failure(&f(libc::ETIMEDOUT, false, 6, 6)), Reason::Timeout);
        assert_eq!(connect_failure(&f(libc::EHOSTUNREACH, false, 1, 1)), Reason::Unreachable);
        assert_eq!(connect_failure(&f(libc::ENETUNREACH, false, 0, 0)), Reason::Unreachable);
        // BTF offset unknown: fall back on what the tracepoints saw.
        assert_eq!(connect_failure(&f(0, true, 0, 0)), Reason::Refused);
        assert_eq!(connect_failure(&f(0, false, 2, 2)), Reason::Timeout);
        assert_eq!(connect_failure(&f(0, false, 0, 0)), Reason::Other);
        assert_eq!(connect_failure(&f(libc::EACCES, false, 0, 0)), Reason::Other);
    }

    #[test]
    fn proxy_statuses() {
        assert_eq!(proxy_status(200), (Verdict::Ok, None));
        assert_eq!(proxy_status(403), (Verdict::Failed, Some(Reason::ProxyDenied)));
        assert_eq!(proxy_status(407), (Verdict::Failed, Some(Reason::ProxyDenied)));
        for s in [502, 503, 504] {
            assert_eq!(proxy_status(s), (Verdict::Failed, Some(Reason::ProxyUpstreamError)));
        }
        assert_eq!(proxy_status(400), (Verdict::Failed, Some(Reason::Other)));
    }

    #[test]
    fn a_hops_chain_degrades_on_syn_retransmits_only() {
        use Verdict::{Degraded, Failed, Ok};
        let up = |verdict, syn, all| LegSummary {
            leg: "gke-squid->gce-proxy".into(),
            hop: "gce-proxy".into(),
            verdict,
            reason: (verdict == Degraded).then_some(Reason::Retransmits),
            proxy_status: Some(200),
            retransmits: all,
            syn_retransmits: syn,
            ..LegSummary::default()
        };
        let ok = (Ok, None, None);
        let none = || (Verdict::Unknown, None, None);
        // Its SYN to hop 2 was lost once: degraded at hop 2.
        assert_eq!(
            hop_chain(ok.clone(), &[up(Degraded, 1, 1)], none),
            (Degraded, Some("gce-proxy".into()), Some(Reason::Retransmits))
        );
        // Data retransmits of a slow machine (tail-loss probes): the answer's ok stands.
        assert_eq!(hop_chain(ok.clone(), &[up(Degraded, 0, 2)], none), ok);
        // Under the agent's threshold: not degraded.
        assert_eq!(hop_chain(ok.clone(), &[up(Ok, 1, 1)], none), ok);
        // A failure is the answer's judgement (it names the hop that made it).
        let failed = (Failed, Some("internet".into()), Some(Reason::Refused));
        let relayed = LegSummary { proxy_status: Some(503), ..up(Failed, 0, 0) };
        assert_eq!(hop_chain(failed.clone(), std::slice::from_ref(&relayed), none), failed);
        // The answer names no hop: the legs' judgement.
        let blind = (Failed, None, Some(Reason::ProxyUpstreamError));
        assert_eq!(hop_chain(blind, &[relayed], || failed.clone()), failed);
        let own = (Degraded, Some("gke-squid".into()), Some(Reason::Retransmits));
        assert_eq!(hop_chain(own.clone(), &[up(Degraded, 1, 1)], none), own);
        let unknown = (Verdict::Unknown, None, None);
        assert_eq!(hop_chain(unknown.clone(), &[], none), unknown);
    }

    #[test]
    fn success_and_degradation() {
        assert_eq!(connected(&f(0, false, 0, 0), 1), (Verdict::Ok, None));
        assert_eq!(
            connected(&f(0, false, 1, 1), 1),
            (Verdict::Degraded, Some(Reason::Retransmits))
        );
        assert_eq!(connected(&f(0, false, 1, 1), 2), (Verdict::Ok, None));
        assert_eq!(connected(&f(0, false, 9, 9), 0), (Verdict::Ok, None), "0 disables");
        assert_eq!(closed(&f(0, false, 0, 5), 3), (Verdict::Degraded, Some(Reason::Retransmits)));
        assert_eq!(closed(&f(0, false, 0, 2), 3), (Verdict::Ok, None));
        assert_eq!(closed(&f(0, true, 0, 0), 3), (Verdict::Failed, Some(Reason::Reset)));
        assert_eq!(
            closed(&f(libc::ETIMEDOUT, false, 0, 9), 3),
            (Verdict::Failed, Some(Reason::Timeout))
        );
    }

    fn leg(
        leg: &str,
        hop: &str,
        verdict: Verdict,
        reason: Option<Reason>,
        status: Option<u16>,
    ) -> LegSummary {
        LegSummary {
            leg: leg.into(),
            hop: hop.into(),
            flow_id: String::new(),
            dst: None,
            dst_actual: None,
            snat: None,
            verdict,
            reason,
            proxy_status: status,
            latency_ms: 0.0,
            retransmits: 0,
            syn_retransmits: 0,
        }
    }
    const C: &str = "client->gke-squid";
    const H: &str = "gke-squid->gce-proxy";
    const O: &str = "gce-proxy->internet";

    #[test]
    fn the_error_flowchart() {
        use Verdict::{Degraded, Failed, Ok};
        let ok = leg(C, "gke-squid", Ok, None, Some(200));
        assert_eq!(
            judge(&[
                ok.clone(),
                leg(H, "gce-proxy", Ok, None, Some(200)),
                leg(O, "internet", Ok, None, None)
            ]),
            (Ok, None, None)
        );
        // hop1 unreachable
        assert_eq!(
            judge(&[leg(C, "gke-squid", Failed, Some(Reason::Refused), None)]),
            (Failed, Some("gke-squid".into()), Some(Reason::Refused))
        );
        // hop1 ACL: 403 and no upstream leg
        assert_eq!(
            judge(&[leg(C, "gke-squid", Failed, Some(Reason::ProxyDenied), Some(403))]),
            (Failed, Some("gke-squid".into()), Some(Reason::ProxyDenied))
        );
        // hop2 ACL: the 403 comes from gce-proxy and is relayed
        let r = judge(&[
            leg(C, "gke-squid", Failed, Some(Reason::ProxyDenied), Some(403)),
            leg(H, "gce-proxy", Failed, Some(Reason::ProxyDenied), Some(403)),
        ]);
        assert_eq!(r, (Failed, Some("gce-proxy".into()), Some(Reason::ProxyDenied)));
        // hop2 unreachable: hop1 answers 503 itself, its upstream connect failed
        let r = judge(&[
            leg(C, "gke-squid", Failed, Some(Reason::ProxyUpstreamError), Some(503)),
            leg(H, "gce-proxy", Failed, Some(Reason::Timeout), None),
        ]);
        assert_eq!(r, (Failed, Some("gce-proxy".into()), Some(Reason::Timeout)));
        // origin refused behind the NAT
        let r = judge(&[
            leg(C, "gke-squid", Failed, Some(Reason::ProxyUpstreamError), Some(503)),
            leg(H, "gce-proxy", Failed, Some(Reason::ProxyUpstreamError), Some(503)),
            leg(O, "internet", Failed, Some(Reason::Refused), None),
        ]);
        assert_eq!(r, (Failed, Some("internet".into()), Some(Reason::Refused)));
        // hop2 answers 503 and no origin leg is visible (e.g. it cannot resolve the name)
        let r = judge(&[
            leg(C, "gke-squid", Failed, Some(Reason::ProxyUpstreamError), Some(503)),
            leg(H, "gce-proxy", Failed, Some(Reason::ProxyUpstreamError), Some(503)),
        ]);
        assert_eq!(r, (Failed, Some("gce-proxy".into()), Some(Reason::ProxyUpstreamError)));
        // lossy hop
        let r = judge(&[ok, leg(H, "gce-proxy", Degraded, Some(Reason::Retransmits), Some(200))]);
        assert_eq!(r, (Degraded, Some("gce-proxy".into()), Some(Reason::Retransmits)));
    }
}
