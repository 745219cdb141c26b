//! A histogram family that can also take counts already bucketed: the
//! kernel counts clean connects into the same buckets the agent exports
//! (`egress_common::LATENCY_BOUNDS_NS`), and the agent adds its counts in one
//! step, with their exact sum, instead of replaying one observation each.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

#[derive(Debug, Default, Clone)]
struct Series {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

#[derive(Debug)]
struct Inner {
    desc: Desc,
    bounds: Vec<f64>,
    series: Mutex<HashMap<Vec<String>, Series>>,
}

/// A labelled histogram with fixed bounds: [`Self::observe`] one value, or
/// [`Self::add`] bucketed counts.
#[derive(Debug, Clone)]
pub struct BucketHistogramVec {
    inner: Arc<Inner>,
}

impl BucketHistogramVec {
    pub fn new(
        name: &str,
        help: &str,
        bounds: &[f64],
        labels: &[&str],
    ) -> prometheus::Result<Self> {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            labels.iter().map(|l| (*l).to_string()).collect(),
            HashMap::new(),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                desc,
                bounds: bounds.to_vec(),
                series: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn with<R>(&self, labels: &[&str], f: impl FnOnce(&mut Series, &[f64]) -> R) -> R {
        let mut map = self.inner.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = labels.iter().map(|l| (*l).to_string()).collect();
        let s = map
            .entry(key)
            .or_insert_with(|| Series { counts: vec![0; self.inner.bounds.len() + 1], sum: 0.0 });
        f(s, &self.inner.bounds)
    }

    pub fn observe(&self, labels: &[&str], v: f64) {
        self.with(labels, |s, bounds| {
            let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
            s.counts[i] += 1;
            s.sum += v;
        });
    }

    /// Add counts per bucket (`counts[i]` for bound `i`, the last for +Inf;
    /// a shorter slice leaves the rest) and their sum.
    pub fn add(&self, labels: &[&str], counts: &[u64], sum: f64) {
        self.with(labels, |s, _| {
            for (c, n) in s.counts.iter_mut().zip(counts) {
                *c += n;
            }
            s.sum += sum;
        });
    }

    /// Make the series exist (at zero).
    pub fn touch(&self, labels: &[&str]) {
        self.with(labels, |_, _| {});
    }
}

impl Collector for BucketHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let d = &self.inner.desc;
        let map = self.inner.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<&Vec<String>> = map.keys().collect();
        keys.sort();
        let mut metrics = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(s) = map.get(key) else { continue };
            let mut h = Histogram::default();
            let mut cumulative = 0;
            let mut buckets = Vec::with_capacity(self.inner.bounds.len());
            for (bound, n) in self.inner.bounds.iter().zip(&s.counts) {
                cumulative += n;
                let mut b = Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            cumulative += s.counts.last().copied().unwrap_or(0);
            h.set_bucket(buckets);
            h.set_sample_count(cumulative);
            h.set_sample_sum(s.sum);
            let labels = d
                .variable_labels
                .iter()
                .zip(key)
                .map(|(n, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(n.clone());
                    l.set_value(v.clone());
                    l
                })
                .collect();
            let mut m = Metric::from_label(labels);
            m.set_histogram(h);
            metrics.push(m);
        }
        let mut f = MetricFamily::default();
        f.set_name(d.fq_name.clone());
        f.set_help(d.help.clone());
        f.set_field_type(MetricType::HISTOGRAM);
        f.set_metric(metrics);
        vec![f]
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, Registry, TextEncoder};

    use super::*;

    #[test]
    fn observations_and_added_counts_render_as_one_histogram() {
        let r = Registry::new();
        let h = BucketHistogramVec::new("t_seconds", "test", &[0.1, 1.0], &["result"]).expect("h");
        r.register(Box::new(h.clone())).expect("register");
        h.observe(&["ok"], 0.05);
        h.observe(&["ok"], 5.0);
        h.add(&["ok"], &[3, 1, 0], 0.5);
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("t_seconds_bucket{result=\"ok\",le=\"0.1\"} 4"), "{text}");
        assert!(text.contains("t_seconds_bucket{result=\"ok\",le=\"1\"} 5"), "{text}");
        assert!(text.contains("t_seconds_bucket{result=\"ok\",le=\"+Inf\"} 6"), "{text}");
        assert!(text.contains("t_seconds_count{result=\"ok\"} 6"), "{text}");
        assert!(text.contains("t_seconds_sum{result=\"ok\"} 5.55"), "{text}");
    }
}
