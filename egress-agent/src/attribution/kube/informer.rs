//! The informers: one kube-runtime `watcher` per resource, feeding the [`Index`].
//!
//! - The watcher lists (`resourceVersion=0`, from the apiserver's watch cache,
//!   500 a page), then watches from the list's resourceVersion with bookmarks,
//!   re-watches when a watch ends and re-lists on 410 Gone. Its `Init`/`InitDone`
//!   events bracket a complete list, which replaces the resource's store
//!   (vanished pods are retained like deleted ones).
//! - Backoff: [`InformerBackoff`], exponential with jitter. The watcher emits
//!   `Init` before every list attempt, and kube-runtime's stream backoff resets
//!   on any item, so with its default backoff a failing list is retried at the
//!   minimum delay forever; this one resets only on real progress (a complete
//!   list or a watch event) or after two quiet minutes.
//! - `egress_kube_watch_up{resource}` is set to 1 by a client layer when a
//!   list or watch request gets a 2xx answer, and to 0 by every error the
//!   watcher reports (request failed, body not a List, watch stream broken,
//!   410). So a quietly re-established watch reads 1 without waiting for an
//!   object to change.
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube_runtime::WatchStreamExt;
use kube_runtime::watcher::{self, Event};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::index::{Index, Update};
use super::objects::Watched;
use super::raw::Raw;
use super::{KubeError, KubeOptions, KubeTuning};
use crate::sinks::register::{self as reg, MetricError};

pub(crate) const RESOURCES: [&str; 6] =
    ["pods", "services", "endpointslices", "nodes", "namespaces", "networkpolicies"];

/// The background tasks; aborted when the last [`super::KubeIndex`] clone goes.
pub(crate) struct Tasks(Vec<tokio::task::AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[derive(Clone)]
pub(crate) struct KubeMetrics {
    up: IntGaugeVec,
    malformed: IntCounterVec,
    objects: IntGaugeVec,
    errors: IntCounterVec,
}

#[derive(Clone)]
struct ResourceMetrics {
    up: IntGauge,
    malformed: IntCounter,
    objects: IntGauge,
    errors: IntCounter,
}

impl KubeMetrics {
    pub fn register(registry: &Registry) -> Result<Self, MetricError> {
        let labels = &["resource"];
        let up = reg::gauge_vec(
            registry,
            "egress_kube_watch_up",
            "1 while the Kubernetes watch of a resource is healthy, 0 after an error",
            labels,
        )?;
        let malformed = reg::counter_vec(
            registry,
            "egress_kube_objects_malformed_total",
            "Kubernetes objects received that did not decode (skipped) or had addresses that did not parse (left out); a re-list counts them again",
            labels,
        )?;
        let objects = reg::gauge_vec(
            registry,
            "egress_kube_objects",
            "Kubernetes objects in the metadata index (pods: live ones)",
            labels,
        )?;
        let errors = reg::counter_vec(
            registry,
            "egress_kube_watch_errors_total",
            "Failed Kubernetes list/watch attempts, each followed by a backoff",
            labels,
        )?;
        let metrics = KubeMetrics { up, malformed, objects, errors };
        for resource in RESOURCES {
            // Every series exists from the start, at 0.
            metrics.resource(resource);
        }
        Ok(metrics)
    }

    fn resource(&self, resource: &str) -> ResourceMetrics {
        ResourceMetrics {
            up: self.up.with_label_values(&[resource]),
            malformed: self.malformed.with_label_values(&[resource]),
            objects: self.objects.with_label_values(&[resource]),
            errors: self.errors.with_label_values(&[resource]),
        }
    }
}

pub(crate) fn spawn_all(
    config: kube::Config,
    opts: &KubeOptions,
    tuning: &KubeTuning,
    index: Arc<Index>,
    metrics: KubeMetrics,
) -> Result<Tasks, KubeError> {
    // resourceVersion=0 (served from the apiserver's watch cache) is only
    // sent without a page limit: every node's agent listing with a limit
    // would be a consistent read, an etcd scan per agent.
    let mut all = watcher::Config::default().any_semantic();
    all.page_size = None;
    let pods = match &opts.node_name {
        Some(node) => all.clone().fields(&format!("spec.nodeName={node}")),
        None => all.clone(),
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(KubeError::NoRuntime)?;
    let mut tasks = Tasks(Vec::new());
    tasks.0.push(spawn::<Pod>(&runtime, &config, pods, tuning, index.clone(), &metrics)?);
    tasks.0.push(spawn::<Service>(
        &runtime,
        &config,
        all.clone(),
        tuning,
        index.clone(),
        &metrics,
    )?);
    tasks.0.push(spawn::<EndpointSlice>(
        &runtime,
        &config,
        all.clone(),
        tuning,
        index.clone(),
        &metrics,
    )?);
    tasks.0.push(spawn::<Node>(&runtime, &config, all.clone(), tuning, index.clone(), &metrics)?);
    // NetworkPolicy diagnosis: the policies and the namespaces' labels.
    tasks.0.push(spawn::<Namespace>(
        &runtime,
        &config,
        all.clone(),
        tuning,
        index.clone(),
        &metrics,
    )?);
    tasks.0.push(spawn::<NetworkPolicy>(&runtime, &config, all, tuning, index.clone(), &metrics)?);
    // Deleted pods are forgotten after the retention even without events.
    let every = (tuning.pod_retention / 4).max(Duration::from_millis(100));
    tasks.0.push(
        runtime
            .spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    index.prune_pods();
                }
            })
            .abort_handle(),
    );
    Ok(tasks)
}

