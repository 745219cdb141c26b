//! The one way to make a metric: define it and register it on the agent's
//! registry in one call. Every family the agent exports (the flow metrics,
//! and the self-metrics of the Kubernetes index, conntrack, the prober and
//! the local API) is made here, so a name clash or a bad definition is one
//! typed error, never a panic.
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, core::Collector,
};

#[derive(Debug, thiserror::Error)]
#[error("registering metric {name}")]
pub struct MetricError {
    name: String,
    source: prometheus::Error,
}

fn register<C: Collector + Clone + 'static>(
    r: &Registry,
    name: &str,
    made: prometheus::Result<C>,
) -> Result<C, MetricError> {
    let err = |source| MetricError { name: name.to_string(), source };
    let c = made.map_err(err)?;
    r.register(Box::new(c.clone())).map_err(err)?;
    Ok(c)
}

pub fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricError> {
    register(r, name, IntCounter::new(name, help))
}

pub fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricError> {
    register(r, name, IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricError> {
    register(r, name, IntGauge::new(name, help))
}

pub fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricError> {
    register(r, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

pub fn float_gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, MetricError> {
    register(r, name, GaugeVec::new(Opts::new(name, help), labels))
}

pub fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> Result<Histogram, MetricError> {
    register(
        r,
        name,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
    )
}

pub fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, MetricError> {
    register(
        r,
        name,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels),
    )
}

/// A histogram family that also takes counts bucketed elsewhere (the kernel).
pub fn bucket_histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<super::histogram::BucketHistogramVec, MetricError> {
    register(r, name, super::histogram::BucketHistogramVec::new(name, help, buckets, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clash_is_an_error_not_a_panic() {
        let r = Registry::new();
        counter(&r, "egress_test_total", "a test counter").expect("first");
        let e = counter(&r, "egress_test_total", "again").expect_err("duplicate");
        assert_eq!(e.to_string(), "registering metric egress_test_total");
        assert!(counter_vec(&r, "bad name", "x", &["a"]).is_err());
    }
}
