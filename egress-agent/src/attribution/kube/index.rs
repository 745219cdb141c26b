//! The stores behind [`super::KubeIndex`]: pods by UID (with a retention for
//! deleted ones), and Services, EndpointSlices and Nodes by IP.
//!
//! Only what lookups need is kept (no full objects), so the cluster-wide
//! watches cost a few hundred bytes per object.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{PodMeta, RemoteClass, RemoteMeta};
use crate::pipeline::policy::{Cluster, PodView, PolicySet};

/// A change from a watch, already decoded.
pub(crate) enum Update<E> {
    Apply(String, E),
    /// The key, and the final state when it decoded.
    Delete(String, Option<E>),
    /// A complete (re-)list: everything not in it is gone.
    Replace(Vec<(String, E)>),
}

pub(crate) struct Index {
    pods: RwLock<PodStore>,
    pub(crate) services: RwLock<IpIndexed<ServiceEntry>>,
    pub(crate) slices: RwLock<IpIndexed<SliceEntry>>,
    pub(crate) nodes: RwLock<IpIndexed<NodeEntry>>,
    /// Namespace name → labels.
    namespaces: RwLock<HashMap<String, BTreeMap<String, String>>>,
    policies: RwLock<PolicyStore>,
    /// The NetworkPolicies were listed at least once.
    policies_synced: AtomicBool,
}

/// NetworkPolicies by `namespace/name`, and the set compiled from them
/// (rebuilt on every change: policies change rarely, flows read often).
#[derive(Default)]
struct PolicyStore {
    objects: HashMap<String, NetworkPolicy>,
    set: Arc<PolicySet>,
    /// Problems already logged, so a re-list does not repeat them.
    reported: HashSet<String>,
}

impl PolicyStore {
    fn rebuild(&mut self) {
        let (set, problems) = PolicySet::new(self.objects.values());
        let mut now = HashSet::new();
        for p in problems {
            let text = p.to_string();
            if !self.reported.contains(&text) {
                tracing::warn!("{text}");
            }
            now.insert(text);
        }
        self.reported = now;
        self.set = Arc::new(set);
    }
}

/// The index's view for the policy evaluation: pods of this node by IP,
/// namespaces' labels. Holds the read locks while one flow is evaluated.
pub(crate) struct ClusterView<'a> {
    pods: RwLockReadGuard<'a, PodStore>,
    namespaces: RwLockReadGuard<'a, HashMap<String, BTreeMap<String, String>>>,
}

impl Cluster for ClusterView<'_> {
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }
    fn pod_at(&self, ip: IpAddr) -> Option<PodView<'_>> {
        self.pods.by_ip(ip.to_canonical()).map(|p| PodView {
            namespace: &p.namespace,
            labels: &p.labels,
            ports: &p.named_ports,
        })
    }
}

