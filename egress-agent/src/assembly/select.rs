//! What an agent answers about one link: the records of its history that
//! end in the link (either end: an accepted connection, a hop-vantage
//! record whose `(src, dst_actual)` it is, or a connect whose `(snat or src,
//! dst_actual)` it is), the chains
//! those records belong to (latest revision), and the flow records of those
//! chains' legs, so the asker can follow the chain to the next link.
//! Nothing else: a peer cannot list an agent's history through it.
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Link;
use crate::records::Record;

/// At most this many records in one answer.
pub const MAX_RECORDS: usize = 64;

/// One agent's answer about one link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkAnswer {
    /// The answering agent: its node name (or host name).
    pub node: String,
    pub link: Link,
    /// Oldest first, as in the agent's history.
    pub records: Vec<Record>,
    /// More records matched than an answer holds; the chains' legs were
    /// left out first, then the oldest.
    #[serde(default)]
    pub truncated: bool,
}

/// How much a selected record matters when an answer must be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Leg,
    Chain,
    Link,
}

/// The records of `history` (oldest first) about `link`, at most `max`.
pub fn select<'a, I>(history: I, link: &Link, max: usize) -> (Vec<Record>, bool)
where
    I: Iterator<Item = &'a Record> + Clone,
{
    // The link's own flow records, and what ties them to chains.
    let mut flow_ids: HashSet<&str> = HashSet::new();
    let mut chain_ids: HashSet<&str> = HashSet::new();
    for r in history.clone() {
        if let Record::Flow(f) = r
            && link.ends_in(f)
        {
            flow_ids.insert(&f.flow_id);
            chain_ids.extend(f.chain_id.as_deref());
        }
    }
    if flow_ids.is_empty() {
        return (Vec::new(), false);
    }
    // Chains holding one of them (by id, or by a leg), latest revision only.
    let mut latest: HashMap<&str, u32> = HashMap::new();
    for r in history.clone() {
        if let Record::Chain(c) = r
            && (chain_ids.contains(c.chain_id.as_str())
                || c.legs.iter().any(|l| flow_ids.contains(l.flow_id.as_str())))
        {
            let e = latest.entry(c.chain_id.as_str()).or_insert(c.revision);
            *e = (*e).max(c.revision);
        }
    }
    let mut leg_ids: HashSet<&str> = HashSet::new();
    let mut picked: Vec<(usize, Rank)> = Vec::new();
    for (i, r) in history.clone().enumerate() {
        match r {
            Record::Flow(f) if flow_ids.contains(f.flow_id.as_str()) && link.ends_in(f) => {
                picked.push((i, Rank::Link));
            }
            Record::Chain(c) if latest.get(c.chain_id.as_str()) == Some(&c.revision) => {
                leg_ids.extend(c.legs.iter().map(|l| l.flow_id.as_str()));
                picked.push((i, Rank::Chain));
            }
            _ => {}
        }
    }
    for (i, r) in history.clone().enumerate() {
        if let Record::Flow(f) = r
            && leg_ids.contains(f.flow_id.as_str())
            && !link.ends_in(f)
        {
            picked.push((i, Rank::Leg));
        }
    }
    let truncated = picked.len() > max;
    if truncated {
        // Keep the highest ranks, newest first within a rank.
        picked.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        picked.truncate(max);
    }
    picked.sort_by_key(|p| p.0);
    let wanted: HashSet<usize> = picked.iter().map(|p| p.0).collect();
    let out = history.enumerate().filter(|(i, _)| wanted.contains(i)).map(|(_, r)| r.clone());
    (out.collect(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        assembly::HOP_VANTAGE,
        records::{ChainRecord, FlowRecord, LegSummary},
    };

    fn a(s: &str) -> std::net::SocketAddr {
        s.parse().expect("addr")
    }

    fn accepted(id: &str, peer: &str, chain: &str) -> Record {
        Record::Flow(FlowRecord {
            flow_id: id.into(),
            vantage: Some(HOP_VANTAGE.into()),
            hop: Some("gke-squid".into()),
            src: Some(a(peer)),
            dst: Some(a("10.0.2.10:3128")),
            dst_actual: Some(a("10.0.2.10:3128")),
            chain_id: Some(chain.into()),
            ..FlowRecord::default()
        })
    }

    fn upstream(id: &str, src: &str) -> Record {
        Record::Flow(FlowRecord {
            flow_id: id.into(),
            leg: Some("gke-squid->gce-proxy".into()),
            hop: Some("gce-proxy".into()),
            src: Some(a(src)),
            dst: Some(a("10.128.2.100:3128")),
            ..FlowRecord::default()
        })
    }

    fn chain(id: &str, revision: u32, legs: &[&str]) -> Record {
        Record::Chain(ChainRecord {
            chain_id: id.into(),
            revision,
            legs: legs
                .iter()
                .map(|l| LegSummary { flow_id: (*l).into(), ..LegSummary::default() })
                .collect(),
            ..ChainRecord::default()
        })
    }

    fn ids(rs: &[Record]) -> Vec<String> {
        rs.iter()
            .map(|r| match r {
                Record::Flow(f) => f.flow_id.clone(),
                Record::Chain(c) => format!("{}#{}", c.chain_id, c.revision),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn the_link_its_chain_and_the_chain_legs_nothing_else() {
        let history = [
            accepted("in-1", "10.0.1.10:40001", "c1"),
            upstream("up-1", "10.0.2.10:50001"),
            chain("c1", 0, &["in-1", "up-1"]),
            // Another client's request through the same hop.
            accepted("in-2", "10.0.1.11:40002", "c2"),
            upstream("up-2", "10.0.2.10:50002"),
            chain("c2", 0, &["in-2", "up-2"]),
            // The first chain amended by a late leg.
            upstream("up-1b", "10.0.2.10:50003"),
            chain("c1", 1, &["in-1", "up-1", "up-1b"]),
        ];
        let link = Link { peer: a("10.0.1.10:40001"), local: a("10.0.2.10:3128") };
        let (got, truncated) = select(history.iter(), &link, MAX_RECORDS);
        assert!(!truncated);
        assert_eq!(ids(&got), ["in-1", "up-1", "up-1b", "c1#1"]);
        // A link nobody here ended: nothing at all.
        let other = Link { peer: a("10.0.1.99:1"), local: a("10.0.2.10:3128") };
        assert!(select(history.iter(), &other, MAX_RECORDS).0.is_empty());
        // The connecting end of a link is an answer too (asked from upstream).
        let up = Link { peer: a("10.0.2.10:50002"), local: a("10.128.2.100:3128") };
        assert_eq!(ids(&select(history.iter(), &up, MAX_RECORDS).0), ["in-2", "up-2", "c2#0"]);
    }

    #[test]
    fn bounded_legs_go_first() {
        let mut history = vec![accepted("in-1", "10.0.1.10:40001", "c1")];
        let legs: Vec<String> = (0..10).map(|i| format!("up-{i}")).collect();
        for (i, l) in legs.iter().enumerate() {
            history.push(upstream(l, &format!("10.0.2.10:{}", 50000 + i)));
        }
        let refs: Vec<&str> =
            std::iter::once("in-1").chain(legs.iter().map(String::as_str)).collect();
        history.push(chain("c1", 0, &refs));
        let link = Link { peer: a("10.0.1.10:40001"), local: a("10.0.2.10:3128") };
        let (got, truncated) = select(history.iter(), &link, 4);
        assert!(truncated);
        assert_eq!(ids(&got), ["in-1", "up-8", "up-9", "c1#0"]);
    }
}
