//! From one client attempt, link by link: ask the agents of the hop the
//! link goes to for their records of it ([`Fetch`]), take the hop's
//! accepted connection with exactly that address pair, follow the hop's
//! own chain to its upstream leg, and ask the next hop about that link.
//! The walk stops at the internet, at a hop whose agent has no record of
//! the link, or when an agent cannot be asked; each stop is a note, never
//! silence.
use std::future::Future;

use serde::Serialize;

use super::{
    HOP_VANTAGE, Link,
    judge::{Assembled, View, assemble},
    select::LinkAnswer,
};
use crate::{
    config::{DIRECT, INTERNET},
    pipeline::{judge::hop_chain, stitch::summary},
    records::{FlowRecord, Record, Verdict},
};

/// Hops followed at most (a loop in a misconfigured chain ends here).
const MAX_HOPS: usize = 8;

/// Asks the agents of a hop about a link.
pub trait Fetch {
    /// One result per agent asked (a Service hop may have several nodes).
    fn fetch(
        &self,
        hop: &str,
        link: &Link,
    ) -> impl Future<Output = Vec<Result<LinkAnswer, String>>> + Send;
}

/// One leg of the assembled chain, with the vantage that recorded it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Leg {
    pub vantage: String,
    pub agent: String,
    /// `client->gke-squid`, `gke-squid->gce-proxy`, …; for an accepted
    /// connection, its leg as the hop's agent named it.
    pub leg: String,
    pub hop: String,
    /// Its address pair as the far (accepting) end sees it.
    pub link: Option<Link>,
    /// Recorded by the accepting end (a hop's accepted connection).
    pub accepted: bool,
    pub verdict: Verdict,
    pub reason: Option<crate::records::Reason>,
    pub proxy_status: Option<u16>,
    pub latency_ms: f64,
    pub retransmits: u32,
}

impl Leg {
    fn of(f: &FlowRecord, vantage: &str, agent: &str, accepted: bool) -> Self {
        Self {
            vantage: vantage.to_string(),
            agent: agent.to_string(),
            leg: f.leg.clone().unwrap_or_else(|| "-".into()),
            hop: f.hop.clone().unwrap_or_else(|| "-".into()),
            link: if accepted { Link::of_accepted(f) } else { Link::of_connect(f) },
            accepted,
            verdict: f.verdict,
            reason: f.reason,
            proxy_status: f.proxy_status,
            latency_ms: f.latency_ms,
            retransmits: f.retransmits,
        }
    }
}

/// The chain of one attempt as every vantage reached saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Walked {
    pub verdict: Verdict,
    pub failed_hop: Option<String>,
    pub reason: Option<crate::records::Reason>,
    /// `client` or `hop at gke-squid (node-b)`: whose view decided.
    pub decided_by: Option<String>,
    pub views: Vec<View>,
    pub legs: Vec<Leg>,
    /// Where and why the walk stopped short, or what it could not ask.
    pub notes: Vec<String>,
}

/// The client's own record of the attempt: its first leg (a connect with
/// the client vantage), and the agent that holds it.
pub fn client_view(f: &FlowRecord, agent: &str) -> View {
    View {
        vantage: f.vantage.clone().unwrap_or_else(|| "client".into()),
        agent: agent.to_string(),
        position: 0,
        hop: None,
        link: Link::of_connect(f),
        verdict: f.verdict,
        failed_hop: f.failed_hop.clone().or_else(|| {
            (f.verdict != Verdict::Ok && f.verdict != Verdict::Unknown)
                .then(|| f.hop.clone())
                .flatten()
        }),
        reason: f.reason,
        proxy_status: f.proxy_status,
        evidence: f.evidence.clone(),
    }
}

/// Whether a connect never opened (refused, timed out, unreachable): its
/// far end has no connection to tell about.
fn never_opened(f: &FlowRecord) -> bool {
    use crate::records::Reason::{PolicyDenied, Refused, Timeout, Unreachable};
    f.verdict == Verdict::Failed
        && f.proxy_status.is_none()
        && matches!(f.reason, Some(Refused | Timeout | Unreachable | PolicyDenied))
        && f.failed_hop.as_ref().is_none_or(|h| Some(h) == f.hop.as_ref())
}

