//! Kubernetes metadata: a read-only index for attribution.
//!
//! - **Pods** on this node (`spec.nodeName=$NODE_NAME`, all pods when no node
//!   name is given) by UID → namespace, name, labels, containers (runtime id →
//!   name), owner workload, node, IPs. A deleted pod stays resolvable for
//!   [`KubeTuning::pod_retention`] (60 s) so late kernel events still attribute.
//! - **Services** (ClusterIPs, external and load-balancer IPs),
//!   **EndpointSlices** (backend address → pod + Service) and **Nodes**
//!   (InternalIP/ExternalIP), cluster-wide → [`KubeIndex::remote`].
//!
//! Every resource is a kube-runtime `watcher` (list, then watch from the list's
//! resourceVersion, re-list on 410) with an exponential backoff that only resets
//! on real progress ([`informer`]). Objects are decoded one by one, so one
//! malformed object is counted in `egress_kube_objects_malformed_total` and the
//! others are still indexed. Nothing here fails hard once started: with the API
//! unreachable the index stays empty, lookups answer `None`, the watches retry
//! and `egress_kube_watch_up{resource}` says 0.
//!
//! Workload resolution (see [`owners`]) needs no extra watches or RBAC: a
//! ReplicaSet is a Deployment's when its name is `<deployment>-<hash>` and the
//! pod carries the same `pod-template-hash` label (both stamped by the
//! Deployment controller); a Job is a CronJob's when its name is
//! `<cronjob>-<scheduled time in Unix minutes>` with a plausible time.
//!
//! - **NetworkPolicies** and **Namespaces** (their labels), cluster-wide →
//!   [`KubeIndex::egress_policy`]: would the policies let this pod open this
//!   flow ([`crate::pipeline::policy`] evaluates; this module only holds the
//!   objects and the index's view of pods for it).
//!
//! RBAC needed: `get/list/watch` on `pods`, `services`, `nodes`, `namespaces`
//! (core), `endpointslices` (`discovery.k8s.io`) and `networkpolicies`
//! (`networking.k8s.io`).
mod index;
mod informer;
mod objects;
mod owners;
mod raw;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use self::index::Index;
use self::informer::KubeMetrics;
pub use crate::pipeline::policy::NamedPort;
use crate::pipeline::policy::{Decision, Egress, Protocol};
use crate::records::PolicyVerdict;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {}", path.display())]
    ReadKubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("using kubeconfig {}", path.display())]
    UseKubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (not in a cluster, no kubeconfig)")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("the Kubernetes index needs a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("{what}")]
    Request { what: &'static str, source: kube::Error },
    #[error("no answer from {url} within 5 s")]
    Timeout { url: String },
    #[error(transparent)]
    Metrics(#[from] crate::sinks::MetricError),
}

/// How to reach the API server and what to watch.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Watch only the pods scheduled on this node (`$NODE_NAME` from the
    /// downward API); `None` watches every pod of the cluster.
    pub node_name: Option<String>,
    /// Use this kubeconfig instead of `kube::Config::infer()` (which tries
    /// `$KUBECONFIG`/`~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
}

/// Timings; the defaults are right for production, tests shorten them.
#[derive(Clone, Debug)]
pub struct KubeTuning {
    /// How long a deleted (or vanished on re-list) pod stays resolvable by UID.
    pub pod_retention: Duration,
    /// First retry delay after a failed list/watch; doubles per failure.
    pub backoff_min: Duration,
    /// Retry delay cap.
    pub backoff_max: Duration,
}

impl Default for KubeTuning {
    fn default() -> Self {
        // Backoff as client-go's reflector: 800 ms doubling to 30 s.
        Self {
            pod_retention: Duration::from_secs(60),
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The metadata index. Cheap to clone; lookups take a read lock and never
/// wait on the network. The watches stop when the last clone is dropped.
#[derive(Clone)]
pub struct KubeIndex {
    index: Arc<Index>,
    tasks: Option<Arc<informer::Tasks>>,
}

impl std::fmt::Debug for KubeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeIndex")
            .field("running", &self.tasks.is_some())
            .field("counts", &self.index.counts())
            .finish()
    }
}

impl KubeIndex {
    /// Starts the watches in the background (on the current tokio runtime)
    /// and returns at once, before anything is listed.
    ///
    /// Errors only when there is no usable client configuration (no
    /// kubeconfig and not in a cluster, an unreadable `--kubeconfig`) or the
    /// metrics cannot be registered. An unreachable or misbehaving API server
    /// is not an error: the index stays empty and the watches retry.
    pub async fn start(
        opts: KubeOptions,
        registry: &prometheus::Registry,
    ) -> Result<KubeIndex, KubeError> {
        let config = client_config(&opts).await?;
        Self::start_with(config, &opts, KubeTuning::default(), registry)
    }

