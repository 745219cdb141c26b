//! The counted row: clean flows of one owner to one destination over one
//! interval. The kernel counts connects that succeeded without trouble and
//! closes that followed cleanly, instead of sending an event for each (a
//! busy node makes hundreds of thousands a minute); this record is what the
//! agent says of them. Failures, degraded flows, proxy and DNS flows are
//! never counted here: they are flow records, one each.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{
    flow::DstClass,
    verdict::{Reason, Verdict},
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AggregateRecord {
    /// End of the interval (RFC 3339 UTC).
    pub time: String,
    pub interval_ms: u64,
    /// Clean connects in the interval, and clean closes.
    pub count: u64,
    pub closes: u64,
    /// `ok`: only clean flows are counted (`failed`/`bypass` where the
    /// chain calls their destination a bypass).
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// Mean SYN_SENT→ESTABLISHED time of the counted connects.
    pub latency_ms: f64,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub netns: u32,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub workload: Option<String>,
    pub unit: Option<String>,
    /// Where the flows went (the socket's destination, after DNAT where the
    /// kernel translated it on this node).
    pub dst: Option<SocketAddr>,
    pub dst_name: Option<String>,
    pub dst_class: Option<DstClass>,
    pub hop: Option<String>,
    pub leg: Option<String>,
}
