//! egress-agent: kernel → decode → flow → verdict → sinks.
//!
//! - [`probes`] loads and attaches the kernel programs for this kernel, with
//!   layouts from [`offsets`] (tracefs and BTF);
//! - [`pipeline`] reads the ring, [`events`] decodes, [`flows`] joins events
//!   into [`record::FlowRecord`]s with a [`verdict`];
//! - sinks: [`metrics`] / [`server`] (Prometheus), [`output`] (CLI).
pub mod api;
pub mod cgroup;
pub mod chain;
pub mod chains;
pub mod cli;
pub mod dns;
pub mod enrich;
pub mod events;
pub mod filter;
pub mod flows;
pub mod kube;
pub mod metrics;
pub mod nat;
pub mod offsets;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod prober;
pub mod probes;
pub mod proxy;
pub mod record;
pub mod remote;
pub mod server;
pub mod session;
pub mod tls;
pub mod verdict;