    /// For `check`: reach the API server and list what the agent watches
    /// (one object each, so RBAC is proven, not assumed).
    pub async fn check_access(opts: &KubeOptions) -> Result<String, KubeError> {
        use k8s_openapi::api::{
            core::v1::{Namespace, Node, Pod, Service},
            discovery::v1::EndpointSlice,
            networking::v1::NetworkPolicy,
        };
        let config = client_config(opts).await?;
        let url = config.cluster_url.to_string();
        let req = |what| move |source| KubeError::Request { what, source };
        let client = kube::Client::try_from(config).map_err(req("kube client"))?;
        let lp = kube::api::ListParams::default().limit(1);
        let work = async {
            let v = client.apiserver_version().await.map_err(req("GET /version"))?;
            kube::Api::<Pod>::all(client.clone()).list(&lp).await.map_err(req("list pods"))?;
            kube::Api::<Service>::all(client.clone())
                .list(&lp)
                .await
                .map_err(req("list services"))?;
            kube::Api::<EndpointSlice>::all(client.clone())
                .list(&lp)
                .await
                .map_err(req("list endpointslices"))?;
            kube::Api::<Node>::all(client.clone()).list(&lp).await.map_err(req("list nodes"))?;
            kube::Api::<Namespace>::all(client.clone())
                .list(&lp)
                .await
                .map_err(req("list namespaces"))?;
            kube::Api::<NetworkPolicy>::all(client.clone())
                .list(&lp)
                .await
                .map_err(req("list networkpolicies"))?;
            Ok::<_, KubeError>(format!(
                "{} at {url}: pods, services, endpointslices, nodes, namespaces, networkpolicies listable{}",
                v.git_version,
                opts.node_name.as_deref().map_or_else(
                    || "; NODE_NAME unset (all pods would be watched)".to_string(),
                    |n| format!("; node {n}")
                )
            ))
        };
        tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .unwrap_or(Err(KubeError::Timeout { url }))
    }
}

/// The client configuration: `--kubeconfig`, else in-cluster / ~/.kube/config.
pub(crate) async fn client_config(opts: &KubeOptions) -> Result<kube::Config, KubeError> {
    match &opts.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| KubeError::ReadKubeconfig { path: path.clone(), source })?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| KubeError::UseKubeconfig { path: path.clone(), source })
        }
        None => kube::Config::infer().await.map_err(KubeError::NoConfig),
    }
}

impl KubeIndex {
    /// [`KubeIndex::start`] with an explicit client configuration and timings.
    /// Spawns on the current tokio runtime (an error outside one).
    pub fn start_with(
        config: kube::Config,
        opts: &KubeOptions,
        tuning: KubeTuning,
        registry: &prometheus::Registry,
    ) -> Result<KubeIndex, KubeError> {
        let metrics = KubeMetrics::register(registry)?;
        let index = Arc::new(Index::new(tuning.pod_retention));
        let tasks = informer::spawn_all(config, opts, &tuning, index.clone(), metrics)?;
        Ok(KubeIndex { index, tasks: Some(Arc::new(tasks)) })
    }

    /// An index that knows nothing (`--kube=false`, or outside a cluster).
    pub fn empty() -> KubeIndex {
        KubeIndex { index: Arc::new(Index::new(Duration::ZERO)), tasks: None }
    }

    /// A fixed index of these pods, nothing watched (tests, benchmarks, fuzzing).
    pub fn from_pods(pods: impl IntoIterator<Item = PodMeta>) -> KubeIndex {
        let index = Index::new(Duration::ZERO);
        index.update_pods(index::Update::Replace(
            pods.into_iter().map(|p| (p.uid.clone(), p)).collect(),
        ));
        KubeIndex { index: Arc::new(index), tasks: None }
    }

    /// The pod with this UID (as found in the cgroup path; dashes or the
    /// systemd driver's underscores), live or deleted less than the retention ago.
    pub fn pod(&self, uid: &str) -> Option<PodMeta> {
        self.index.pod(uid).map(|p| (*p).clone())
    }

    /// Like [`KubeIndex::pod`] without cloning the metadata.
    pub fn pod_arc(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.index.pod(uid)
    }

