//! Unit tests of `enrich` (a file of their own: the module is long).
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