// A panic while holding a lock cannot leave these maps half-updated in a way
// that matters more than losing the agent's attribution, so poisoning is ignored.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Index {
    pub fn new(pod_retention: Duration) -> Self {
        Index {
            pods: RwLock::new(PodStore { retention: pod_retention, ..PodStore::default() }),
            services: RwLock::default(),
            slices: RwLock::default(),
            nodes: RwLock::default(),
            namespaces: RwLock::default(),
            policies: RwLock::default(),
            policies_synced: AtomicBool::new(false),
        }
    }

    /// Applies a NetworkPolicy update; returns the number of policies.
    pub fn update_policies(&self, update: Update<NetworkPolicy>) -> usize {
        let mut store = write(&self.policies);
        match update {
            Update::Apply(key, p) => {
                store.objects.insert(key, p);
            }
            Update::Delete(key, _) => {
                store.objects.remove(&key);
            }
            Update::Replace(all) => {
                store.objects = all.into_iter().collect();
                self.policies_synced.store(true, Ordering::Relaxed);
            }
        }
        store.rebuild();
        store.objects.len()
    }

    /// Applies a Namespace update (name → labels); returns the number of namespaces.
    pub fn update_namespaces(&self, update: Update<BTreeMap<String, String>>) -> usize {
        let mut namespaces = write(&self.namespaces);
        match update {
            Update::Apply(key, labels) => {
                namespaces.insert(key, labels);
            }
            Update::Delete(key, _) => {
                namespaces.remove(&key);
            }
            Update::Replace(all) => *namespaces = all.into_iter().collect(),
        }
        namespaces.len()
    }

    pub fn policies_synced(&self) -> bool {
        self.policies_synced.load(Ordering::Relaxed)
    }

    pub fn policy_set(&self) -> Arc<PolicySet> {
        read(&self.policies).set.clone()
    }

    pub fn cluster(&self) -> ClusterView<'_> {
        ClusterView { pods: read(&self.pods), namespaces: read(&self.namespaces) }
    }

    /// The backends (`ip:targetPort`, from its EndpointSlices) of the Service
    /// whose address and port this is; `None` when it is no Service's. Ports
    /// are paired by name, as kube-proxy does (one unnamed port: that one).
    pub fn service_backends(&self, ip: IpAddr, port: u16) -> Option<Vec<std::net::SocketAddr>> {
        let services = read(&self.services);
        let svc = services.at(ip.to_canonical()).find(|s| s.ports.contains(&port))?;
        let i = svc.ports.iter().position(|p| *p == port)?;
        let name = svc.port_names.get(i).map_or("", String::as_str);
        let slices = read(&self.slices);
        let mut out = Vec::new();
        for slice in slices
            .values()
            .filter(|s| s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name))
        {
            let target = slice
                .ports
                .iter()
                .zip(&slice.port_names)
                .find(|(_, n)| n.as_str() == name)
                .map(|(p, _)| *p);
            let Some(target) = target else { continue };
            for b in &slice.endpoints {
                let addr = std::net::SocketAddr::new(b.ip, target);
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        Some(out)
    }

    /// The live pod (own network namespace) holding this IP, if on this node.
    pub fn pod_at_known(&self, ip: IpAddr) -> Option<Arc<PodMeta>> {
        let pods = read(&self.pods);
        pods.ip.get(&ip.to_canonical()).and_then(|uid| pods.live.get(uid)).cloned()
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let pods = read(&self.pods);
        // The systemd cgroup driver writes the UID with underscores.
        if uid.contains('_') {
            pods.get(&uid.replace('_', "-"), Instant::now())
        } else {
            pods.get(uid, Instant::now())
        }
    }

    /// Applies a pod update; returns the number of live pods.
    pub fn update_pods(&self, update: Update<PodMeta>) -> usize {
        let mut pods = write(&self.pods);
        let now = Instant::now();
        match update {
            Update::Apply(uid, meta) => pods.apply(uid, Arc::new(meta)),
            Update::Delete(uid, last) => pods.delete(&uid, last.map(Arc::new), now),
            Update::Replace(all) => pods.replace(all, now),
        }
        pods.prune(now);
        pods.live.len()
    }

    /// Forgets deleted pods past their retention.
    pub fn prune_pods(&self) {
        write(&self.pods).prune(Instant::now());
    }

    pub fn remote(&self, ip: IpAddr, port: u16) -> Option<RemoteMeta> {
        if let Some(svc) = best(read(&self.services).at(ip), |s| s.ports.contains(&port)) {
            return Some(RemoteMeta {
                class: RemoteClass::Service,
                namespace: Some(svc.namespace.clone()),
                name: svc.name.clone(),
                service: Some(svc.name.clone()),
            });
        }
        let (on_port, other_port) = {
            let slices = read(&self.slices);
            let mut other = None;
            let mut on = None;
            for (serves_port, meta) in slices.at(ip).flat_map(|s| s.backends(ip, port)) {
                if serves_port {
                    on = Some(meta);
                    break;
                }
                other.get_or_insert(meta);
            }
            (on, other)
        };
        if on_port.is_some() {
            return on_port;
        }
        if let Some(node) = read(&self.nodes).at(ip).next() {
            return Some(RemoteMeta {
                class: RemoteClass::Node,
                namespace: None,
                name: node.name.clone(),
                service: None,
            });
        }
        if other_port.is_some() {
            return other_port;
        }
        read(&self.pods).by_ip(ip).map(|pod| RemoteMeta {
            class: RemoteClass::Pod,
            namespace: Some(pod.namespace.clone()),
            name: pod.name.clone(),
            service: None,
        })
    }

    /// (pods incl. retained, services, endpointslices, nodes)
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let pods = read(&self.pods);
        (
            pods.live.len() + pods.gone.len(),
            read(&self.services).len(),
            read(&self.slices).len(),
            read(&self.nodes).len(),
        )
    }
}

