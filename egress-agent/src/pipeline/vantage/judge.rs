//! The client-vantage judgement: which hop failed and why, from the client's
//! own socket and the first proxy's answer only (issue 15).
//!
//! Rules, in order (each is tested below and against the lab captures in
//! `fixtures.rs`):
//! 1. The client's connect failed → `failed` at the hop it went to; the
//!    reason from the errno (111 refused, 110 timeout, 113/101/22/13/
//!    ENETDOWN/EHOSTDOWN unreachable, 104 reset), else the caller's reason.
//! 2. No complete status line (or only a 1xx) → `unknown`, never `failed`:
//!    "no proxy answer seen".
//! 3. 2xx → `ok`. The client cannot see the legs past its proxy, so the
//!    verdict is marked `vantage_blind`. Notes: `Proxy-agent` on a 200 from a
//!    hop that has a parent (apache fell back to DIRECT), a slow answer
//!    (≥ [`SYN_RETRY_MS`]: a leg past the client may have retransmitted), the
//!    client's own retransmits (degradation is the caller's to judge).
//! 4. ≥ 300 (a 3xx to CONNECT opens no tunnel either): find the maker
//!    ([`super::maker`]), then the cause ([`super::cause`]): at the maker
//!    (denied, DNS, its own failure) or at the hop after it (`internet` past
//!    the last hop).
//! 5. `ERR_CANNOT_FORWARD`: a last-hop maker → `dns_failed` at it (Squid
//!    5.7's DNS signature); a maker with a parent → `proxy_upstream_error`
//!    at the next hop (no live parent).
//! 6. A connect failure with no errno: ≥ [`SYN_RETRY_MS`] → `timeout` (the
//!    proxy waited through at least one SYN retransmit), faster → `refused`
//!    (unreachable, and for tinyproxy DNS, look the same; Envoy's bare
//!    `connection_refused` is treated the same way), no timing →
//!    `proxy_upstream_error`; `reason_inferred` is set and the evidence says so.
//! 7. When the maker is not pinned to one hop, no hop is named
//!    (`failed_hop: None`, `vantage_blind`); the evidence lists the
//!    candidates. Hops before the earliest possible maker are never blamed.
use serde::Serialize;

use crate::records::{Reason, Verdict};

use super::INTERNET;
use super::answer::ProxyAnswer;
use super::cause::{Cause, Place, What, classify, errno_reason};
use super::maker::{BodyFacts, HopIdentity, find_maker};

/// An answer at least this slow means a SYN went unanswered on the way
/// (the first SYN retry comes after 1 s on every kernel schedule).
pub const SYN_RETRY_MS: f64 = 900.0;

/// How the client's own connect to its proxy ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectOutcome {
    #[default]
    Established,
    /// Never established: `errno` (0 if not known) and the reason the flow
    /// table drew (used when the errno says nothing).
    Failed { errno: i32, reason: Option<Reason> },
}

/// What the client's node knows about one client-leg flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFacts<'a> {
    /// Index in the chain of the hop the client leg went to (usually 0).
    pub client_hop: usize,
    /// The address the client connected to, for the evidence (`10.96.0.10:3128`).
    pub peer: Option<&'a str>,
    pub connect: ConnectOutcome,
    /// The proxy's answer, if a status line was seen.
    pub answer: Option<&'a ProxyAnswer>,
    /// Body bytes captured after the header block (a prefix, bounded).
    pub body: &'a [u8],
    /// Body bytes the socket received in total (received − header), if known.
    pub body_bytes_total: Option<u64>,
    /// The flow has closed, if known.
    pub closed: Option<bool>,
    /// From the request to the answer's first byte.
    pub answer_ms: Option<f64>,
    /// The client leg's own retransmits (SYN and data).
    pub retransmits: u32,
}

/// The client-vantage verdict of one client-leg flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientVerdict {
    pub verdict: Verdict,
    /// The hop that failed (a configured name or `internet`); `None` when
    /// ok/unknown or when the evidence does not pin one hop.
    pub failed_hop: Option<String>,
    pub reason: Option<Reason>,
    /// One line quoting what decided it.
    pub evidence: String,
    /// The client's view cannot settle this: ok/unknown (legs past the first
    /// proxy are invisible) or the failing hop is ambiguous.
    pub vantage_blind: bool,
    /// The reason comes from the answer's timing, not from an errno or type.
    pub reason_inferred: bool,
    /// The hop that made the answer, when pinned.
    pub maker: Option<String>,
}

