//! The API's wire format, one JSON object per line in both directions:
//!
//! - request (client → agent, one line): `{"op":"status"}`,
//!   `{"op":"snapshot"}` or `{"op":"follow","history":true}`;
//! - answer: [`Record`]s tagged by `record` (`flow`, `chain`, `dns`),
//!   [`Control`] lines (`lost`: `count` records this client missed because it
//!   read too slowly, also counted in `egress_api_records_dropped_total`;
//!   `history_end` after the history of a follow), or one [`Status`] object
//!   for `status`.
//!
//! A request line is at most [`MAX_REQUEST_BYTES`] (the three requests are
//! under 40 bytes); [`parse_request`] is the one way the agent reads it.
use serde::{Deserialize, Serialize};

use crate::records::Record;

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

/// Longest request line the agent reads, newline included; a longer one is
/// refused (`request_too_long`) without being buffered further.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("bad request: {0}")]
    Malformed(serde_json::Error),
}

/// One request line as the client sent it (with or without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    serde_json::from_slice(line.trim_ascii()).map_err(RequestError::Malformed)
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
impl Status {
    /// A daemon's status for tests of the servers that answer with it.
    pub fn for_tests(history_capacity: usize) -> Self {
        Self {
            version: "t".into(),
            pid: 1,
            started: String::new(),
            attached: "0/0".into(),
            history: 0,
            history_capacity,
        }
    }
}

/// A line of a stream that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Control {
    /// Records this client missed (it read too slowly).
    Lost { count: u64 },
    /// Follow with history: the history ends here, live records follow.
    HistoryEnd,
}

impl Control {
    /// The line as the agent writes it (without the newline).
    pub fn line(&self) -> String {
        match self {
            Self::Lost { count } => format!("{{\"record\":\"lost\",\"count\":{count}}}"),
            Self::HistoryEnd => "{\"record\":\"history_end\"}".to_string(),
        }
    }
}

/// One line of an answer stream, as clients read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant, reason = "read one at a time; most lines are records")]
pub enum Message {
    Record(Record),
    Control(Control),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{DnsRecord, FlowRecord};

    #[test]
    fn lines_read_back() {
        let line = Record::Flow(FlowRecord { pid: 7, ..FlowRecord::default() }).json_line();
        assert!(
            matches!(serde_json::from_str(&line).expect("flow"), Message::Record(Record::Flow(f)) if f.pid == 7)
        );
        let line =
            Record::Dns(DnsRecord { name: "a.test".into(), ..DnsRecord::default() }).json_line();
        assert!(
            matches!(serde_json::from_str(&line).expect("dns"), Message::Record(Record::Dns(d)) if d.name == "a.test")
        );
        for c in [Control::Lost { count: 3 }, Control::HistoryEnd] {
            assert_eq!(serde_json::to_string(&c).expect("json"), c.line());
            assert_eq!(
                serde_json::from_str::<Message>(&c.line())
                    .map(|m| matches!(m, Message::Control(x) if x == c))
                    .ok(),
                Some(true)
            );
        }
        assert!(serde_json::from_str::<Message>(r#"{"record":"from_the_future"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::Follow { history: true }).expect("json"),
            r#"{"op":"follow","history":true}"#
        );
    }

    #[test]
    fn requests_are_bounded_and_strict() {
        assert_eq!(parse_request(b"{\"op\":\"status\"}\n").ok(), Some(Request::Status));
        assert_eq!(parse_request(b" {\"op\":\"snapshot\"} \r\n").ok(), Some(Request::Snapshot));
        let mut long = br#"{"op":"status","pad":""#.to_vec();
        long.resize(MAX_REQUEST_BYTES + 1, b'x');
        assert!(matches!(parse_request(&long), Err(RequestError::TooLong)));
        for bad in
            [&b""[..], b"\xff\xfe", b"{\"op\":\"follow\"}", b"{\"op\":\"rm\"}", b"[]", b"null"]
        {
            assert!(matches!(parse_request(bad), Err(RequestError::Malformed(_))), "{bad:?}");
        }
    }
}