/// The first candidate that `prefer`s, else the first.
fn best<'a, E>(
    mut candidates: impl Iterator<Item = &'a E>,
    prefer: impl Fn(&E) -> bool,
) -> Option<&'a E> {
    let first = candidates.next()?;
    if prefer(first) {
        return Some(first);
    }
    Some(candidates.find(|c| prefer(c)).unwrap_or(first))
}

#[derive(Default)]
struct PodStore {
    live: HashMap<String, Arc<PodMeta>>,
    gone: HashMap<String, (Arc<PodMeta>, Instant)>,
    /// Pod IP → UID for live pods with their own network namespace that hold
    /// their IP (not Succeeded/Failed, whose IPs the node may reuse).
    ip: HashMap<IpAddr, String>,
    retention: Duration,
}

fn owns_ip(pod: &PodMeta) -> bool {
    !pod.host_network && !matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

impl PodStore {
    fn get(&self, uid: &str, now: Instant) -> Option<Arc<PodMeta>> {
        if let Some(pod) = self.live.get(uid) {
            return Some(pod.clone());
        }
        let (pod, since) = self.gone.get(uid)?;
        (now.saturating_duration_since(*since) < self.retention).then(|| pod.clone())
    }

    fn by_ip(&self, ip: IpAddr) -> Option<&PodMeta> {
        self.ip.get(&ip).and_then(|uid| self.live.get(uid)).map(|p| &**p)
    }

    fn apply(&mut self, uid: String, pod: Arc<PodMeta>) {
        self.gone.remove(&uid);
        if let Some(old) = self.live.remove(&uid) {
            self.unindex(&old);
        }
        self.index(&pod);
        self.live.insert(uid, pod);
    }

    fn delete(&mut self, uid: &str, last: Option<Arc<PodMeta>>, now: Instant) {
        let known = self.live.remove(uid);
        if let Some(old) = &known {
            self.unindex(old);
        }
        // The final state from the DELETED event is the freshest; keep it.
        if let Some(pod) = last.or(known) {
            self.gone.insert(uid.to_owned(), (pod, now));
        }
    }

    fn replace(&mut self, all: Vec<(String, PodMeta)>, now: Instant) {
        let mut fresh: HashMap<String, Arc<PodMeta>> =
            all.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        for (uid, old) in self.live.drain() {
            if !fresh.contains_key(&uid) {
                // Deleted while we were not watching: retain like a DELETED event.
                self.gone.insert(uid, (old, now));
            }
        }
        self.gone.retain(|uid, _| !fresh.contains_key(uid));
        self.ip.clear();
        for pod in fresh.values() {
            if owns_ip(pod) {
                for ip in &pod.ip {
                    self.ip.insert(*ip, pod.uid.clone());
                }
            }
        }
        std::mem::swap(&mut self.live, &mut fresh);
    }

    fn prune(&mut self, now: Instant) {
        let retention = self.retention;
        self.gone.retain(|_, (_, since)| now.saturating_duration_since(*since) < retention);
    }

    fn index(&mut self, pod: &PodMeta) {
        if owns_ip(pod) {
            for ip in &pod.ip {
                self.ip.insert(*ip, pod.uid.clone());
            }
        }
    }

    fn unindex(&mut self, pod: &PodMeta) {
        for ip in &pod.ip {
            if self.ip.get(ip) == Some(&pod.uid) {
                self.ip.remove(ip);
            }
        }
    }
}

/// Something with addresses, indexed by them.
pub(crate) trait HasIps {
    fn ips(&self) -> Vec<IpAddr>;
}

/// Entries by key (`namespace/name`), and the keys by IP in key order, so
/// lookups with several candidates are deterministic.
pub(crate) struct IpIndexed<E> {
    entries: HashMap<String, E>,
    by_ip: HashMap<IpAddr, BTreeSet<String>>,
}

impl<E> Default for IpIndexed<E> {
    fn default() -> Self {
        IpIndexed { entries: HashMap::new(), by_ip: HashMap::new() }
    }
}

impl<E: HasIps> IpIndexed<E> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &E> {
        self.entries.values()
    }

    pub fn at(&self, ip: IpAddr) -> impl Iterator<Item = &E> {
        self.by_ip.get(&ip).into_iter().flatten().filter_map(|key| self.entries.get(key))
    }

    /// Applies an update; returns the number of entries.
    pub fn update(&mut self, update: Update<E>) -> usize {
        match update {
            Update::Apply(key, entry) => {
                self.remove(&key);
                for ip in entry.ips() {
                    self.by_ip.entry(ip).or_default().insert(key.clone());
                }
                self.entries.insert(key, entry);
            }
            Update::Delete(key, _) => self.remove(&key),
            Update::Replace(all) => {
                self.entries.clear();
                self.by_ip.clear();
                for (key, entry) in all {
                    self.update(Update::Apply(key, entry));
                }
            }
        }
        self.entries.len()
    }

    fn remove(&mut self, key: &str) {
        let Some(old) = self.entries.remove(key) else { return };
        for ip in old.ips() {
            if let Some(keys) = self.by_ip.get_mut(&ip) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// ClusterIPs, external IPs, load-balancer ingress IPs.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// The name of each of `ports` ("" when unnamed).
    pub port_names: Vec<String>,
}

impl HasIps for ServiceEntry {
    fn ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceEntry {
    pub namespace: String,
    /// `kubernetes.io/service-name`.
    pub service: Option<String>,
    /// Target ports (TCP).
    pub ports: Vec<u16>,
    /// The name of each of `ports` (the Service port's name, "" when unnamed).
    pub port_names: Vec<String>,
    pub endpoints: Vec<Backend>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub ip: IpAddr,
    /// `targetRef` when it is a Pod: (namespace, name).
    pub pod: Option<(String, String)>,
}

impl SliceEntry {
    /// The backends at `ip`, each with whether the slice serves `port`.
    fn backends(&self, ip: IpAddr, port: u16) -> impl Iterator<Item = (bool, RemoteMeta)> + '_ {
        let on_port = self.ports.contains(&port);
        self.endpoints.iter().filter(move |b| b.ip == ip).filter_map(move |b| {
            let meta = match (&b.pod, &self.service) {
                (Some((ns, name)), service) => RemoteMeta {
                    class: RemoteClass::Pod,
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                    service: service.clone(),
                },
                // Not a pod (a selector-less Service's VM): the Service it backs.
                (None, Some(service)) => RemoteMeta {
                    class: RemoteClass::Service,
                    namespace: Some(self.namespace.clone()),
                    name: service.clone(),
                    service: Some(service.clone()),
                },
                (None, None) => return None,
            };
            Some((on_port, meta))
        })
    }
}

impl HasIps for SliceEntry {
    fn ips(&self) -> Vec<IpAddr> {
        self.endpoints.iter().map(|b| b.ip).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

impl HasIps for NodeEntry {
    fn ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }
}
