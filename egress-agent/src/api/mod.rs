//! The daemon's local API: a unix socket (root-only) that serves the recent
//! records (a bounded history) and a live stream of new ones. The agent's
//! side ([`server`]) is a sink of `run`; the client side ([`client`]) is what
//! `watch`, `flows` and `explain` read; both speak [`wire`]. The socket file
//! is created and removed by [`socket`] (never replacing anything but a
//! stale socket). [`peer`] is the one remote door: other agents' questions
//! about one link, over mutual TLS, answered from the same history.
pub mod client;
pub mod peer;
pub mod server;
pub mod socket;
pub mod wire;

/// Where `run` listens and the clients look by default.
pub const DEFAULT_SOCKET: &str = "/run/egress-agent/api.sock";
/// Records the daemon keeps for `flows` and `explain`.
pub const DEFAULT_HISTORY: usize = 10_000;
