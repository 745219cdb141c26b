//! Kubernetes objects → index entries, one resource kind per [`Watched`] impl.
//!
//! An object without its identity (pod UID, name, namespace) is malformed and
//! skipped. An address that does not parse is dropped and the object counted
//! as malformed, the rest of it indexed.
use std::net::IpAddr;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use super::index::{Backend, Index, NodeEntry, ServiceEntry, SliceEntry, Update, write};
use super::{ContainerMeta, NamedPort, PodMeta, owners, strip_runtime_prefix};
use crate::pipeline::policy::Protocol;

/// A resource kind the index watches.
pub(crate) trait Watched: k8s_openapi::Resource + DeserializeOwned + Send + 'static {
    /// The `resource` metric label.
    const RESOURCE: &'static str;
    type Entry: Send + 'static;
    /// The index key, from (leniently read) metadata alone, so a DELETED event
    /// of an object that does not decode still removes it.
    fn key(meta: &ObjectMeta) -> Option<String>;
    fn entry(self) -> Result<Decoded<Self::Entry>, &'static str>;
    /// Applies an update to `index`; returns the number of objects indexed.
    fn apply(index: &Index, update: Update<Self::Entry>) -> usize;
}

pub(crate) struct Decoded<E> {
    pub entry: E,
    /// Fields that did not parse and were left out.
    pub dropped: usize,
}

fn namespaced_key(meta: &ObjectMeta) -> Option<String> {
    let ns = meta.namespace.as_deref().filter(|s| !s.is_empty())?;
    let name = meta.name.as_deref().filter(|s| !s.is_empty())?;
    Some(format!("{ns}/{name}"))
}

fn parse_ips<'a>(addrs: impl IntoIterator<Item = &'a str>, dropped: &mut usize) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for addr in addrs {
        match addr.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => *dropped += 1,
        }
    }
    ips
}

fn tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

fn port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

impl Watched for Pod {
    const RESOURCE: &'static str = "pods";
    type Entry = PodMeta;

    fn key(meta: &ObjectMeta) -> Option<String> {
        meta.uid.clone().filter(|s| !s.is_empty())
    }

    fn entry(self) -> Result<Decoded<PodMeta>, &'static str> {
        let uid = Self::key(&self.metadata).ok_or("pod without metadata.uid")?;
        let namespace = self
            .metadata
            .namespace
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("pod without namespace")?;
        let name =
            self.metadata.name.clone().filter(|s| !s.is_empty()).ok_or("pod without name")?;
        let workload = owners::workload(&self.metadata);
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        let mut dropped = 0;

        let statuses: Vec<&ContainerStatus> = [
            &status.init_container_statuses,
            &status.container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
        let mut containers: Vec<ContainerMeta> = statuses
            .iter()
            .map(|s| ContainerMeta {
                id: strip_runtime_prefix(s.container_id.as_deref().unwrap_or_default()).to_owned(),
                name: s.name.clone(),
            })
            .collect();
        // Containers the runtime has not started yet: known by name only.
        let spec_names = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| &c.name)
            .chain(spec.containers.iter().map(|c| &c.name))
            .chain(spec.ephemeral_containers.iter().flatten().map(|c| &c.name));
        for name in spec_names {
            if !containers.iter().any(|c| &c.name == name) {
                containers.push(ContainerMeta { id: String::new(), name: name.clone() });
            }
        }
        let previous_containers = statuses
            .iter()
            .filter_map(|s| {
                let id = s.last_state.as_ref()?.terminated.as_ref()?.container_id.as_deref()?;
                let id = strip_runtime_prefix(id);
                (!id.is_empty()).then(|| ContainerMeta { id: id.to_owned(), name: s.name.clone() })
            })
            .collect();

        // Named container ports (init containers' too: sidecars listen).
        let named_ports = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    port: port(p.container_port)?,
                    protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                })
            })
            .collect();
        let pod_ips: Vec<&str> = match &status.pod_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(|p| p.ip.as_str()).collect(),
            _ => status.pod_ip.as_deref().into_iter().collect(),
        };
        let ip = parse_ips(pod_ips.into_iter().filter(|s| !s.is_empty()), &mut dropped);

        let entry = PodMeta {
            uid,
            namespace,
            name,
            labels: std::sync::Arc::new(self.metadata.labels.unwrap_or_default()),
            containers,
            workload,
            node: spec.node_name,
            ip,
            host_network: spec.host_network.unwrap_or(false),
            phase: status.phase,
            previous_containers,
            named_ports,
        };
        Ok(Decoded { entry, dropped })
    }

    fn apply(index: &Index, update: Update<PodMeta>) -> usize {
        index.update_pods(update)
    }
}

impl Watched for Service {
    const RESOURCE: &'static str = "services";
    type Entry = ServiceEntry;

    fn key(meta: &ObjectMeta) -> Option<String> {
        namespaced_key(meta)
    }

