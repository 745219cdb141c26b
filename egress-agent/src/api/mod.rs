//! The daemon's local API: a unix socket (root-only) that serves the recent
//! records (a bounded history) and a live stream of new ones.
//!
//! Wire format, one JSON object per line in both directions:
//! - request (client → agent, one line): `{"op":"status"}`,
//!   `{"op":"snapshot"}` or `{"op":"follow","history":true}`;
//! - answer: records tagged by `record`: `flow` (a [`FlowRecord`]), `chain`
//!   (a [`ChainRecord`]), `lost` (`count` records this client missed because
//!   it read too slowly; also counted in `egress_api_records_dropped_total`),
//!   `history_end` (after the history of a follow), or one status object
//!   for `status`.
pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::{chains::ChainRecord, dns::DnsRecord, record::FlowRecord};

/// Where `run` listens and the clients look by default.
pub const DEFAULT_SOCKET: &str = "/run/egress-agent/api.sock";
/// Records the daemon keeps for `flows` and `explain`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// A record as written to the API and to JSON output.
#[derive(Debug, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum RecordRef<'a> {
    Flow(&'a FlowRecord),
    Chain(&'a ChainRecord),
}

/// A record as the daemon keeps it in the history: serialized only when a
/// client reads it, so a node nobody is looking at pays no JSON per flow.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one allocation per record (the Arc); most records are flows")]
pub enum Item {
    Flow(FlowRecord),
    Chain(ChainRecord),
    Dns(DnsRecord),
}

impl Item {
    /// The record as one JSON line (no newline), as clients read it.
    pub fn to_line(&self) -> String {
        match self {
            Self::Flow(r) => crate::output::record_line(RecordRef::Flow(r)),
            Self::Chain(c) => crate::output::record_line(RecordRef::Chain(c)),
            Self::Dns(d) => crate::output::json_line(d),
        }
    }
}

/// A record as read back by clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Flow(Box<FlowRecord>),
    Chain(Box<ChainRecord>),
    /// A DNS lookup (see `dns::DnsRecord`), kept as JSON on the client side.
    Dns(Box<serde_json::Value>),
    Lost { count: u64 },
    /// Follow with history: the history ends here, live records follow.
    HistoryEnd,
}

impl Record {
    pub fn time(&self) -> &str {
        match self {
            Self::Flow(r) => &r.time,
            Self::Chain(c) => &c.time,
            Self::Dns(d) => d["time"].as_str().unwrap_or(""),
            Self::Lost { .. } | Self::HistoryEnd => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// One status line.
    Status,
    /// The history, then the connection closes.
    Snapshot,
    /// Optionally the history, then new records as they come, until either side closes.
    Follow { history: bool },
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// RFC 3339 start time of the daemon.
    pub started: String,
    /// e.g. `9/9 programs attached`.
    pub attached: String,
    pub history: usize,
    pub history_capacity: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Reason, Verdict};

    #[test]
    fn records_round_trip_with_their_tag() {
        let f = FlowRecord { pid: 7, verdict: Verdict::Failed, reason: Some(Reason::Refused), flow_id: "a-1".into(), ..FlowRecord::default() };
        let line = serde_json::to_string(&RecordRef::Flow(&f)).expect("json");
        assert!(line.starts_with("{\"record\":\"flow\""), "{line}");
        let Record::Flow(back) = serde_json::from_str(&line).expect("parse") else { panic!("flow") };
        assert_eq!((back.pid, back.verdict, back.reason), (7, Verdict::Failed, Some(Reason::Refused)));
        let c = ChainRecord { chain_id: "c1".into(), target: Some("a.test:443".into()), ..ChainRecord::default() };
        let line = serde_json::to_string(&RecordRef::Chain(&c)).expect("json");
        let Record::Chain(back) = serde_json::from_str(&line).expect("parse") else { panic!("chain") };
        assert_eq!(back.target.as_deref(), Some("a.test:443"));
        let Record::Lost { count } = serde_json::from_str(r#"{"record":"lost","count":3}"#).expect("lost") else { panic!("lost") };
        assert_eq!(count, 3);
        assert_eq!(serde_json::to_string(&Request::Follow { history: true }).expect("json"), r#"{"op":"follow","history":true}"#);
    }
}
