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
#[path = "judge_tests.rs"]
mod tests;
