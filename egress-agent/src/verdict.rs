//! Verdicts: what happened to a flow, in a closed vocabulary.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Ok,
    Failed,
    Degraded,
    /// Not known from this vantage: e.g. the flow ended before the proxy's
    /// answer was seen (no status line). Never a failure by itself.
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Degraded => "degraded",
            Self::Unknown => "unknown",
        }
    }
}

/// Why a flow failed or degraded. A closed set: metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Reason {
    /// The peer answered the SYN with a reset (ECONNREFUSED).
    Refused,
    /// No answer: SYNs retransmitted until the kernel or the application gave up.
    Timeout,
    /// ICMP unreachable (EHOSTUNREACH / ENETUNREACH).
    Unreachable,
    /// An established connection was reset.
    Reset,
    /// Retransmits at or over the degraded threshold.
    Retransmits,
    /// A proxy refused the request (403, 407).
    ProxyDenied,
    /// A proxy could not reach its upstream (502, 503, 504).
    ProxyUpstreamError,
    /// Egress that left for a public address without going through the chain.
    Bypass,
    /// A name lookup failed: NXDOMAIN, SERVFAIL, REFUSED or no answer.
    DnsFailed,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Reset => "reset",
            Self::Retransmits => "retransmits",
            Self::ProxyDenied => "proxy_denied",
            Self::ProxyUpstreamError => "proxy_upstream_error",
            Self::Bypass => "bypass",
            Self::DnsFailed => "dns_failed",
            Self::Other => "other",
        }
    }
}

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
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENETDOWN => Reason::Unreachable,
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
    fn success_and_degradation() {
        assert_eq!(connected(&f(0, false, 0, 0), 1), (Verdict::Ok, None));
        assert_eq!(connected(&f(0, false, 1, 1), 1), (Verdict::Degraded, Some(Reason::Retransmits)));
        assert_eq!(connected(&f(0, false, 1, 1), 2), (Verdict::Ok, None));
        assert_eq!(connected(&f(0, false, 9, 9), 0), (Verdict::Ok, None), "0 disables");
        assert_eq!(closed(&f(0, false, 0, 5), 3), (Verdict::Degraded, Some(Reason::Retransmits)));
        assert_eq!(closed(&f(0, false, 0, 2), 3), (Verdict::Ok, None));
        assert_eq!(closed(&f(0, true, 0, 0), 3), (Verdict::Failed, Some(Reason::Reset)));
        assert_eq!(closed(&f(libc::ETIMEDOUT, false, 0, 9), 3), (Verdict::Failed, Some(Reason::Timeout)));
    }
}
