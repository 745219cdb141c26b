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
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::attribution::kube::{PodMeta, Workload};

    const OWNED: &str = "00000000-0000-4000-8000-0000000000a1";
    const BARE: &str = "00000000-0000-4000-8000-0000000000b2";
    const UNSEEN: &str = "00000000-0000-4000-8000-0000000000c3";

    fn pod(uid: &str, name: &str, workload: Option<Workload>) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: "tenant-a".into(),
            name: name.into(),
            labels: Arc::new(BTreeMap::from([("app".to_string(), "x".to_string())])),
            containers: vec![],
            workload,
            node: None,
            ip: vec![],
            host_network: false,
            phase: None,
            previous_containers: vec![],
            named_ports: vec![],
        }
    }

    fn enricher() -> Enricher {
        let kube = KubeIndex::from_pods([
            pod(OWNED, "web-1", Some(Workload { kind: "Deployment".into(), name: "web".into() })),
            pod(BARE, "debug", None),
        ]);
        let opts = EnrichOptions {
            cgroup_root: Some(std::env::temp_dir()),
            private_ranges: vec![],
            config: None,
        };
        Enricher::new(&opts, kube, NatTable::disabled())
    }

    fn owner_of(e: &mut Enricher, uid: Option<&str>) -> FlowRecord {
        let mut r = FlowRecord {
            pod_uid: uid.map(str::to_string),
            dst: Some("203.0.113.7:443".parse().expect("addr")),
            ..FlowRecord::default()
        };
        e.enrich(&mut r);
        r
    }

    #[test]
    fn pods_without_metadata_are_unknown_never_hosts() {
        let mut e = enricher();
        let r = owner_of(&mut e, Some(OWNED));
        assert_eq!(
            (r.namespace.as_deref(), r.pod.as_deref(), r.workload.as_deref()),
            (Some("tenant-a"), Some("web-1"), Some("Deployment/web"))
        );
        assert!(r.pod_labels.as_ref().is_some_and(|l| l.contains_key("app")));
        // A bare pod: metadata known, no owner.
        let r = owner_of(&mut e, Some(BARE));
        assert_eq!((r.pod.as_deref(), r.workload.as_deref()), (Some("debug"), None));
        // A pod cgroup the index does not know (watch down, --kube false, not listed yet).
        let r = owner_of(&mut e, Some(UNSEEN));
        assert_eq!(
            (r.namespace.as_deref(), r.pod.as_deref(), r.workload.as_deref()),
            (None, None, Some(UNKNOWN_WORKLOAD))
        );
        assert!(r.pod_labels.is_none());
        // A host process (no pod UID in its cgroup) stays unowned.
        assert_eq!(owner_of(&mut e, None).workload, None);
    }

    /// The NetworkPolicy wiring: a pod of `production` under a default deny
    /// and an allow-list (ipBlock with except, a port range), as the watch
    /// would have listed them.
    mod policy {
        use super::*;
        use k8s_openapi::api::networking::v1::NetworkPolicy;

        const WEB: &str = "00000000-0000-4000-8000-0000000000d4";
        const HOSTNET: &str = "00000000-0000-4000-8000-0000000000e5";

        fn np(json: serde_json::Value) -> NetworkPolicy {
            serde_json::from_value(json).expect("NetworkPolicy JSON")
        }

        fn policies() -> Vec<NetworkPolicy> {
            vec![
                np(serde_json::json!({
                    "metadata": {"namespace": "production", "name": "default-deny-egress"},
                    "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
                })),
                np(serde_json::json!({
                    "metadata": {"namespace": "production", "name": "allow-web-egress"},
                    "spec": {
                        "podSelector": {"matchLabels": {"app": "web"}},
                        "policyTypes": ["Egress"],
                        "egress": [{
                            "to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.3/32"]}}],
                            "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8090}]
                        }]
                    }
                })),
            ]
        }

        fn web(uid: &str, host_network: bool) -> PodMeta {
            PodMeta {
                namespace: "production".into(),
                labels: Arc::new(BTreeMap::from([("app".to_string(), "web".to_string())])),
                workload: Some(Workload { kind: "Deployment".into(), name: "web".into() }),
                ip: vec!["10.8.0.5".parse().expect("ip")],
                host_network,
                ..pod(uid, "web-1", None)
            }
        }

        fn enricher(kube: KubeIndex) -> Enricher {
            let opts = EnrichOptions {
                cgroup_root: Some(std::env::temp_dir()),
                private_ranges: vec![],
                config: None,
            };
            Enricher::new(&opts, kube, NatTable::disabled())
        }

        fn listed() -> Enricher {
            enricher(KubeIndex::from_objects(
                [web(WEB, false), web(HOSTNET, true)],
                [("production".to_string(), BTreeMap::new())],
                policies(),
            ))
        }

        fn failed(uid: &str, dst: &str, reason: Reason) -> FlowRecord {
            FlowRecord {
                pod_uid: Some(uid.into()),
                dst: Some(dst.parse().expect("addr")),
                verdict: Verdict::Failed,
                reason: Some(reason),
                ..FlowRecord::default()
            }
        }

        fn judged(e: &Enricher, mut r: FlowRecord) -> FlowRecord {
            e.policy(&mut r);
            r
        }

        #[test]
        fn denied_connects_are_policy_denied_naming_the_policies() {
            let e = listed();
            for (dst, why) in [
                ("198.51.100.3:8080", "in except"),
                ("198.51.100.2:9090", "past endPort"),
                ("203.0.113.9:8080", "outside the ipBlock"),
            ] {
                for transport in [Reason::Timeout, Reason::Unreachable, Reason::Refused] {
                    let r = judged(&e, failed(WEB, dst, transport));
                    assert_eq!(r.reason, Some(Reason::PolicyDenied), "{dst} ({why}) {transport:?}");
                    assert_eq!(r.policy_verdict, Some(PolicyVerdict::Denied), "{dst}");
                    assert_eq!(
                        r.policy.as_deref(),
                        Some("production/allow-web-egress,production/default-deny-egress"),
                        "every policy isolating the pod: {dst}"
                    );
                }
            }
        }

        #[test]
        fn an_allowed_timeout_stays_a_timeout() {
            let e = listed();
            for dst in ["198.51.100.2:8000", "198.51.100.254:8090"] {
                let r = judged(&e, failed(WEB, dst, Reason::Timeout));
                assert_eq!(r.reason, Some(Reason::Timeout), "{dst}");
                assert_eq!(r.policy_verdict, Some(PolicyVerdict::Allowed), "{dst}");
                assert_eq!(r.policy.as_deref(), Some("production/allow-web-egress"), "{dst}");
            }
        }

        #[test]
        fn the_backend_after_dnat_is_judged_not_the_service() {
            let e = listed();
            // The ClusterIP is inside the allowed block; its backend is excepted.
            let mut r = failed(WEB, "198.51.100.10:8080", Reason::Timeout);
            r.dst_actual = Some("198.51.100.3:8080".parse().expect("addr"));
            assert_eq!(judged(&e, r).reason, Some(Reason::PolicyDenied));
            // And the other way round: a denied ClusterIP, an allowed backend.
            let mut r = failed(WEB, "203.0.113.9:80", Reason::Timeout);
            r.dst_actual = Some("198.51.100.2:8080".parse().expect("addr"));
            let r = judged(&e, r);
            assert_eq!(
                (r.reason, r.policy_verdict),
                (Some(Reason::Timeout), Some(PolicyVerdict::Allowed))
            );
        }

        #[test]
        fn a_service_without_seen_dnat_is_judged_on_its_backends() {
            let kube = KubeIndex::from_objects([web(WEB, false)], [], policies());
            let svc = |name: &str, ip: &str| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": "production", "name": name},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .expect("Service")
            };
            let slice = |name: &str, service: &str, backends: &[&str]| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": "production", "name": name,
                                 "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4",
                    "endpoints": backends.iter().map(|b| serde_json::json!({"addresses": [b]})).collect::<Vec<_>>(),
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
                }))
                .expect("EndpointSlice")
            };
            kube.apply_services(
                vec![
                    svc("ledger", "10.96.0.10"),
                    svc("mixed", "10.96.0.11"),
                    svc("archive", "10.96.0.12"),
                ],
                vec![
                    slice("ledger-a", "ledger", &["198.51.100.3"]),
                    slice("mixed-a", "mixed", &["198.51.100.3"]),
                    slice("mixed-b", "mixed", &["198.51.100.2"]),
                    slice("archive-a", "archive", &["198.51.100.2", "198.51.100.4"]),
                ],
            );
            let e = enricher(kube);
            let r = judged(&e, failed(WEB, "10.96.0.10:80", Reason::Timeout));
            assert_eq!(r.reason, Some(Reason::PolicyDenied), "its only backend is excepted");
            // The socket's own address as `dst_actual` (nothing rewrote it at
            // connect) is no DNAT seen: still the backends.
            let mut r = failed(WEB, "10.96.0.10:80", Reason::Timeout);
            r.dst_actual = r.dst;
            assert_eq!(judged(&e, r).reason, Some(Reason::PolicyDenied));
            let r = judged(&e, failed(WEB, "10.96.0.12:80", Reason::Timeout));
            assert_eq!(
                (r.reason, r.policy_verdict),
                (Some(Reason::Timeout), Some(PolicyVerdict::Allowed)),
                "every backend allowed (on the target port 8080, not the Service's 80)"
            );
            let r = judged(&e, failed(WEB, "10.96.0.11:80", Reason::Timeout));
            assert_eq!(
                (r.reason, r.policy_verdict),
                (Some(Reason::Timeout), Some(PolicyVerdict::Uncertain)),
                "one backend denied, one allowed: which one the SYN went to is unknown"
            );
            // Conntrack's DNAT, when seen, is what counts.
            let mut r = failed(WEB, "10.96.0.11:80", Reason::Timeout);
            r.dst_actual = Some("198.51.100.3:8080".parse().expect("addr"));
            assert_eq!(judged(&e, r).reason, Some(Reason::PolicyDenied));
        }

        #[test]
        fn only_failed_pod_connects_without_an_answer_are_asked_about() {
            let e = listed();
            let denied = "198.51.100.3:8080";
            let untouched = |r: FlowRecord, what: &str| {
                let before = (r.verdict, r.reason);
                let r = judged(&e, r);
                assert_eq!((r.verdict, r.reason), before, "{what}");
                assert_eq!((r.policy_verdict, r.policy.as_deref()), (None, None), "{what}");
            };
            untouched(
                FlowRecord {
                    verdict: Verdict::Ok,
                    reason: None,
                    ..failed(WEB, denied, Reason::Timeout)
                },
                "an ok connect (the datapath let it through)",
            );
            untouched(
                FlowRecord { phase: Phase::Close, ..failed(WEB, denied, Reason::Reset) },
                "a close",
            );
            untouched(
                FlowRecord { proxy_status: Some(403), ..failed(WEB, denied, Reason::ProxyDenied) },
                "a proxy's answer",
            );
            untouched(failed(WEB, denied, Reason::Bypass), "a bypass stays a bypass");
            untouched(
                FlowRecord { pod_uid: None, ..failed(WEB, denied, Reason::Timeout) },
                "a host process",
            );
            untouched(failed(HOSTNET, denied, Reason::Timeout), "a hostNetwork pod");
            untouched(
                FlowRecord { synthetic: true, ..failed(WEB, denied, Reason::Timeout) },
                "the agent's own probe",
            );
            // Policies never listed (no Kubernetes source, the watch not synced): no verdict.
            let unsynced = enricher(KubeIndex::from_pods([web(WEB, false)]));
            let mut r = failed(WEB, denied, Reason::Timeout);
            unsynced.policy(&mut r);
            assert_eq!((r.reason, r.policy_verdict), (Some(Reason::Timeout), None));
        }

        #[test]
        fn pods_no_policy_selects_are_not_isolated() {
            let e = enricher(KubeIndex::from_objects(
                [PodMeta { namespace: "staging".into(), ..web(WEB, false) }],
                [],
                policies(),
            ));
            let r = judged(&e, failed(WEB, "198.51.100.3:8080", Reason::Timeout));
            assert_eq!(r.reason, Some(Reason::Timeout));
            assert_eq!((r.policy_verdict, r.policy), (Some(PolicyVerdict::NotIsolated), None));
        }

        #[test]
        fn selectors_resolve_against_the_index_and_doubt_is_not_blamed() {
            let mut ps = policies();
            // Egress to the pods labelled app=db of namespaces labelled tier=data, named port.
            ps.push(np(serde_json::json!({
                "metadata": {"namespace": "production", "name": "allow-db"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "web"}},
                    "policyTypes": ["Egress"],
                    "egress": [{
                        "to": [{"namespaceSelector": {"matchLabels": {"tier": "data"}},
                                "podSelector": {"matchLabels": {"app": "db"}}}],
                        "ports": [{"port": "postgres"}]
                    }]
                }
            })));
            let db = PodMeta {
                namespace: "data".into(),
                labels: Arc::new(BTreeMap::from([("app".to_string(), "db".to_string())])),
                ip: vec!["10.8.0.9".parse().expect("ip")],
                named_ports: vec![crate::pipeline::policy::NamedPort {
                    name: "postgres".into(),
                    port: 5432,
                    protocol: crate::pipeline::policy::Protocol::Tcp,
                }],
                ..pod("00000000-0000-4000-8000-0000000000f6", "db-0", None)
            };
            let e = enricher(KubeIndex::from_objects(
                [web(WEB, false), db],
                [("data".to_string(), BTreeMap::from([("tier".to_string(), "data".to_string())]))],
                ps,
            ));
            let r = judged(&e, failed(WEB, "10.8.0.9:5432", Reason::Timeout));
            assert_eq!(
                (r.reason, r.policy_verdict, r.policy.as_deref()),
                (Some(Reason::Timeout), Some(PolicyVerdict::Allowed), Some("production/allow-db"))
            );
            let r = judged(&e, failed(WEB, "10.8.0.9:5433", Reason::Timeout));
            assert_eq!(r.reason, Some(Reason::PolicyDenied), "not the named port's number");
            // A malformed entry might have allowed it: uncertain, reason kept.
            let mut ps = policies();
            ps.push(np(serde_json::json!({
                "metadata": {"namespace": "production", "name": "broken"},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                         "egress": [{"to": [{"ipBlock": {"cidr": "not-a-cidr"}}]}]}
            })));
            let e = enricher(KubeIndex::from_objects([web(WEB, false)], [], ps));
            let r = judged(&e, failed(WEB, "198.51.100.3:8080", Reason::Timeout));
            assert_eq!(
                (r.reason, r.policy_verdict),
                (Some(Reason::Timeout), Some(PolicyVerdict::Uncertain))
            );
        }
    }
}
