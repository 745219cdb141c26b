//! The enrich stage: who (cgroup → pod / container / unit, then Kubernetes
//! metadata), where (destination name and class, NAT) and which leg of the
//! proxy chain. Runs on the pipeline task; every source it reads is a cache
//! that never blocks.
use std::{path::PathBuf, sync::Arc};

use super::{flow_table::HOP_VANTAGE, legs};
use crate::{
    attribution::{
        self,
        cgroup::CgroupResolver,
        kube::{KubeIndex, RemoteClass},
        nat::{FlowKey, NatTable},
        remote,
    },
    config::{Cidr, Config, DIRECT, HopProtocol},
    kernel::decode,
    records::{
        DnsRecord, DstClass, FlowRecord, Phase, PolicyVerdict, Reason, UNKNOWN_WORKLOAD, Verdict,
    },
};

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// cgroup v2 mount to resolve ids in (None: autodetect; none found: off).
    pub cgroup_root: Option<PathBuf>,
    /// Ranges classified `private` when not a pod, service or node.
    pub private_ranges: Vec<Cidr>,
    /// The configuration whose chain the legs are of (none: no hop classification).
    pub config: Option<Arc<Config>>,
}

pub struct Enricher {
    cgroups: CgroupResolver,
    private: Vec<Cidr>,
    config: Option<Arc<Config>>,
    kube: KubeIndex,
    nat: NatTable,
    /// The agent's own process: its flows are the prober's (`synthetic`).
    own_pid: u32,
}

impl Enricher {
    pub fn new(opts: &EnrichOptions, kube: KubeIndex, nat: NatTable) -> Self {
        let root = opts.cgroup_root.clone().or_else(attribution::cgroup::find_root);
        if root.is_none() {
            tracing::warn!("no cgroup v2 hierarchy found: pod and unit attribution are off");
        }
        Self {
            cgroups: CgroupResolver::new(root),
            private: opts.private_ranges.clone(),
            config: opts.config.clone(),
            kube,
            nat,
            own_pid: std::process::id(),
        }
    }

    /// True when conntrack is followed and this connect record's NAT entry is
    /// not known yet: the caller may hold it briefly and call [`Self::nat`] again.
    pub fn nat_pending(&self, r: &FlowRecord) -> bool {
        self.nat.is_enabled() && r.phase == Phase::Connect && r.nat_checked.is_none()
    }

    /// Join the conntrack entry of the flow: the real destination (DNAT) and
    /// the source address NAT put on it. Returns whether an entry was found.
    pub fn nat(&self, r: &mut FlowRecord) -> bool {
        let (Some(src), Some(dst)) = (r.src, r.dst) else { return false };
        let Some(e) = self.nat.lookup(&FlowKey { src, dst }) else { return false };
        r.nat_checked = Some(true);
        if let Some(d) = e.dnat_to() {
            r.dst_actual = Some(d);
        }
        r.snat = e.snat_to();
        true
    }

    /// A mapping from the conntrack kprobe goes to the NAT table (the same
    /// one ctnetlink feeds). False when its addresses do not decode.
    pub fn observe_nat_mapping(&self, m: &egress_common::NatMapping) -> bool {
        use decode::{dst, src};
        let (Some(os), Some(od), Some(rs), Some(rd)) =
            (src(&m.original), dst(&m.original), src(&m.reply), dst(&m.reply))
        else {
            return false;
        };
        self.nat.observe_kprobe(
            u64::from(m.netns),
            FlowKey { src: os, dst: od },
            FlowKey { src: rs, dst: rd },
        );
        true
    }

    /// Pod metadata of the record's pod UID (from the cgroup path). A pod
    /// whose metadata is not available (no Kubernetes source, the watch down
    /// since before the pod started, a pod not listed yet) is owned by
    /// [`UNKNOWN_WORKLOAD`]: never mistaken for a host process.
    fn pod(&self, r: &mut FlowRecord) {
        let Some(uid) = r.pod_uid.as_deref() else { return };
        let Some(pod) = self.kube.pod_arc(uid) else {
            r.workload = Some(UNKNOWN_WORKLOAD.to_string());
            return;
        };
        r.namespace = Some(pod.namespace.clone());
        r.pod = Some(pod.name.clone());
        r.container =
            r.container_id.as_deref().and_then(|c| pod.container_name(c)).map(str::to_string);
        r.workload = pod.workload.as_ref().map(|w| format!("{}/{}", w.kind, w.name));
        r.pod_labels = Some(Arc::clone(&pod.labels));
    }

