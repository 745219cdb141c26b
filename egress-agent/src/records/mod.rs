//! What the agent says about the traffic it sees: flow, chain and DNS
//! records with their verdicts, and the time they carry. A leaf: records
//! import no other module of the agent; every stage and sink imports them.
//!
//! On the wire (the JSON log, the local API, `-o json`) every record is one
//! JSON object with stable snake_case fields and a `record` tag: `flow`,
//! `chain`, `dns` or `aggregate` ([`Record`]).
mod aggregate;
mod chain;
mod dns;
mod flow;
mod time;
mod verdict;

use serde::{Deserialize, Serialize};

pub use self::{
    aggregate::AggregateRecord,
    chain::{ChainRecord, LegSummary},
    dns::{DnsRecord, TIMEOUT as DNS_TIMEOUT},
    flow::{DstClass, FlowRecord, Phase, PodLabels, UNKNOWN_WORKLOAD},
    time::{Clock, mono_now_ns, parse_rfc3339, rfc3339},
    verdict::{PolicyVerdict, Reason, Verdict},
};

/// A record, tagged with its kind: the one shape records take from the
/// pipeline to every sink and back from the local API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "moved, not copied, from the pipeline to the sinks; most records are flows"
)]
pub enum Record {
    Flow(FlowRecord),
    Chain(ChainRecord),
    /// A DNS lookup (query and response, or its timeout).
    Dns(DnsRecord),
    /// Clean flows of one owner to one destination, counted.
    Aggregate(AggregateRecord),
}

impl Record {
    /// RFC 3339 time of the record.
    pub fn time(&self) -> &str {
        match self {
            Self::Flow(r) => &r.time,
            Self::Chain(c) => &c.time,
            Self::Dns(d) => &d.time,
            Self::Aggregate(a) => &a.time,
        }
    }

    /// The record as one JSON line (without the newline).
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_documented_fields() {
        let r = FlowRecord {
            time: "2026-11-21T22:01:02.345Z".into(),
            phase: Phase::Connect,
            pid: 4242,
            comm: "curl".into(),
            cgroup_id: 9,
            dst: Some("10.96.0.10:3128".parse().expect("a")),
            dst_actual: Some("10.0.1.5:3128".parse().expect("a")),
            verdict: Verdict::Failed,
            reason: Some(Reason::Timeout),
            latency_ms: 3012.5,
            retransmits: 2,
            ..FlowRecord::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&Record::Flow(r).json_line()).expect("json");
        for k in [
            "record",
            "time",
            "pid",
            "comm",
            "cgroup_id",
            "src",
            "dst",
            "verdict",
            "reason",
            "latency_ms",
            "retransmits",
            "hop",
            "target",
            "proxy_status",
            "chain_id",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(
            (v["record"].as_str(), v["verdict"].as_str(), v["reason"].as_str()),
            (Some("flow"), Some("failed"), Some("timeout"))
        );
        assert_eq!(
            (v["dst"].as_str(), v["dst_actual"].as_str(), v["phase"].as_str()),
            (Some("10.96.0.10:3128"), Some("10.0.1.5:3128"), Some("connect"))
        );
    }

    #[test]
    fn records_round_trip_with_their_tag() {
        let f = FlowRecord {
            pid: 7,
            verdict: Verdict::Failed,
            reason: Some(Reason::Refused),
            flow_id: "a-1".into(),
            ..FlowRecord::default()
        };
        let line = Record::Flow(f).json_line();
        assert!(line.starts_with("{\"record\":\"flow\""), "{line}");
        let Record::Flow(back) = serde_json::from_str(&line).expect("parse") else {
            panic!("flow")
        };
        assert_eq!(
            (back.pid, back.verdict, back.reason),
            (7, Verdict::Failed, Some(Reason::Refused))
        );
        let c = ChainRecord {
            chain_id: "c1".into(),
            target: Some("a.test:443".into()),
            ..ChainRecord::default()
        };
        let Record::Chain(back) =
            serde_json::from_str(&Record::Chain(c).json_line()).expect("parse")
        else {
            panic!("chain")
        };
        assert_eq!(back.target.as_deref(), Some("a.test:443"));
        let d = DnsRecord {
            name: "a.test".into(),
            rcode: "NXDOMAIN".into(),
            verdict: Verdict::Failed,
            reason: Some(Reason::DnsFailed),
            ..DnsRecord::default()
        };
        let line = Record::Dns(d).json_line();
        assert!(line.starts_with("{\"record\":\"dns\",\"time\":"), "{line}");
        let Record::Dns(back) = serde_json::from_str(&line).expect("parse") else { panic!("dns") };
        assert_eq!(
            (back.name.as_str(), &*back.rcode, back.reason),
            ("a.test", "NXDOMAIN", Some(Reason::DnsFailed))
        );
    }
}
