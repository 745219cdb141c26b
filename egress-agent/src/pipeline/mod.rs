//! The data path after the ring, one stage per module, on one task:
//!
//! ```text
//! ring ─▶ decode ─▶ flow ─▶ enrich ─▶ stitch ─▶ sinks
//!  ring   kernel::   flow_    enrich   stitch    (Output)
//!         decode     table    + legs   + judge
//! ```
//!
//! [`ring`] reads the ring buffer; [`processor`] is the hub that takes each
//! record through the stages and hands what comes out to the sink. The
//! verdict rules are [`judge`]'s; [`proxy_http`] reads the CONNECT and status
//! lines of proxy flows, [`dns_tracker`] and [`dns_wire`] the DNS messages.
pub mod aggregate;
pub mod client_leg;
pub mod dns_tracker;
pub mod dns_wire;
pub mod enrich;
mod flow_bytes;
pub mod flow_table;
pub mod gateway;
pub mod judge;
pub mod legs;
pub mod policy;
pub mod processor;
pub mod proxy_http;
pub mod ring;
pub mod stitch;
pub mod tls;
pub mod vantage;

pub use self::{
    processor::{Output, Processor},
    ring::Pipeline,
};