    /// What a remote address is in the cluster: a Service (ClusterIP,
    /// external or load-balancer IP), a pod (an EndpointSlice backend with its
    /// Service, or a pod on this node), or a node. `None` for anything else.
    ///
    /// Order: Service IP → backend `ip:port` → node IP → backend `ip` on
    /// another port → pod on this node. A hostNetwork backend on a node IP is
    /// the pod only on a port its Service targets, otherwise the node.
    pub fn remote(&self, ip: IpAddr, port: u16) -> Option<RemoteMeta> {
        self.index.remote(ip, port)
    }

    /// Objects currently indexed: (pods incl. retained, services, endpointslices, nodes).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        self.index.counts()
    }

    /// A fixed index of these pods, namespaces (name, labels) and
    /// NetworkPolicies, nothing watched, policies listed (tests).
    pub fn from_objects(
        pods: impl IntoIterator<Item = PodMeta>,
        namespaces: impl IntoIterator<Item = (String, BTreeMap<String, String>)>,
        policies: impl IntoIterator<Item = k8s_openapi::api::networking::v1::NetworkPolicy>,
    ) -> KubeIndex {
        let k = Self::from_pods(pods);
        k.index.update_namespaces(index::Update::Replace(namespaces.into_iter().collect()));
        k.index.update_policies(index::Update::Replace(
            policies
                .into_iter()
                .map(|p| {
                    let ns = p.metadata.namespace.clone().unwrap_or_default();
                    let name = p.metadata.name.clone().unwrap_or_default();
                    (format!("{ns}/{name}"), p)
                })
                .collect(),
        ));
        k
    }

    /// Whether the NetworkPolicies let the pod `pod_uid` open a TCP flow to
    /// `dst` (what it connected to), `dst_actual` the backend DNAT sent it to
    /// when known: policies apply to where the packets go, never to a
    /// Service address. `None` when it cannot be told: the policies not
    /// listed yet (no Kubernetes source, the watch not synced), the pod
    /// unknown or on the host network (policies do not apply to those), a
    /// Service without backends.
    ///
    /// A Service address whose DNAT was not seen (a policy engine that drops
    /// the SYN in the forward path does so before conntrack confirms the
    /// entry, so no NEW event comes) is judged on its backends from the
    /// EndpointSlices: denied if every backend is, allowed if every backend
    /// is, else [`PolicyVerdict::Uncertain`].
    ///
    /// The index knows the labels of the pods on this node only (its pod
    /// watch is node-scoped): a `Denied` whose destination is a pod of
    /// another node (an EndpointSlice backend) is `Uncertain`, as is one a
    /// malformed (ignored) policy entry might have changed.
    pub fn egress_policy(
        &self,
        pod_uid: &str,
        dst: std::net::SocketAddr,
        dst_actual: Option<std::net::SocketAddr>,
    ) -> Option<PolicyCheck> {
        if !self.index.policies_synced() {
            return None;
        }
        let pod = self.index.pod(pod_uid)?;
        if pod.host_network {
            return None;
        }
        // The socket's own destination is `dst_actual` too when nothing
        // rewrote it: only a different address is a DNAT seen.
        let targets = match dst_actual.filter(|a| *a != dst) {
            Some(actual) => vec![actual],
            None => self.index.service_backends(dst.ip(), dst.port()).unwrap_or_else(|| vec![dst]),
        };
        let mut checks = targets.into_iter().map(|to| self.policy_to(&pod, to));
        let first = checks.next()?;
        Some(checks.fold(first, |acc, c| {
            if acc.verdict == c.verdict {
                let mut policies = acc.policies;
                for p in c.policies {
                    if !policies.contains(&p) {
                        policies.push(p);
                    }
                }
                policies.sort();
                PolicyCheck { verdict: acc.verdict, policies }
            } else {
                // Some backends allowed, some not: which one the flow got is not known.
                let mut policies = acc.policies;
                policies.extend(c.policies);
                policies.sort();
                policies.dedup();
                PolicyCheck { verdict: PolicyVerdict::Uncertain, policies }
            }
        }))
    }

    /// Adds Services and EndpointSlices as their watches would (tests).
    #[cfg(test)]
    pub(crate) fn apply_services(
        &self,
        services: Vec<k8s_openapi::api::core::v1::Service>,
        slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
    ) {
        use self::objects::Watched;
        fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
            format!("{}/{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""))
        }
        for s in services {
            let k = key(&s.metadata);
            let entry = s.entry().expect("decodes").entry;
            k8s_openapi::api::core::v1::Service::apply(&self.index, index::Update::Apply(k, entry));
        }
        for s in slices {
            let k = key(&s.metadata);
            let entry = s.entry().expect("decodes").entry;
            k8s_openapi::api::discovery::v1::EndpointSlice::apply(
                &self.index,
                index::Update::Apply(k, entry),
            );
        }
    }

    /// The verdict for one destination address.
    fn policy_to(&self, pod: &PodMeta, to: std::net::SocketAddr) -> PolicyCheck {
        let set = self.index.policy_set();
        let flow = Egress {
            pod_namespace: &pod.namespace,
            pod_labels: &pod.labels,
            dst: to.ip(),
            port: to.port(),
            protocol: Protocol::Tcp,
        };
        let decision = set.egress(&flow, &self.index.cluster());
        match decision {
            Decision::NotIsolated => {
                PolicyCheck { verdict: PolicyVerdict::NotIsolated, policies: Vec::new() }
            }
            Decision::Allowed { by } => {
                PolicyCheck { verdict: PolicyVerdict::Allowed, policies: by }
            }
            Decision::Denied { isolating, uncertain } => {
                let foreign_pod = self.index.pod_at_known(to.ip()).is_none()
                    && self
                        .index
                        .remote(to.ip(), to.port())
                        .is_some_and(|m| m.class == RemoteClass::Pod);
                let verdict = if uncertain.is_empty() && !foreign_pod {
                    PolicyVerdict::Denied
                } else {
                    PolicyVerdict::Uncertain
                };
                PolicyCheck { verdict, policies: isolating }
            }
        }
    }
}