fn hop_name(chain: &[HopIdentity], i: usize) -> String {
    chain.get(i).map_or_else(|| INTERNET.to_string(), |h| h.name.clone())
}

fn secs(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 1.0 {
        "<1 ms".into()
    } else {
        format!("{ms:.0} ms")
    }
}

/// Judge one client-leg flow. `chain` lists the configured hops in order.
pub fn judge_client(chain: &[HopIdentity], f: &ClientFacts<'_>) -> ClientVerdict {
    let near = f.client_hop;
    if let ConnectOutcome::Failed { errno, reason } = f.connect {
        let r = errno_reason(errno).or(reason).unwrap_or(Reason::Other);
        let to = f.peer.map_or_else(|| hop_name(chain, near), str::to_string);
        let how = if errno == 0 { "no errno".to_string() } else { format!("errno {errno}") };
        return ClientVerdict {
            verdict: Verdict::Failed,
            failed_hop: Some(hop_name(chain, near)),
            reason: Some(r),
            evidence: format!("connect to {to} {} ({how})", r.as_str()),
            ..ClientVerdict::default()
        };
    }
    let Some(a) = f.answer.filter(|a| a.status >= 200) else {
        let mut evidence = match (f.answer, f.closed) {
            (Some(a), _) => format!("only an interim {} answer seen", a.status_line()),
            (None, Some(true)) => "no proxy answer seen".to_string(),
            (None, _) => "no proxy answer seen yet".to_string(),
        };
        if f.retransmits > 0 {
            evidence.push_str(&format!("; client leg retransmits: {}", f.retransmits));
        }
        return ClientVerdict {
            verdict: Verdict::Unknown,
            evidence,
            vantage_blind: true,
            ..ClientVerdict::default()
        };
    };
    if a.status < 300 {
        return ok(chain, near, a, f);
    }
    failed(chain, near, a, f)
}

fn ok(chain: &[HopIdentity], near: usize, a: &ProxyAnswer, f: &ClientFacts<'_>) -> ClientVerdict {
    let mut e = vec![a.status_line()];
    let vias: Vec<&str> = a.via.iter().map(|v| v.received_by.as_str()).collect();
    if !vias.is_empty() {
        e.push(format!("Via {}", vias.join(", ")));
    }
    if let Some(pa) = a.proxy_agent.as_deref().filter(|_| near.saturating_add(1) < chain.len()) {
        e.push(format!(
            "Proxy-agent: {pa}: {} answered itself and may have bypassed {}",
            hop_name(chain, near),
            hop_name(chain, near.saturating_add(1))
        ));
    }
    if let Some(ms) = f.answer_ms.filter(|&ms| ms >= SYN_RETRY_MS) {
        e.push(format!(
            "answered after {}: a leg past the client may have retransmitted",
            secs(ms)
        ));
    }
    if f.retransmits > 0 {
        e.push(format!("client leg retransmits: {}", f.retransmits));
    }
    e.push("legs past the first proxy are not visible from the client".into());
    ClientVerdict {
        verdict: Verdict::Ok,
        evidence: e.join("; "),
        vantage_blind: true,
        ..ClientVerdict::default()
    }
}

/// A connect failure without an errno, judged from the answer's latency.
fn infer(ms: Option<f64>, weak: Option<Reason>) -> (Reason, String) {
    match (ms, weak) {
        (Some(t), _) if t >= SYN_RETRY_MS => (
            Reason::Timeout,
            format!(
                "no errno; answered after {}: at least one SYN went unanswered → timeout (inferred)",
                secs(t)
            ),
        ),
        (Some(t), w) => {
            let r = w.unwrap_or(Reason::Refused);
            (
                r,
                format!(
                    "no errno; answered after {} → {} (inferred; an unreachable or, for some proxies, a DNS failure looks the same)",
                    secs(t),
                    r.as_str()
                ),
            )
        }
        (None, Some(w)) => (w, format!("no errno and no timing → {} as labelled", w.as_str())),
        (None, None) => {
            (Reason::ProxyUpstreamError, "no errno and no timing: the cause is not known".into())
        }
    }
}

