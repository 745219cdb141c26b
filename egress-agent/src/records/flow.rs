//! The flow record: one TCP connect (or the close of an established flow)
//! with its owner, destination, hop and verdict. Field names are stable and
//! snake_case.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::verdict::{PolicyVerdict, Reason, Verdict};

/// The owner of a pod whose metadata is not available (no Kubernetes
/// source, the watch down, the pod not listed yet): `workload` of its
/// records, and the `workload` label of its metrics. Real workloads are
/// `Kind/name`, so it cannot be mistaken for one.
pub const UNKNOWN_WORKLOAD: &str = "unknown";

/// A pod's labels, shared (not copied) by the records of the pod.
pub type PodLabels = std::sync::Arc<std::collections::BTreeMap<String, String>>;

/// When in a flow's life the record was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The connect resolved: established or failed.
    #[default]
    Connect,
    /// An established flow closed with a verdict worse than at connect.
    Close,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRecord {
    /// RFC 3339 UTC, millisecond precision.
    pub time: String,
    pub phase: Phase,
    /// Process id (tgid) of the task that called connect().
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// cgroup v2 path of the connecting task.
    pub cgroup: Option<String>,
    pub netns: u32,
    /// From the cgroup path alone (filled without Kubernetes access).
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// From the Kubernetes index.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// Owning workload as `Kind/name` (Deployment resolved through its
    /// ReplicaSet); none for a bare pod (no owner); [`UNKNOWN_WORKLOAD`] for
    /// a pod whose metadata is not available.
    pub workload: Option<String>,
    /// systemd unit of a host process.
    pub unit: Option<String>,
    /// Labels of the pod (for hop matching; not shown), shared with the
    /// pod's metadata: a pod's labels cost its records one pointer.
    #[serde(skip)]
    pub pod_labels: Option<PodLabels>,
    pub src: Option<SocketAddr>,
    /// The destination the application asked for (its connect() sockaddr).
    pub dst: Option<SocketAddr>,
    /// `namespace/service:port`, `namespace/pod`, or `node/name` when known.
    pub dst_name: Option<String>,
    pub dst_class: Option<DstClass>,
    /// Where the connection really went: after socket-level load balancing
    /// or DNAT (conntrack reply source).
    pub dst_actual: Option<SocketAddr>,
    /// The source address NAT put on the connection, when it did.
    pub snat: Option<SocketAddr>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// errno of the failure (sk_err), 0 if none.
    pub errno: i32,
    /// Time from SYN_SENT to ESTABLISHED or to the failure.
    pub latency_ms: f64,
    pub retransmits: u32,
    pub syn_retransmits: u32,
    /// The hop this flow goes to: a hop name, `internet` past the last hop,
    /// `direct` for egress that bypassed the chain.
    pub hop: Option<String>,
    /// `client->A`, `A->B`, `A->internet` or `direct`.
    pub leg: Option<String>,
    /// CONNECT target (`host:port`) of a tunnel through a proxy.
    pub target: Option<String>,
    /// The server name (SNI) of the flow's TLS ClientHello: sent inside a
    /// CONNECT tunnel, to a TLS port, or to an SNI-routing (`tls-sni`) hop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The proxy's answer: status code, and its error tag / answering host.
    pub proxy_status: Option<u16>,
    pub proxy_error: Option<String>,
    pub proxy_via: Option<String>,
    /// Established lifetime, on close records.
    pub duration_ms: Option<f64>,
    /// Stable id of the flow in this agent: `<socket address>-<start ns>` in hex.
    pub flow_id: String,
    /// Chain this flow is the client leg of (set when the chain is stitched).
    pub chain_id: Option<String>,
    /// `client` on a client leg: `verdict`, `reason` and `failed_hop` are
    /// judged from what the client's own node sees (its socket and the
    /// proxy's answer), so they hold where no other leg is visible. `hop` on
    /// a hop's accepted connection (`src` is then its client, `dst` the
    /// hop's own address): the same judgement from the answer the hop sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vantage: Option<String>,
    /// The hop that broke, as this vantage sees it (`internet` past the last
    /// hop); none when it cannot tell which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_hop: Option<String>,
    /// What decided the vantage's verdict, quoted (e.g. `X-Squid-Error:
    /// ERR_CONNECT_FAIL 110 from gce-proxy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// On a failed connect of a pod (Kubernetes metadata on): what the
    /// NetworkPolicies selecting it say about this flow, evaluated against
    /// `dst_actual` (the backend after DNAT), else `dst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_verdict: Option<PolicyVerdict>,
    /// The policies behind `policy_verdict`, `namespace/name`, comma-separated:
    /// those isolating the pod (denied, uncertain) or allowing the flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Made by the agent's own prober (its process opened the flow).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
    /// The socket was open before the agent started and was adopted from
    /// the kernel's socket table: its connect is not known (no latency,
    /// owner task as found holding it), its close is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// The connect's ESTABLISHED was not traced (the kernel skipped the
    /// program's run, as it does when a softirq's state change lands while
    /// the program runs in a task on that CPU) and was taken up later, at
    /// the flow's first payload packet or its close: `latency_ms` is an
    /// upper bound, left out of the connect-duration histogram.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untimed: bool,
    /// CLOCK_MONOTONIC ns of the flow's start and of this record (for stitching).
    #[serde(skip)]
    pub start_mono_ns: u64,
    #[serde(skip)]
    pub record_mono_ns: u64,
    /// Set once the NAT join was attempted and found its entry.
    #[serde(skip)]
    pub nat_checked: Option<bool>,
    /// A close record that repeats the connect verdict: counted in metrics,
    /// not shown (one line per flow unless it got worse).
    #[serde(skip)]
    pub quiet: bool,
}

/// What kind of place a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum DstClass {
    Loopback,
    /// A pod of this cluster (from the Kubernetes index).
    Pod,
    /// A Service ClusterIP.
    Service,
    /// A node of this cluster.
    Node,
    /// Outside the cluster, in a private range (e.g. a proxy VM).
    Private,
    Public,
}

impl DstClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Pod => "pod",
            Self::Service => "service",
            Self::Node => "node",
            Self::Private => "private",
            Self::Public => "public",
        }
    }
}