/// Walk from the client leg `client` (recorded by `agent`).
pub async fn walk(client: &FlowRecord, agent: &str, fetch: &impl Fetch) -> Walked {
    let mut views = vec![client_view(client, agent)];
    let mut legs = vec![Leg::of(client, "client", agent, false)];
    let mut notes = Vec::new();
    // The connect whose far end is asked next.
    let mut prev: FlowRecord = client.clone();
    for position in 1..=MAX_HOPS {
        let Some(h) = prev.hop.clone().filter(|h| h != INTERNET && h != DIRECT) else { break };
        // First: a refused or timed-out connect has no far end (and often
        // no bound source either), whatever its addresses say.
        if never_opened(&prev) {
            notes.push(format!("the connection to {h} never opened: nothing to ask its agent"));
            break;
        }
        let Some(l) = Link::of_connect(&prev) else {
            notes.push(format!("the leg to {h} has no address pair to join on"));
            break;
        };
        let answers = fetch.fetch(&h, &l).await;
        let mut found = None;
        for a in &answers {
            match a {
                Ok(ans) => {
                    if found.is_none() {
                        found = accepted(&ans.records, &l).map(|acc| (ans, acc));
                    }
                }
                Err(e) => notes.push(format!("{h}: {e}")),
            }
        }
        let Some((ans, acc)) = found else {
            let asked: Vec<&str> =
                answers.iter().filter_map(|a| a.as_ref().ok()).map(|a| a.node.as_str()).collect();
            if !asked.is_empty() {
                notes.push(format!(
                    "{h}: no record of link {l} on {} (the connection never reached the hop, or its agent has no hop vantage)",
                    asked.join(", ")
                ));
            }
            break;
        };
        if ans.truncated {
            notes.push(format!("{h}: the answer of {} was cut at its size limit", ans.node));
        }
        let ups = upstream(&ans.records, acc, &h);
        // The hop's judgement from its own machine: the answer it gave,
        // degraded by its own upstream SYN retransmits (as its agent's hop
        // chain record says).
        let own = (acc.verdict, acc.failed_hop.clone(), acc.reason);
        let (verdict, failed_hop, reason) = hop_chain(
            own.clone(),
            ups.iter().map(|u| summary(u)).collect::<Vec<_>>().iter(),
            || own,
        );
        views.push(View {
            vantage: HOP_VANTAGE.into(),
            agent: ans.node.clone(),
            position,
            hop: Some(h.clone()),
            link: Some(l),
            verdict,
            failed_hop: failed_hop.clone(),
            reason,
            proxy_status: acc.proxy_status,
            evidence: if verdict == acc.verdict {
                acc.evidence.clone()
            } else {
                Some(format!(
                    "its leg to {} retransmitted its SYN; it answered {}",
                    failed_hop.as_deref().unwrap_or("?"),
                    acc.proxy_status.map_or_else(|| "-".to_string(), |s| s.to_string())
                ))
            },
        });
        legs.push(Leg::of(acc, HOP_VANTAGE, &ans.node, true));
        for u in &ups {
            legs.push(Leg::of(u, HOP_VANTAGE, &ans.node, false));
        }
        // The last upstream leg is the one the request went on (earlier
        // ones are retries the hop made).
        match ups.last() {
            Some(u) => prev = (*u).clone(),
            None => break,
        }
    }
    let a: Assembled = assemble(&views);
    let decided_by = a.decided_by.and_then(|i| views.get(i)).map(|v| match &v.hop {
        Some(h) => format!("{} at {h} ({})", v.vantage, v.agent),
        None => format!("{} ({})", v.vantage, v.agent),
    });
    Walked {
        verdict: a.verdict,
        failed_hop: a.failed_hop,
        reason: a.reason,
        decided_by,
        views,
        legs,
        notes,
    }
}

/// The hop-vantage record of the accepted connection `link`: its connect
/// record (the answer the hop gave, judged), else its latest. A close
/// record after it judges the connection's data transfer (a slow machine's
/// retransmits), not the request.
fn accepted<'a>(records: &'a [Record], link: &Link) -> Option<&'a FlowRecord> {
    let mut ends = records.iter().rev().filter_map(|r| match r {
        Record::Flow(f)
            if f.vantage.as_deref() == Some(HOP_VANTAGE)
                && Link::of_accepted(f).as_ref() == Some(link) =>
        {
            Some(f)
        }
        _ => None,
    });
    let latest = ends.next()?;
    Some(
        std::iter::once(latest)
            .chain(ends)
            .find(|f| f.phase == crate::records::Phase::Connect)
            .unwrap_or(latest),
    )
}

/// The hop's own upstream legs of the chain `acc` belongs to, in the
/// chain's order (its latest revision).
fn upstream<'a>(records: &'a [Record], acc: &FlowRecord, hop: &str) -> Vec<&'a FlowRecord> {
    let chain = records
        .iter()
        .filter_map(|r| match r {
            Record::Chain(c)
                if acc.chain_id.as_deref() == Some(c.chain_id.as_str())
                    || c.legs.iter().any(|l| l.flow_id == acc.flow_id) =>
            {
                Some(c)
            }
            _ => None,
        })
        .max_by_key(|c| c.revision);
    let Some(chain) = chain else { return Vec::new() };
    let from = format!("{hop}->");
    chain
        .legs
        .iter()
        .filter(|l| l.flow_id != acc.flow_id && l.leg.starts_with(&from))
        .filter_map(|l| {
            records.iter().rev().find_map(|r| match r {
                Record::Flow(f) if f.flow_id == l.flow_id => Some(f),
                _ => None,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "walk_tests.rs"]
mod tests;
