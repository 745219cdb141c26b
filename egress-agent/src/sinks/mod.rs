//! Where records and counts end up: Prometheus metrics (with the one way to
//! register a metric) served over HTTP, and the export of records off the
//! node (`export`: stdout lines, native or ECS, and OTLP logs). The local
//! API, the other sink of `run`, lives in [`crate::api`] with its wire format.
pub mod dns_metrics;
pub mod export;
pub mod histogram;
pub mod http;
pub mod metrics;
pub mod register;
pub mod unit_label;

pub use self::{metrics::Metrics, register::MetricError};
