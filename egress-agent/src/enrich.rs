//! The enrich stage: who (cgroup → pod / container / unit, then Kubernetes
//! metadata) and where (destination name and class, NAT). Runs on the
//! pipeline task; every source it reads is a cache that never blocks.
use std::{path::PathBuf, sync::Arc};

use crate::{
    cgroup::CgroupResolver,
    chain::{Chain, DIRECT},
    record::FlowRecord,
    remote::{self, Cidr},
    verdict::{Reason, Verdict},
};

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// cgroup v2 mount to resolve ids in (None: autodetect; none found: off).
    pub cgroup_root: Option<PathBuf>,
    /// Ranges classified `private` when not a pod, service or node.
    pub private_ranges: Vec<Cidr>,
    /// The proxy chain (none: no hop classification).
    pub chain: Option<Arc<Chain>>,
}

pub struct Enricher {
    cgroups: CgroupResolver,
    private: Vec<Cidr>,
    chain: Option<Arc<Chain>>,
}

impl Enricher {
    pub fn new(opts: &EnrichOptions) -> Self {
        let root = opts.cgroup_root.clone().or_else(crate::cgroup::find_root);
        if root.is_none() {
            tracing::warn!("no cgroup v2 hierarchy found: pod and unit attribution are off");
        }
        Self { cgroups: CgroupResolver::new(root), private: opts.private_ranges.clone(), chain: opts.chain.clone() }
    }

    pub fn enrich(&mut self, r: &mut FlowRecord) {
        if r.cgroup_id != 0
            && let Some(info) = self.cgroups.resolve(r.cgroup_id)
        {
            r.cgroup = Some(info.path.clone());
            r.pod_uid = info.pod_uid.clone();
            r.container_id = info.container_id.clone();
            r.unit = info.unit.clone();
        }
        if r.dst_class.is_none()
            && let Some(dst) = r.dst
        {
            r.dst_class = Some(remote::classify(dst.ip(), &self.private));
        }
        if let Some(leg) = self.chain.as_ref().and_then(|c| c.classify(r)) {
            if leg.hop == DIRECT {
                // Egress that left the chain: a finding whatever the transport said.
                r.verdict = Verdict::Failed;
                r.reason = Some(Reason::Bypass);
                r.quiet = r.phase == crate::record::Phase::Close;
            }
            r.hop = Some(leg.hop);
            r.leg = Some(leg.leg);
        }
    }
}
