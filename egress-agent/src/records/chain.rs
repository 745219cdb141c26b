//! The chain record: the legs of one request through the proxy chain and the
//! hop that broke. Field names are stable and snake_case.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::verdict::{Reason, Verdict};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LegSummary {
    pub leg: String,
    pub hop: String,
    pub flow_id: String,
    pub dst: Option<SocketAddr>,
    pub dst_actual: Option<SocketAddr>,
    pub snat: Option<SocketAddr>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    pub proxy_status: Option<u16>,
    pub latency_ms: f64,
    pub retransmits: u32,
    /// SYNs the leg's connect retransmitted (absent when none): a SYN
    /// unanswered for a whole initial RTO, the evidence of a lossy or
    /// blackholing path that a slow machine does not fake.
    #[serde(skip_serializing_if = "is_zero")]
    pub syn_retransmits: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChainRecord {
    pub chain_id: String,
    /// 0 when first judged; each later revision amends the chain (a leg came
    /// late) and replaces the earlier ones of the same `chain_id`.
    #[serde(skip_serializing_if = "is_zero")]
    pub revision: u32,
    pub time: String,
    pub target: Option<String>,
    /// The client leg's TLS server name (SNI), when it sent a ClientHello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<String>,
    pub unit: Option<String>,
    pub comm: String,
    pub pid: u32,
    /// Legs in chain order, client first.
    pub legs: Vec<LegSummary>,
    pub verdict: Verdict,
    /// The hop that broke (`internet` for the origin side), when failed or degraded.
    pub failed_hop: Option<String>,
    pub reason: Option<Reason>,
    /// The proxy status the client saw.
    pub proxy_status: Option<u16>,
    /// The client's socket address (what an active probe knows its tunnel by).
    pub src: Option<SocketAddr>,
    /// Made by the agent's own prober.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
    /// `hop`: the chain from a hop on, judged on the hop's own machine from
    /// a client connection it accepted (its client's leg is on another
    /// machine: `src` is that client as the hop saw it). Absent: the chain
    /// from a client leg this agent saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vantage: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
