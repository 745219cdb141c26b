//! Where records and counts end up: Prometheus metrics (with the one way to
//! register a metric) served over HTTP, and the JSON flow log. The local
//! API, the other sink of `run`, lives in [`crate::api`] with its wire format.
pub mod flow_log;
pub mod http;
pub mod metrics;
pub mod register;
pub mod unit_label;

pub use self::{metrics::Metrics, register::MetricError};
