//! The DNS record: one lookup of a local process (its query and response, or
//! its timeout) with the asker and the hop it concerns. Field names are
//! stable and snake_case.
use std::{borrow::Cow, net::SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    flow::PodLabels,
    verdict::{Reason, Verdict},
};

/// One lookup: a query and its response, or its timeout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsRecord {
    pub time: String,
    /// The asking socket's owner. No pid: the kernel hook runs on packets
    /// (ingress in softirq); the cgroup names the pod or the unit.
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<String>,
    pub unit: Option<String>,
    #[serde(skip)]
    pub pod_labels: Option<PodLabels>,
    pub name: String,
    pub qtype: Cow<'static, str>,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, … or `timeout`.
    pub rcode: Cow<'static, str>,
    pub answers: u16,
    /// The server asked (and that answered).
    pub server: Option<SocketAddr>,
    pub client: Option<SocketAddr>,
    /// `udp` or `tcp`.
    pub proto: Cow<'static, str>,
    pub latency_ms: f64,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// The hop this lookup is about: the hop whose process asked (the VM
    /// proxy resolving an origin) or whose name was asked (a pod resolving
    /// the proxy's name).
    pub hop: Option<String>,
    /// The hop whose process asked, when a hop asked.
    pub asked_by: Option<String>,
    #[serde(skip)]
    pub start_mono_ns: u64,
    #[serde(skip)]
    pub record_mono_ns: u64,
}

/// The rcode of a lookup that got no answer in time.
pub const TIMEOUT: &str = "timeout";
