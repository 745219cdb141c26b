//! The client vantage (issue 15): which hop failed, and why, judged from
//! what the client's own node sees — the client socket (connect outcome,
//! errno, retransmits) and the bytes the first proxy answered.
//!
//! Pure logic, no kernel and no pipeline: the pipeline feeds it.
//! - [`reassembly`]: captured chunks `(stream_offset, bytes)` → the
//!   contiguous answer prefix, header block end, body bytes (bounded).
//! - [`answer`] (+ [`sf`] for RFC 9209 `Proxy-Status`): bytes → [`ProxyAnswer`]
//!   (status line, `Server`, `Via`, `X-Cache*`, `X-Squid-Error`,
//!   `Proxy-Status`, `Content-Length`, `Proxy-agent`).
//! - [`maker`]: which configured hop made the answer ([`HopIdentity::via_names`]).
//! - [`cause`]: what the answer says went wrong, at the maker or past it.
//! - [`judge`]: [`judge_client`] → [`ClientVerdict`].
//!
//! What the client vantage cannot know (the verdict says so with
//! `vantage_blind` / `reason_inferred`): anything between hops that does not
//! change the answer (retransmits, a slow parent), the cause of a connect
//! failure a proxy reports without an errno (tinyproxy, privoxy, apache:
//! only timing hints at a timeout; tinyproxy's DNS failure reads like a
//! refused connect), and, past two hops, how deep a relayed answer was made.
//!
//! The rules come from real captures (`tests/fixtures/proxy-answers/`,
//! REPORT.md there): squid 5.7, tinyproxy 1.11.1, privoxy 3.0.34 and
//! apache 2.4 alone and in front of a Squid parent.
pub mod answer;
pub mod cause;
pub mod judge;
pub mod maker;
pub mod reassembly;
pub mod sf;

#[cfg(test)]
mod fixtures;

pub use answer::{ProxyAnswer, SquidError, ViaEntry, parse_answer};
pub use judge::{ClientFacts, ClientVerdict, ConnectOutcome, judge_client};
pub use maker::HopIdentity;
pub use reassembly::Reassembly;
pub use sf::ProxyStatusEntry;

/// The pseudo-hop past the last configured hop.
pub const INTERNET: &str = "internet";

/// The value of a flow record's `vantage` field for these verdicts.
pub const VANTAGE: &str = "client";