fn failed(
    chain: &[HopIdentity],
    near: usize,
    a: &ProxyAnswer,
    f: &ClientFacts<'_>,
) -> ClientVerdict {
    let last = chain.len().saturating_sub(1).max(near);
    let bf = BodyFacts { captured: f.body.len(), total: f.body_bytes_total, closed: f.closed };
    let m = find_maker(chain, near, a, f.body, bf);
    let Cause { place, what, text } = classify(a, f.body);
    let (mut reason, inferred) = match what {
        What::Stated(r) => (r, None),
        What::NoErrno { weak } => {
            let (r, note) = infer(f.answer_ms, weak);
            (r, Some(note))
        }
    };
    let mut notes: Vec<String> = Vec::new();
    let failed_at = m.exact().map(|k| match place {
        Place::Maker => k,
        Place::Next => k.saturating_add(1),
        Place::CannotForward if k >= last => {
            reason = Reason::DnsFailed;
            notes.push("Squid 5.7's DNS failure signature at the last hop".into());
            k
        }
        Place::CannotForward => {
            notes.push(format!(
                "{} has no live parent (it did not try, or marked it dead)",
                hop_name(chain, k)
            ));
            k.saturating_add(1)
        }
    });
    let maker = match m.exact() {
        Some(k) => hop_name(chain, k),
        None => (m.lo..=m.hi).map(|i| hop_name(chain, i)).collect::<Vec<_>>().join(" or "),
    };
    let mut evidence = format!("{text} from {maker} ({})", m.why);
    if let Some(n) = &inferred {
        notes.push(n.clone());
    }
    if failed_at.is_none() {
        let first = match place {
            Place::Maker => m.lo,
            Place::Next | Place::CannotForward => m.lo.saturating_add(1),
        };
        let cands: Vec<String> = (first..=m.hi.saturating_add(usize::from(place != Place::Maker)))
            .map(|i| hop_name(chain, i))
            .collect();
        let cleared = if m.lo > near {
            format!(" ({} and hops before it are cleared)", hop_name(chain, m.lo - 1))
        } else {
            String::new()
        };
        notes.push(format!("the client cannot tell which hop: {}{cleared}", cands.join(" or ")));
    }
    if !m.unknown_names.is_empty() {
        notes.push(format!("names not in any hop's via_names: {}", m.unknown_names.join(", ")));
    }
    if !a.header_complete {
        notes.push(format!("header block incomplete ({} bytes read)", a.header_len));
    }
    for n in notes {
        evidence.push_str("; ");
        evidence.push_str(&n);
    }
    ClientVerdict {
        verdict: Verdict::Failed,
        failed_hop: failed_at.map(|i| hop_name(chain, i)),
        reason: Some(reason),
        evidence,
        vantage_blind: failed_at.is_none(),
        reason_inferred: inferred.is_some(),
        maker: m.exact().map(|k| hop_name(chain, k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::vantage::answer::parse_answer;
    use crate::pipeline::vantage::reassembly::Reassembly;

    fn hop(name: &str, via: &[&str]) -> HopIdentity {
        HopIdentity {
            name: name.into(),
            via_names: via.iter().map(|s| s.to_string()).collect(),
            tls_sni: false,
        }
    }

    /// The production shape: gke-squid (pod) → gce-proxy (VM) → internet.
    fn prod() -> Vec<HopIdentity> {
        vec![
            hop("gke-squid", &["squid-7d9f.intra-proxy"]),
            hop("gce-proxy", &["gce-proxy.internal", "egress-gw"]),
        ]
    }

    fn answer(head: &str, body: &str, closed: bool, ms: f64) -> ClientVerdict {
        answer_on(&prod(), head, body, closed, ms)
    }

    fn answer_on(
        chain: &[HopIdentity],
        head: &str,
        body: &str,
        closed: bool,
        ms: f64,
    ) -> ClientVerdict {
        let a = parse_answer(head.as_bytes()).expect("answer");
        let f = ClientFacts {
            answer: Some(&a),
            body: body.as_bytes(),
            body_bytes_total: Some(u64::try_from(body.len()).unwrap_or(0)),
            closed: Some(closed),
            answer_ms: Some(ms),
            ..ClientFacts::default()
        };
        judge_client(chain, &f)
    }

    fn at(v: &ClientVerdict) -> (Verdict, Option<&str>, Option<Reason>) {
        (v.verdict, v.failed_hop.as_deref(), v.reason)
    }

    #[test]
    fn client_connect_failures_blame_the_hop_it_went_to() {
        let c = prod();
        for (errno, r) in [
            (111, Reason::Refused),
            (110, Reason::Timeout),
            (113, Reason::Unreachable),
            (101, Reason::Unreachable),
            (22, Reason::Unreachable),
            (13, Reason::Unreachable),
            (100, Reason::Unreachable),
            (112, Reason::Unreachable),
            (104, Reason::Reset),
        ] {
            let f = ClientFacts {
                peer: Some("10.96.0.10:3128"),
                connect: ConnectOutcome::Failed { errno, reason: None },
                ..ClientFacts::default()
            };
            let v = judge_client(&c, &f);
            assert_eq!(at(&v), (Verdict::Failed, Some("gke-squid"), Some(r)), "errno {errno}");
            assert!(!v.vantage_blind);
            if errno == 111 {
                assert_eq!(v.evidence, "connect to 10.96.0.10:3128 refused (errno 111)");
            }
        }
        let f = ClientFacts {
            connect: ConnectOutcome::Failed { errno: 0, reason: Some(Reason::Timeout) },
            client_hop: 1,
            ..ClientFacts::default()
        };
        let v = judge_client(&c, &f);
        assert_eq!(
            (at(&v), v.evidence.as_str()),
            (
                (Verdict::Failed, Some("gce-proxy"), Some(Reason::Timeout)),
                "connect to gce-proxy timeout (no errno)"
            )
        );
        let f = ClientFacts {
            connect: ConnectOutcome::Failed { errno: 99, reason: None },
            ..ClientFacts::default()
        };
        assert_eq!(judge_client(&c, &f).reason, Some(Reason::Other));
    }

    #[test]
    fn no_answer_is_unknown_never_failed() {
        let v =
            judge_client(&prod(), &ClientFacts { closed: Some(true), ..ClientFacts::default() });
        assert_eq!(
            (v.verdict, v.failed_hop, v.reason, v.evidence.as_str(), v.vantage_blind),
            (Verdict::Unknown, None, None, "no proxy answer seen", true)
        );
        assert_eq!(
            judge_client(&prod(), &ClientFacts::default()).evidence,
            "no proxy answer seen yet"
        );
        let interim = parse_answer(b"HTTP/1.1 100 Continue\r\n\r\n").expect("answer");
        let v = judge_client(
            &prod(),
            &ClientFacts { answer: Some(&interim), closed: Some(true), ..ClientFacts::default() },
        );
        assert_eq!(v.verdict, Verdict::Unknown);
        assert_eq!(
            (
                Verdict::Unknown.as_str(),
                serde_json::to_string(&Verdict::Unknown).unwrap_or_default().as_str()
            ),
            ("unknown", "\"unknown\"")
        );
    }

    #[test]
    fn a_split_status_line_is_not_known_until_complete_then_headers_decide() {
        let c = prod();
        let mut r = Reassembly::default();
        let chunks: [&[u8]; 5] = [
            b"HTTP/1.1 40",
            b"3 Forbidden\r\n",
            b"Server: squid/5.7\r\nVia: 1.1 gce-proxy.internal (squid/5.7)\r\n",
            b"Content-Length: 4\r\n\r\n",
            b"deny",
        ];
        let mut seen = Vec::new();
        let mut at_ = 0u32;
        for ch in chunks {
            r.push(at_, ch);
            at_ += u32::try_from(ch.len()).unwrap_or(0);
            let a = parse_answer(r.contiguous());
            let f = ClientFacts { answer: a.as_ref(), body: r.body(), ..ClientFacts::default() };
            let v = judge_client(&c, &f);
            seen.push((v.verdict, v.failed_hop, v.reason));
        }
        let d = Some(Reason::ProxyDenied);
        assert_eq!(seen[0], (Verdict::Unknown, None, None), "half a status line is not a failure");
        assert_eq!(
            seen[1],
            (Verdict::Failed, None, d),
            "status known, maker not yet: no hop named"
        );
        assert_eq!(seen[2], (Verdict::Failed, Some("gce-proxy".into()), d));
        assert_eq!(seen[4], (Verdict::Failed, Some("gce-proxy".into()), d));
    }

    #[test]
    fn ok_is_blind_and_notes_what_it_saw() {
        let v = answer(
            "HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.71 (Debian)\r\n\r\n",
            "",
            false,
            3200.0,
        );
        assert_eq!(
            (v.verdict, v.failed_hop.as_deref(), v.vantage_blind),
            (Verdict::Ok, None, true)
        );
        assert!(
            v.evidence.contains("gke-squid answered itself and may have bypassed gce-proxy"),
            "{}",
            v.evidence
        );
        assert!(v.evidence.contains("answered after 3.2 s"), "{}", v.evidence);
        let lone = answer_on(
            &prod()[..1],
            "HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
            "",
            false,
            2.0,
        );
        assert!(!lone.evidence.contains("bypassed"), "{}", lone.evidence);
        let a = parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("answer");
        let v = judge_client(
            &prod(),
            &ClientFacts { answer: Some(&a), retransmits: 2, ..ClientFacts::default() },
        );
        assert!(v.evidence.contains("client leg retransmits: 2"));
    }

    #[test]
    fn envoy_proxy_status() {
        let ps = |p: &str, ms| {
            answer(
                &format!(
                    "HTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\nproxy-status: {p}\r\ncontent-length: 5\r\n\r\n"
                ),
                "upstr",
                true,
                ms,
            )
        };
        let timed_out = "egress-gw; error=connection_refused; details=\"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_timed_out}\"";
        let v = ps(timed_out, 10.0);
        assert_eq!(
            (at(&v), v.reason_inferred),
            ((Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)), false)
        );
        assert!(
            v.evidence.starts_with(
                "Proxy-Status: egress-gw; error=connection_refused; details=\"upstream_reset"
            ),
            "{}",
            v.evidence
        );
        let v = ps("egress-gw; error=connection_refused", 3100.0);
        assert_eq!(
            (at(&v), v.reason_inferred),
            ((Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)), true)
        );
        assert!(v.evidence.contains("no errno; answered after 3.1 s"), "{}", v.evidence);
        let v = ps("egress-gw; error=connection_refused", 4.0);
        assert_eq!(
            (at(&v), v.reason_inferred),
            ((Verdict::Failed, Some(INTERNET), Some(Reason::Refused)), true)
        );
        assert_eq!(
            at(&ps("egress-gw; error=dns_error; rcode=NXDOMAIN", 1.0)),
            (Verdict::Failed, Some("gce-proxy"), Some(Reason::DnsFailed))
        );
        assert_eq!(
            at(&ps("egress-gw; error=http_request_denied", 1.0)),
            (Verdict::Failed, Some("gce-proxy"), Some(Reason::ProxyDenied))
        );
        assert_eq!(
            at(&ps("egress-gw; error=destination_ip_unroutable", 1.0)),
            (Verdict::Failed, Some(INTERNET), Some(Reason::Unreachable))
        );
        // Hop 1 says its parent is unavailable (and hop 2 is not blamed for hop 1's words).
        assert_eq!(
            at(&ps("squid-7d9f.intra-proxy; error=destination_unavailable", 1.0)),
            (Verdict::Failed, Some("gce-proxy"), Some(Reason::ProxyUpstreamError))
        );
        assert_eq!(
            at(&ps("egress-gw; error=connection_timeout, squid-7d9f.intra-proxy", 1.0)),
            (Verdict::Failed, Some(INTERNET), Some(Reason::Timeout))
        );
        // An unconfigured name is reported, not guessed at.
        let v = ps("envoy; error=connection_timeout", 1.0);
        assert!(v.evidence.contains("names not in any hop's via_names: envoy"), "{}", v.evidence);
    }

    #[test]
    fn three_hops_a_relay_proves_deeper_not_how_deep() {
        let c = vec![hop("h1", &["h1.test"]), hop("h2", &["h2.test"]), hop("h3", &["h3.test"])];
        let head = "HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nContent-Length: 3084\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n";
        let v = answer_on(&c, head, "", true, 1.0);
        assert_eq!(
            (at(&v), v.vantage_blind),
            ((Verdict::Failed, None, Some(Reason::Refused)), true)
        );
        assert!(
            v.evidence.contains(
                "cannot tell which hop: h3 or internet (h1 and hops before it are cleared)"
            ),
            "{}",
            v.evidence
        );
        let v = answer_on(&c, head, "Generated by h2.test (squid/5.7)", true, 1.0);
        assert_eq!(at(&v), (Verdict::Failed, Some("h3"), Some(Reason::Refused)));
        let v = answer_on(
            &c,
            "HTTP/1.1 500 Internal Server Error\r\nX-Squid-Error: ERR_CANNOT_FORWARD 0\r\nContent-Length: 9\r\n\r\n",
            "by h2.test",
            true,
            1.0,
        );
        assert_eq!(
            at(&v),
            (Verdict::Failed, Some("h3"), Some(Reason::ProxyUpstreamError)),
            "no live parent at h2"
        );
        let v = answer_on(
            &c,
            "HTTP/1.1 504 Gateway Timeout\r\nVia: 1.1 h3.test, 1.1 h1.test\r\nContent-Length: 1\r\n\r\n",
            "x",
            true,
            1.0,
        );
        assert_eq!(at(&v), (Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)));
    }

    #[test]
    fn odd_chains_never_panic() {
        let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\n")
            .expect("answer");
        for chain in [vec![], prod()] {
            for near in [0, 1, 2, 9, usize::MAX] {
                for (total, closed) in [(None, None), (Some(0), Some(true)), (Some(10), Some(true))]
                {
                    let f = ClientFacts {
                        client_hop: near,
                        answer: Some(&a),
                        body_bytes_total: total,
                        closed,
                        ..ClientFacts::default()
                    };
                    let v = judge_client(&chain, &f);
                    assert_eq!(v.verdict, Verdict::Failed);
                    assert!(!v.evidence.is_empty());
                    assert!(v.failed_hop.is_some() || v.vantage_blind);
                }
            }
        }
    }

    /// Whatever the answer says, a hop before the deepest hop it names is never blamed.
    #[test]
    fn never_blame_a_hop_the_evidence_clears() {
        let c = vec![hop("h1", &["h1.test"]), hop("h2", &["h2.test"]), hop("h3", &["h3.test"])];
        let statuses = [
            "403 Forbidden",
            "407 Proxy Authentication Required",
            "500 Internal Server Error",
            "502 Bad Gateway",
            "503 Service Unavailable",
            "504 Gateway Timeout",
            "404 No such domain",
            "400 Bad Request",
        ];
        let extras = [
            "",
            "X-Squid-Error: ERR_CONNECT_FAIL 111\r\n",
            "X-Squid-Error: ERR_CANNOT_FORWARD 0\r\n",
            "X-Squid-Error: ERR_ACCESS_DENIED 0\r\n",
            "Proxy-Status: h3.test; error=dns_error\r\n",
            "Server: tinyproxy/1.11.1\r\n",
            "Content-Length: 3000\r\n",
        ];
        let mut n = 0;
        for s in statuses {
            for named in 0..3 {
                for e in extras {
                    for body in ["", "Generated by h1.test"] {
                        let head = format!(
                            "HTTP/1.1 {s}\r\nVia: 1.1 h{}.test (squid/5.7)\r\n{e}\r\n",
                            named + 1
                        );
                        let v = answer_on(&c, &head, body, true, 5.0);
                        let idx = v
                            .failed_hop
                            .as_deref()
                            .map(|h| c.iter().position(|x| x.name == h).unwrap_or(3));
                        assert!(
                            idx.is_none_or(|i| i >= named),
                            "{head:?} {body:?} blamed {:?}",
                            v.failed_hop
                        );
                        assert!(v.failed_hop.is_some() || v.vantage_blind);
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 8 * 3 * 7 * 2);
    }
}
