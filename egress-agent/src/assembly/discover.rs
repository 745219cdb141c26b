//! Where the agents of a hop are, for one link:
//! - a hop with `agents:` (a hop outside Kubernetes, the VM): those
//!   addresses, as configured;
//! - a hop with a `service:`: the Service's EndpointSlices
//!   (`kubernetes.io/service-name`), the endpoint whose address is the
//!   link's far end (every endpoint when none is: the client's node knew no
//!   DNAT), its node (`nodeName`, else its pod's `spec.nodeName`), that
//!   node's InternalIP, and the peer port (`--peer-port`).
//!
//! Lists only (`metadata.name` field selectors where one object is
//! wanted): the agent's RBAC grants list and watch, not get.
use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::api::{Api, ListParams};

use super::{Link, fetch::PeerClient, select::LinkAnswer, walk::Fetch};
use crate::config::{ChainSettings, Hop};

/// An agent to ask: what it is (for messages) and its `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub what: String,
    pub addr: String,
}

/// Finds hops' agents and asks them.
pub struct Directory {
    pub chain: ChainSettings,
    /// None: no Kubernetes configuration (hops with a Service cannot be found).
    pub kube: Option<kube::Client>,
    /// Why there is no client, said when one is needed.
    pub kube_error: Option<String>,
    pub peer_port: u16,
    pub client: PeerClient,
}

impl Directory {
    /// The agents to ask about `link`, which goes to `hop`.
    pub async fn places(&self, hop: &str, link: &Link) -> Result<Vec<Place>, String> {
        let h = self
            .chain
            .hops
            .iter()
            .find(|h| h.name == hop)
            .ok_or_else(|| format!("hop {hop} is not in the chain configuration (--config)"))?;
        if !h.agents.is_empty() {
            return Ok(h
                .agents
                .iter()
                .map(|a| Place { what: "configured".into(), addr: a.clone() })
                .collect());
        }
        let Some(service) = h.service.as_deref() else {
            return Err(format!(
                "hop {hop} has neither `agents:` nor a `service:` in the configuration: its agents cannot be found"
            ));
        };
        let Some(client) = &self.kube else {
            return Err(format!(
                "hop {hop} is found through Service {service}, but there is no Kubernetes access ({}); pass --kubeconfig or run in the cluster",
                self.kube_error.as_deref().unwrap_or("no configuration")
            ));
        };
        service_nodes(client, h, service, link.local.ip()).await.map(|nodes| {
            nodes
                .into_iter()
                .map(|(node, ip)| Place {
                    what: format!("node {node}"),
                    addr: std::net::SocketAddr::new(ip, self.peer_port).to_string(),
                })
                .collect()
        })
    }
}

impl Fetch for Directory {
    async fn fetch(&self, hop: &str, link: &Link) -> Vec<Result<LinkAnswer, String>> {
        let places = match self.places(hop, link).await {
            Ok(p) => p,
            Err(e) => return vec![Err(e)],
        };
        let mut out = Vec::new();
        for p in places {
            out.push(
                self.client
                    .link(&p.addr, link)
                    .await
                    .map_err(|e| format!("agent {} at {}: {e}", p.what, p.addr)),
            );
        }
        out
    }
}

fn req(what: &str) -> impl Fn(kube::Error) -> String + '_ {
    move |e| format!("listing {what}: {e}")
}

/// `(node, InternalIP)` of the nodes running the endpoints of `service`
/// (`ns/name:port`) at `ip`, or of every endpoint when none is at `ip`.
async fn service_nodes(
    client: &kube::Client,
    hop: &Hop,
    service: &str,
    ip: IpAddr,
) -> Result<Vec<(String, IpAddr)>, String> {
    let (ns, rest) = service.split_once('/').ok_or_else(|| format!("bad service {service}"))?;
    let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(req("endpointslices"))?;
    let endpoints: Vec<_> = slices.items.iter().flat_map(|s| s.endpoints.iter()).collect();
    let at_ip: Vec<_> = endpoints
        .iter()
        .filter(|e| e.addresses.iter().any(|a| a.parse::<IpAddr>().ok() == Some(ip)))
        .collect();
    let chosen = if at_ip.is_empty() { endpoints.iter().collect() } else { at_ip };
    if chosen.is_empty() {
        return Err(format!("hop {}: Service {ns}/{name} has no endpoints", hop.name));
    }
    let mut nodes = BTreeSet::new();
    for e in chosen {
        let node = match (&e.node_name, &e.target_ref) {
            (Some(n), _) => Some(n.clone()),
            (None, Some(r)) if r.kind.as_deref() == Some("Pod") => {
                let pod_ns = r.namespace.as_deref().unwrap_or(ns);
                let pod = r.name.as_deref().unwrap_or_default();
                Api::<Pod>::namespaced(client.clone(), pod_ns)
                    .list(&ListParams::default().fields(&format!("metadata.name={pod}")))
                    .await
                    .map_err(req("pods"))?
                    .items
                    .into_iter()
                    .find_map(|p| p.spec.and_then(|s| s.node_name))
            }
            _ => None,
        };
        nodes.extend(node);
    }
    let mut out = Vec::new();
    for n in nodes {
        let listed = Api::<Node>::all(client.clone())
            .list(&ListParams::default().fields(&format!("metadata.name={n}")))
            .await
            .map_err(req("nodes"))?;
        let internal = listed
            .items
            .iter()
            .filter_map(|node| node.status.as_ref()?.addresses.as_ref())
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        match internal {
            Some(ip) => out.push((n, ip)),
            None => return Err(format!("node {n} has no InternalIP (or is not listed)")),
        }
    }
    if out.is_empty() {
        return Err(format!(
            "hop {}: no endpoint of Service {ns}/{name} names its node (nodeName or a pod's spec.nodeName)",
            hop.name
        ));
    }
    Ok(out)
}