fn spawn<K: Watched>(
    runtime: &tokio::runtime::Handle,
    config: &kube::Config,
    wc: watcher::Config,
    tuning: &KubeTuning,
    index: Arc<Index>,
    metrics: &KubeMetrics,
) -> Result<tokio::task::AbortHandle, KubeError> {
    let m = metrics.resource(K::RESOURCE);
    let client = kube::client::ClientBuilder::try_from(config.clone())
        .map_err(|source| KubeError::Request { what: "building the Kubernetes client", source })?
        .with_layer(&UpLayer(m.up.clone()))
        .build();
    let api: Api<Raw<K>> = Api::all(client);
    let progress = Arc::new(AtomicBool::new(false));
    let backoff = InformerBackoff::new(tuning.backoff_min, tuning.backoff_max, progress.clone());
    let events = watcher::watcher(api, wc).backoff(backoff);
    Ok(runtime.spawn(run::<K>(events, index, m, progress)).abort_handle())
}

async fn run<K: Watched>(
    events: impl Stream<Item = Result<Event<Raw<K>>, watcher::Error>>,
    index: Arc<Index>,
    m: ResourceMetrics,
    progress: Arc<AtomicBool>,
) {
    let resource = K::RESOURCE;
    let mut events = pin!(events);
    let mut listing: Vec<(String, K::Entry)> = Vec::new();
    let mut failing = false;
    let mut warned_malformed = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                m.up.set(0);
                m.errors.inc();
                if failing {
                    tracing::debug!(resource, %error, "kube watch still failing");
                } else {
                    tracing::warn!(resource, %error, "kube watch failed; index kept, retrying with backoff");
                }
                failing = true;
                continue;
            }
        };
        let mut malformed = |reason: &str, raw_meta: &ObjectMeta| {
            m.malformed.inc();
            let (ns, name) = (
                raw_meta.namespace.as_deref().unwrap_or(""),
                raw_meta.name.as_deref().unwrap_or(""),
            );
            if warned_malformed {
                tracing::debug!(resource, ns, name, reason, "malformed kube object skipped");
            } else {
                tracing::warn!(
                    resource,
                    ns,
                    name,
                    reason,
                    "malformed kube object skipped (further ones at debug)"
                );
                warned_malformed = true;
            }
        };
        // `Init` is emitted before the list request is even made: no progress.
        let progressed = !matches!(event, Event::Init);
        match event {
            Event::Init => listing.clear(),
            Event::InitApply(raw) => {
                if let Some(entry) = decode::<K>(raw, &mut malformed) {
                    listing.push(entry);
                }
            }
            Event::InitDone => {
                let count = K::apply(&index, Update::Replace(std::mem::take(&mut listing)));
                m.objects.set(gauge(count));
            }
            Event::Apply(raw) => {
                if let Some((key, entry)) = decode::<K>(raw, &mut malformed) {
                    m.objects.set(gauge(K::apply(&index, Update::Apply(key, entry))));
                }
            }
            Event::Delete(raw) => match K::key(&raw.metadata) {
                Some(key) => {
                    // The final state, when it decodes; the stored one otherwise.
                    let last = raw.decode().ok().and_then(|obj| obj.entry().ok()).map(|d| d.entry);
                    m.objects.set(gauge(K::apply(&index, Update::Delete(key, last))));
                }
                None => malformed("deleted object without identity", &raw.metadata),
            },
        }
        if !progressed {
            continue;
        }
        m.up.set(1);
        progress.store(true, Ordering::Relaxed);
        if failing {
            tracing::info!(resource, "kube watch recovered");
            failing = false;
        }
    }
}