    fn entry(self) -> Result<Decoded<ServiceEntry>, &'static str> {
        namespaced_key(&self.metadata).ok_or("service without namespace/name")?;
        let spec = self.spec.unwrap_or_default();
        let mut dropped = 0;
        let cluster_ips: Vec<&str> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => spec.cluster_ip.as_deref().into_iter().collect(),
        };
        let lb_ips = self
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref());
        let addrs = cluster_ips
            .into_iter()
            .chain(spec.external_ips.iter().flatten().map(String::as_str))
            .chain(lb_ips)
            // Headless Services have clusterIP "None"; ExternalName ones none.
            .filter(|s| !s.is_empty() && *s != "None");
        let ips = parse_ips(addrs, &mut dropped);
        let (ports, port_names) = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| tcp(p.protocol.as_deref()))
            .filter_map(|p| Some((port(p.port)?, p.name.clone().unwrap_or_default())))
            .unzip();
        let entry = ServiceEntry {
            namespace: self.metadata.namespace.unwrap_or_default(),
            name: self.metadata.name.unwrap_or_default(),
            ips,
            ports,
            port_names,
        };
        Ok(Decoded { entry, dropped })
    }

    fn apply(index: &Index, update: Update<ServiceEntry>) -> usize {
        write(&index.services).update(update)
    }
}

impl Watched for EndpointSlice {
    const RESOURCE: &'static str = "endpointslices";
    type Entry = SliceEntry;

    fn key(meta: &ObjectMeta) -> Option<String> {
        namespaced_key(meta)
    }

    fn entry(self) -> Result<Decoded<SliceEntry>, &'static str> {
        namespaced_key(&self.metadata).ok_or("endpointslice without namespace/name")?;
        let namespace = self.metadata.namespace.unwrap_or_default();
        let service = self.metadata.labels.and_then(|mut l| l.remove("kubernetes.io/service-name"));
        let mut dropped = 0;
        let mut endpoints = Vec::new();
        // FQDN slices name hosts, not addresses: nothing to index.
        if matches!(self.address_type.as_str(), "IPv4" | "IPv6") {
            for endpoint in &self.endpoints {
                let pod = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let name = r.name.clone()?;
                        Some((r.namespace.clone().unwrap_or_else(|| namespace.clone()), name))
                    });
                for ip in parse_ips(endpoint.addresses.iter().map(String::as_str), &mut dropped) {
                    endpoints.push(Backend { ip, pod: pod.clone() });
                }
            }
        }
        let (ports, port_names) = self
            .ports
            .iter()
            .flatten()
            .filter(|p| tcp(p.protocol.as_deref()))
            .filter_map(|p| Some((p.port.and_then(port)?, p.name.clone().unwrap_or_default())))
            .unzip();
        Ok(Decoded {
            entry: SliceEntry { namespace, service, ports, port_names, endpoints },
            dropped,
        })
    }

    fn apply(index: &Index, update: Update<SliceEntry>) -> usize {
        write(&index.slices).update(update)
    }
}

impl Watched for Node {
    const RESOURCE: &'static str = "nodes";
    type Entry = NodeEntry;

    fn key(meta: &ObjectMeta) -> Option<String> {
        meta.name.clone().filter(|s| !s.is_empty())
    }

    fn entry(self) -> Result<Decoded<NodeEntry>, &'static str> {
        let name = Self::key(&self.metadata).ok_or("node without name")?;
        let mut dropped = 0;
        let addrs = self
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
            .map(|a| a.address.as_str());
        let ips = parse_ips(addrs, &mut dropped);
        Ok(Decoded { entry: NodeEntry { name, ips }, dropped })
    }

    fn apply(index: &Index, update: Update<NodeEntry>) -> usize {
        write(&index.nodes).update(update)
    }
}

impl Watched for NetworkPolicy {
    const RESOURCE: &'static str = "networkpolicies";
    type Entry = NetworkPolicy;

    fn key(meta: &ObjectMeta) -> Option<String> {
        namespaced_key(meta)
    }

    /// The object itself: [`crate::pipeline::policy::PolicySet`] compiles it
    /// (and reports what the API server would have refused).
    fn entry(self) -> Result<Decoded<NetworkPolicy>, &'static str> {
        namespaced_key(&self.metadata).ok_or("networkpolicy without namespace/name")?;
        Ok(Decoded { entry: self, dropped: 0 })
    }

    fn apply(index: &Index, update: Update<NetworkPolicy>) -> usize {
        index.update_policies(update)
    }
}

impl Watched for Namespace {
    const RESOURCE: &'static str = "namespaces";
    /// Its labels (what a policy's `namespaceSelector` reads).
    type Entry = BTreeMap<String, String>;

    fn key(meta: &ObjectMeta) -> Option<String> {
        meta.name.clone().filter(|s| !s.is_empty())
    }

    fn entry(self) -> Result<Decoded<Self::Entry>, &'static str> {
        Self::key(&self.metadata).ok_or("namespace without name")?;
        Ok(Decoded { entry: self.metadata.labels.unwrap_or_default(), dropped: 0 })
    }

    fn apply(index: &Index, update: Update<Self::Entry>) -> usize {
        index.update_namespaces(update)
    }
}
