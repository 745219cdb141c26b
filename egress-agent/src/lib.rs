//! egress-agent: which process tried to reach what, through which proxy hop,
//! and where it broke. One module per stage of the data path, imports one way:
//!
//! ```text
//! kernel ──▶ decode ──▶ flow ──▶ enrich ──▶ stitch ──▶ verdict ──▶ sinks
//! kernel/    kernel::   pipeline::flow_table  pipeline::stitch    sinks/, api/
//! loader     decode     pipeline::enrich (attribution/)  pipeline::judge
//! ```
//!
//! - [`kernel`]: the program table, loading for this kernel ([`kernel::offsets`]
//!   from tracefs and BTF) and ring decode;
//! - [`pipeline`]: the ring reader and the processor that takes every record
//!   through the stages, on one task;
//! - [`attribution`]: who and where (cgroups, Kubernetes, NAT, address classes);
//! - [`sinks`]: metrics over HTTP and the JSON flow log; [`api`]: the local
//!   API and the peer API;
//! - [`assembly`]: one request's legs joined across agents by exact keys
//!   (`explain --assemble`);
//! - [`records`]: what the stages produce (a leaf); [`config`]: the
//!   configuration file, validated (a leaf);
//! - [`prober`]: active CONNECT probes through the chain (and TLS inside
//!   the tunnel); [`client_tls`]: the rustls client configuration the
//!   agent's own clients share;
//! - [`session`]: the composition root; [`cli`]: the command line, the
//!   binary's edge.
pub mod api;
pub mod assembly;
pub mod attribution;
pub mod cli;
pub mod client_tls;
pub mod config;
pub mod errors;
pub mod kernel;
pub mod pipeline;
pub mod prober;
pub mod records;
pub mod session;
pub mod sinks;
