//! Verdicts and their reasons: what happened, in a closed vocabulary (metric
//! label values, JSON values, `--verdict` / `--reason` filter values).
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Ok,
    Failed,
    Degraded,
    /// Not known: the evidence that decides was never seen (a proxy's
    /// answer that did not come, or not in full). Never counted as a failure.
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
    /// A connect that failed (no answer, unreachable, refused) and that the
    /// NetworkPolicies selecting the pod do not allow: the policy engine
    /// dropped or rejected it. The record's `policy` names the policies.
    PolicyDenied,
    /// The TLS handshake failed: the server (or a gateway routing by SNI)
    /// answered the ClientHello with an alert, or reset or closed the
    /// connection before any handshake bytes came back.
    TlsFailed,
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
            Self::PolicyDenied => "policy_denied",
            Self::TlsFailed => "tls_failed",
            Self::Other => "other",
        }
    }
}

/// What the NetworkPolicies selecting a pod say about one of its flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyVerdict {
    /// No policy selects the pod for egress: everything is allowed.
    NotIsolated,
    /// Some egress rule of a policy selecting the pod allows the flow.
    Allowed,
    /// The pod is isolated for egress and no rule allows the flow.
    Denied,
    /// No rule the agent could check allows it, but one it could not check
    /// might (a malformed entry, a destination pod on another node whose
    /// labels it does not know): not blamed on the policies.
    Uncertain,
}

impl PolicyVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotIsolated => "not_isolated",
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Uncertain => "uncertain",
        }
    }
}