/// The NetworkPolicy verdict on one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCheck {
    pub verdict: PolicyVerdict,
    /// `namespace/name`, sorted: the policies allowing the flow (`Allowed`),
    /// or every policy isolating the pod for egress (`Denied`, `Uncertain`).
    pub policies: Vec<Arc<str>>,
}

/// A pod, as far as attribution needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Shared with every record of the pod (never copied per record).
    pub labels: Arc<BTreeMap<String, String>>,
    /// Current containers (init, regular, ephemeral). `id` is empty until the
    /// runtime has started the container.
    pub containers: Vec<ContainerMeta>,
    /// The owning workload, ReplicaSet and Job resolved to Deployment and CronJob.
    pub workload: Option<Workload>,
    pub node: Option<String>,
    pub ip: Vec<IpAddr>,
    /// Shares the node's network namespace (its IPs are the node's).
    pub host_network: bool,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: Option<String>,
    /// Ids of earlier instances of restarted containers (`lastState.terminated`):
    /// late events of a crashed container still name it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_containers: Vec<ContainerMeta>,
    /// Its NAMED container ports (what a NetworkPolicy's named port resolves to).
    #[serde(skip)]
    pub named_ports: Vec<NamedPort>,
}

impl PodMeta {
    /// The container name for a runtime container id (with or without a
    /// `containerd://`-style prefix), current or a restarted container's previous id.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        let id = strip_runtime_prefix(container_id);
        if id.is_empty() {
            return None;
        }
        self.containers
            .iter()
            .chain(&self.previous_containers)
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerMeta {
    /// Runtime id without the `containerd://` / `cri-o://` / `docker://` prefix.
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `Deployment`, `DaemonSet`, `StatefulSet`, `Job`, `CronJob`, `ReplicaSet`
    /// (bare), `ReplicationController`, `Node` (static pods), or a custom kind.
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteMeta {
    pub class: RemoteClass,
    /// `None` for nodes.
    pub namespace: Option<String>,
    /// Pod, Service or node name.
    pub name: String,
    /// The Service this address backs: the pod's Service, or for an endpoint
    /// that is no pod (a selector-less Service pointing at a VM) the Service
    /// itself, then with `class: Service`.
    pub service: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteClass {
    Pod,
    Service,
    Node,
}

impl RemoteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteClass::Pod => "pod",
            RemoteClass::Service => "service",
            RemoteClass::Node => "node",
        }
    }
}

/// `containerd://abc` → `abc`; ids without a scheme are returned as they are.
pub(crate) fn strip_runtime_prefix(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_index_knows_nothing() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<KubeIndex>();
        let index = KubeIndex::empty();
        assert!(index.pod("00000001-5d1c-4b7e-9a3f-000000001eef").is_none());
        assert!(index.remote("10.0.0.1".parse().expect("ip"), 80).is_none());
        assert_eq!(index.counts(), (0, 0, 0, 0));
        // Outside a tokio runtime start_with is an error, not a panic.
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        assert!(
            KubeIndex::start_with(
                config,
                &KubeOptions::default(),
                KubeTuning::default(),
                &prometheus::Registry::new()
            )
            .is_err()
        );
    }
}