/// The typed object's index entry, or `None` after reporting why not.
fn decode<K: Watched>(
    raw: Raw<K>,
    malformed: &mut impl FnMut(&str, &ObjectMeta),
) -> Option<(String, K::Entry)> {
    let Some(key) = K::key(&raw.metadata) else {
        malformed("no identity (uid/name/namespace)", &raw.metadata);
        return None;
    };
    let meta = raw.metadata.clone();
    let decoded = match raw.decode() {
        Ok(obj) => obj.entry(),
        Err(error) => {
            malformed(&format!("does not match the {} schema: {error}", K::KIND), &meta);
            return None;
        }
    };
    match decoded {
        Ok(d) => {
            if d.dropped > 0 {
                malformed("unparseable addresses left out", &meta);
            }
            Some((key, d.entry))
        }
        Err(reason) => {
            malformed(reason, &meta);
            None
        }
    }
}

fn gauge(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Exponential backoff with jitter that resets only on real progress; see the
/// module docs for why kube-runtime's `DefaultBackoff` does not fit.
pub(crate) struct InformerBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
    last: Option<Instant>,
    progress: Arc<AtomicBool>,
}

/// No failure for this long: start again from the minimum (as kube-runtime and client-go).
const QUIET_RESET: Duration = Duration::from_secs(120);

impl InformerBackoff {
    pub fn new(min: Duration, max: Duration, progress: Arc<AtomicBool>) -> Self {
        InformerBackoff { min, max: max.max(min), next: min, last: None, progress }
    }
}

impl Iterator for InformerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let quiet = self.last.is_some_and(|last| now.saturating_duration_since(last) > QUIET_RESET);
        if self.progress.swap(false, Ordering::Relaxed) || quiet {
            self.next = self.min;
        }
        self.last = Some(now);
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.max);
        // Up to +50 %, so a fleet of agents does not retry in lockstep.
        Some(delay + delay.mul_f64(jitter() * 0.5))
    }
}

impl kube_runtime::utils::Backoff for InformerBackoff {
    /// Called by the stream backoff on every item, including the watcher's
    /// `Init` that precedes each list attempt: ignored; see [`InformerBackoff`].
    fn reset(&mut self) {}
}

/// A number in [0, 1) from std's randomly keyed hasher.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sets the `up` gauge when a list/watch request gets a 2xx answer.
#[derive(Clone)]
struct UpLayer(IntGauge);

impl<S> tower::Layer<S> for UpLayer {
    type Service = UpService<S>;
    fn layer(&self, inner: S) -> UpService<S> {
        UpService { inner, up: self.0.clone() }
    }
}

struct UpService<S> {
    inner: S,
    up: IntGauge,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Req, B> tower::Service<Req> for UpService<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let response = self.inner.call(request);
        let up = self.up.clone();
        Box::pin(async move {
            let response = response.await?;
            if response.status().is_success() {
                up.set(1);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_backoff_grows_until_progress_and_ignores_resets() {
        use kube_runtime::utils::Backoff as _;
        let progress = Arc::new(AtomicBool::new(false));
        let mut b = InformerBackoff::new(
            Duration::from_millis(100),
            Duration::from_millis(500),
            progress.clone(),
        );
        // Each delay is the base delay plus up to 50 % jitter.
        let d1 = b.next().expect("infinite");
        b.reset(); // what kube-runtime does on the watcher's Init event
        let d2 = b.next().expect("infinite");
        let d3 = b.next().expect("infinite");
        let d4 = b.next().expect("infinite");
        assert!(d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(150), "{d1:?}");
        assert!(d2 >= Duration::from_millis(200) && d2 < Duration::from_millis(300), "{d2:?}");
        assert!(d3 >= Duration::from_millis(400) && d3 < Duration::from_millis(600), "{d3:?}");
        assert!(
            d4 >= Duration::from_millis(500) && d4 < Duration::from_millis(750),
            "capped: {d4:?}"
        );
        progress.store(true, Ordering::Relaxed);
        let d5 = b.next().expect("infinite");
        assert!(d5 < Duration::from_millis(150), "reset by progress: {d5:?}");
    }
}
