//! What `explain` and `explain --assemble` both speak of: one attempt to
//! reach a target and its hops.
use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    assembly::walk::Walked,
    records::{PolicyVerdict, Reason, Verdict},
};

/// One hop of one attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub hop: String,
    pub leg: Option<String>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    pub proxy_status: Option<u16>,
    pub latency_ms: f64,
    pub retransmits: u32,
    pub dst: Option<SocketAddr>,
    pub dst_actual: Option<SocketAddr>,
    pub snat: Option<SocketAddr>,
}

/// One attempt to reach the target: a chain, or a flow outside any chain.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub time: String,
    pub who: String,
    pub pid: u32,
    pub comm: String,
    pub chain_id: Option<String>,
    pub target: Option<String>,
    /// The TLS server name (SNI) the client sent, when it sent a ClientHello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub verdict: Verdict,
    pub failed_hop: Option<String>,
    pub reason: Option<Reason>,
    pub proxy_status: Option<u16>,
    pub hops: Vec<Step>,
    /// Whose view the verdict is: `full` (every leg this agent saw, a
    /// chain), `client` (the client's node alone) or `assembled` (every
    /// vantage joined across agents, `--assemble`).
    pub vantage: &'static str,
    /// The client's node alone, on a chain: its client leg's own verdict and
    /// evidence (`"vantage":"client"`).
    pub client_view: Option<String>,
    /// What the NetworkPolicies say about the failed connect (see the
    /// flow record's `policy_verdict`), and the policies concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_verdict: Option<PolicyVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The client leg's flow id (where an assembly starts).
    #[serde(skip)]
    pub flow_id: Option<String>,
    /// With `--assemble`: the chain across agents, leg by leg with the
    /// vantage that recorded each, and where the walk stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assembled: Option<Walked>,
}

impl Attempt {
    /// The policy verdict line `explain` prints, when the agent judged one.
    pub fn policy_line(&self) -> Option<String> {
        let names = self.policy.as_deref().unwrap_or("-").replace(',', ", ");
        Some(match self.policy_verdict? {
            PolicyVerdict::Denied => {
                format!(
                    "policy: DENIED by NetworkPolicy {names}: no egress rule allows this flow (judged on the backend after DNAT)"
                )
            }
            PolicyVerdict::Allowed => format!(
                "policy: allowed by NetworkPolicy {names}: the failure is not the policies'"
            ),
            PolicyVerdict::NotIsolated => {
                "policy: no NetworkPolicy selects the pod for egress: all egress allowed"
                    .to_string()
            }
            PolicyVerdict::Uncertain => format!(
                "policy: not allowed by NetworkPolicy {names} as far as the agent can tell (a malformed entry, or a destination pod whose labels it does not know): not blamed on the policies"
            ),
        })
    }
}