    /// Who asked (cgroup → pod or unit) and which hop the lookup is about.
    pub fn enrich_dns(&mut self, d: &mut DnsRecord) {
        let mut owner = FlowRecord { cgroup_id: d.cgroup_id, ..FlowRecord::default() };
        if d.cgroup_id != 0
            && let Some(info) = self.cgroups.resolve(d.cgroup_id)
        {
            owner.cgroup = Some(info.path.clone());
            owner.pod_uid = info.pod_uid.clone();
            owner.unit = info.unit.clone();
        }
        self.pod(&mut owner);
        if let Some(c) = &self.config {
            d.asked_by = legs::owner_hop(&c.chain, &owner).map(str::to_string);
            d.hop = legs::dns_hop(&c.chain, d.asked_by.as_deref(), &d.name);
        }
        d.cgroup = owner.cgroup;
        d.pod_uid = owner.pod_uid;
        d.namespace = owner.namespace;
        d.pod = owner.pod;
        d.workload = owner.workload;
        d.unit = owner.unit;
        d.pod_labels = owner.pod_labels;
    }

    /// The NetworkPolicy verdict of a pod's failed connect, judged against
    /// where the packets really went (`dst_actual`, the backend after DNAT;
    /// a Service address without one: its EndpointSlice backends; else
    /// `dst`, see [`KubeIndex::egress_policy`]): so it runs once NAT is joined and the transport verdict
    /// made (client legs included). A connect the policies deny gets reason
    /// `policy_denied`; one they allow keeps its reason (a `timeout` the
    /// policies allow is not theirs). Only connects that never opened and
    /// that no proxy answered are asked about: a policy engine drops (no
    /// answer) or rejects (ICMP or RST); an answer means the packets passed.
    pub fn policy(&self, r: &mut FlowRecord) {
        if r.phase != Phase::Connect
            || r.verdict != Verdict::Failed
            || r.synthetic
            || r.proxy_status.is_some()
            || !matches!(
                r.reason,
                Some(Reason::Timeout | Reason::Unreachable | Reason::Refused | Reason::Other)
            )
        {
            return;
        }
        let (Some(uid), Some(dst)) = (r.pod_uid.as_deref(), r.dst) else {
            return;
        };
        let Some(check) = self.kube.egress_policy(uid, dst, r.dst_actual) else { return };
        if !check.policies.is_empty() {
            let names: Vec<&str> = check.policies.iter().map(|p| &**p).collect();
            r.policy = Some(names.join(","));
        }
        r.policy_verdict = Some(check.verdict);
        if check.verdict == PolicyVerdict::Denied {
            r.reason = Some(Reason::PolicyDenied);
        }
    }

    pub fn enrich(&mut self, r: &mut FlowRecord) {
        r.synthetic = r.pid == self.own_pid;
        if r.cgroup_id != 0
            && let Some(info) = self.cgroups.resolve(r.cgroup_id)
        {
            r.cgroup = Some(info.path.clone());
            r.pod_uid = info.pod_uid.clone();
            r.container_id = info.container_id.clone();
            r.unit = info.unit.clone();
        }
        self.pod(r);
        if let Some(dst) = r.dst
            && let Some(m) = self.kube.remote(dst.ip(), dst.port())
        {
            let ns = m.namespace.as_deref().unwrap_or("");
            r.dst_class = Some(match m.class {
                RemoteClass::Pod => DstClass::Pod,
                RemoteClass::Service => DstClass::Service,
                RemoteClass::Node => DstClass::Node,
            });
            r.dst_name = Some(match m.class {
                RemoteClass::Service => format!("{ns}/{}:{}", m.name, dst.port()),
                RemoteClass::Pod => format!("{ns}/{}", m.name),
                RemoteClass::Node => format!("node/{}", m.name),
            });
        }
        self.nat(r);
        if r.dst_class.is_none()
            && let Some(dst) = r.dst
        {
            r.dst_class = Some(remote::classify(dst.ip(), &self.private));
        }
        let accepted = r.vantage.as_deref() == Some(HOP_VANTAGE);
        let leg = self.config.as_ref().and_then(|c| {
            if accepted {
                legs::classify_accepted(&c.chain, r)
            } else {
                legs::classify(&c.chain, r)
            }
        });
        if accepted && leg.is_none() {
            // Another service on a hop's port: not a hop, not egress.
            r.quiet = true;
        }
        if let Some(leg) = leg {
            if leg.hop == DIRECT {
                // Egress that left the chain: a finding whatever the transport said.
                r.verdict = Verdict::Failed;
                r.reason = Some(Reason::Bypass);
                r.quiet = r.phase == Phase::Close;
            }
            // Through an SNI router, the destination is the ClientHello's
            // server name (on the port the client connected to).
            let sni_hop = self.config.as_ref().is_some_and(|c| {
                c.chain.hops.iter().any(|h| h.name == leg.hop && h.protocol == HopProtocol::TlsSni)
            });
            if sni_hop
                && r.target.is_none()
                && let (Some(n), Some(d)) = (&r.sni, r.dst)
            {
                r.target = Some(format!("{n}:{}", d.port()));
            }
            r.hop = Some(leg.hop);
            r.leg = Some(leg.leg);
        }
    }
}

#[cfg(test)]
#[path = "enrich_tests.rs"]
mod tests;
