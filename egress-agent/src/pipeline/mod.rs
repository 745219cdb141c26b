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
pub mod dns_tracker;
pub mod dns_wire;
pub mod enrich;
pub mod flow_table;
pub mod judge;
pub mod legs;
pub mod processor;
pub mod proxy_http;
pub mod ring;
pub mod stitch;

pub use self::{processor::Processor, ring::Pipeline};
use crate::records::Record;

/// What leaves the pipeline: every record (flows that repeat their connect
/// verdict at close are `quiet`: counted, not shown), handed over owned so a
/// sink that keeps one (the API history) keeps it without a copy.
#[allow(clippy::large_enum_variant, reason = "moved once into the sink; most outputs are records")]
pub enum Output {
    Record(Record),
    /// What the ring held is processed: a sink that batches hands its batch
    /// on here (one hand-off per ring batch, not per record).
    Idle,
}
