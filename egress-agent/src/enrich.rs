//! The enrich stage: who (cgroup → pod / container / unit, then Kubernetes
//! metadata) and where (destination name and class, NAT). Runs on the
//! pipeline task; every source it reads is a cache that never blocks.
use std::path::PathBuf;

use crate::{
    cgroup::CgroupResolver,
    record::FlowRecord,
    remote::{self, Cidr},
};

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// cgroup v2 mount to resolve ids in (None: autodetect; none found: off).
    pub cgroup_root: Option<PathBuf>,
    /// Ranges classified `private` when not a pod, service or node.
    pub private_ranges: Vec<Cidr>,
}

pub struct Enricher {
    cgroups: CgroupResolver,
    private: Vec<Cidr>,
}

impl Enricher {
    pub fn new(opts: &EnrichOptions) -> Self {
        let root = opts.cgroup_root.clone().or_else(crate::cgroup::find_root);
        if root.is_none() {
            tracing::warn!("no cgroup v2 hierarchy found: pod and unit attribution are off");
        }
        Self { cgroups: CgroupResolver::new(root), private: opts.private_ranges.clone() }
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
    }
}
