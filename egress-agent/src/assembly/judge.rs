//! The assembled verdict of one request over the vantages joined: the
//! client's node (its socket and the first proxy's answer) and each hop's
//! machine (its accepted connection, what it answered, its own upstream
//! legs). Each vantage judges from where it stands onwards; a vantage
//! further along the chain sees the failures past it first-hand, where the
//! ones before it only see the answer relayed back.
//!
//! - a failure: the deepest vantage that says `failed` decides (hop 1
//!   knows its own refused upstream connect; the client only reads the
//!   503 that came back);
//! - otherwise a degradation: the first vantage, in chain order, whose own
//!   leg degraded (retransmits are seen only by the machine that sent them);
//! - otherwise `ok`, or `unknown` when no vantage could tell.
use serde::Serialize;

use super::Link;
use crate::records::{Reason, Verdict};

/// What one vantage said about the request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct View {
    /// `client` (the client's node) or `hop` (a hop's machine).
    pub vantage: String,
    /// The agent that said it: a node name, or the address asked.
    pub agent: String,
    /// Where the view stands: 0 the client, 1 the first hop, …
    pub position: usize,
    /// The hop whose machine this is (none for the client).
    pub hop: Option<String>,
    /// The link the view was joined on: the client's first link, or the
    /// hop's accepted connection.
    pub link: Option<Link>,
    pub verdict: Verdict,
    pub failed_hop: Option<String>,
    pub reason: Option<Reason>,
    /// The proxy answer this vantage saw (client) or gave (hop).
    pub proxy_status: Option<u16>,
    pub evidence: Option<String>,
}

/// The verdict over every view, and which view decided it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Assembled {
    pub verdict: Verdict,
    pub failed_hop: Option<String>,
    pub reason: Option<Reason>,
    /// Index in the views of the one that decided; none for `ok`/`unknown`.
    pub decided_by: Option<usize>,
}

/// Judge the views (any order; their `position` orders them).
pub fn assemble(views: &[View]) -> Assembled {
    let decided = |i: usize, v: &View| Assembled {
        verdict: v.verdict,
        failed_hop: v.failed_hop.clone(),
        reason: v.reason,
        decided_by: Some(i),
    };
    if let Some((i, v)) = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.verdict == Verdict::Failed)
        .max_by_key(|(_, v)| v.position)
    {
        return decided(i, v);
    }
    if let Some((i, v)) = views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.verdict == Verdict::Degraded)
        .min_by_key(|(_, v)| v.position)
    {
        return decided(i, v);
    }
    let verdict =
        if views.iter().any(|v| v.verdict == Verdict::Ok) { Verdict::Ok } else { Verdict::Unknown };
    Assembled { verdict, failed_hop: None, reason: None, decided_by: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(position: usize, verdict: Verdict, at: Option<&str>, reason: Option<Reason>) -> View {
        View {
            vantage: if position == 0 { "client" } else { "hop" }.into(),
            agent: format!("node-{position}"),
            position,
            hop: None,
            link: None,
            verdict,
            failed_hop: at.map(str::to_string),
            reason,
            proxy_status: None,
            evidence: None,
        }
    }

    fn said(a: &Assembled) -> String {
        match (a.verdict, &a.failed_hop, a.reason) {
            (v, Some(h), Some(r)) => format!("{} at {h}: {}", v.as_str(), r.as_str()),
            (v, _, _) => v.as_str().to_string(),
        }
    }

    #[test]
    fn the_deepest_failure_decides() {
        use Reason::*;
        use Verdict::*;
        // Hop 2 down: the client reads 503 ERR_CONNECT_FAIL 111 (made by hop 1),
        // hop 1 saw its own upstream connect refused; hop 2 saw nothing.
        let v = [
            view(0, Failed, Some("gce-proxy"), Some(Refused)),
            view(1, Failed, Some("gce-proxy"), Some(Refused)),
        ];
        assert_eq!(
            (said(&assemble(&v)), assemble(&v).decided_by),
            ("failed at gce-proxy: refused".into(), Some(1))
        );
        // The origin refused: the client's view is coarser than hop 2's.
        let v = [
            view(2, Failed, Some("internet"), Some(Refused)),
            view(0, Failed, Some("gce-proxy"), Some(ProxyUpstreamError)),
            view(1, Failed, Some("gce-proxy"), Some(ProxyUpstreamError)),
        ];
        assert_eq!(said(&assemble(&v)), "failed at internet: refused");
        // A deeper vantage that could not tell does not overrule a failure.
        let v =
            [view(0, Failed, Some("gke-squid"), Some(ProxyDenied)), view(1, Unknown, None, None)];
        assert_eq!(said(&assemble(&v)), "failed at gke-squid: proxy_denied");
    }

    #[test]
    fn degradations_are_seen_where_they_happen() {
        use Verdict::*;
        // Hop 1's SYN to hop 2 was lost once: only hop 1 retransmitted.
        let v = [
            view(0, Ok, None, None),
            view(1, Degraded, Some("gce-proxy"), Some(Reason::Retransmits)),
            view(2, Ok, None, None),
        ];
        assert_eq!(said(&assemble(&v)), "degraded at gce-proxy: retransmits");
        let v = [
            view(1, Degraded, Some("gce-proxy"), Some(Reason::Retransmits)),
            view(0, Degraded, Some("gke-squid"), Some(Reason::Retransmits)),
        ];
        assert_eq!(said(&assemble(&v)), "degraded at gke-squid: retransmits");
        assert_eq!(said(&assemble(&[view(0, Ok, None, None), view(1, Unknown, None, None)])), "ok");
        assert_eq!(said(&assemble(&[view(0, Unknown, None, None)])), "unknown");
        assert_eq!(said(&assemble(&[])), "unknown");
    }
}
