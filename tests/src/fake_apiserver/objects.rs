//! The one fixture set: Kubernetes objects as the API returns them, for the
//! fake API server. Shapes follow `kubectl get -o json` of real objects,
//! `managedFields` left out. [`cluster`] is a GKE-like cluster running the
//! egress chain; the builders make the objects of any other test.
use serde_json::{Value, json};

pub const NODE_A: &str = "gke-egress-pool-1-node-a";
pub const NODE_B: &str = "gke-egress-pool-1-node-b";
pub const NODE_A_IP: &str = "10.128.0.10";
pub const NODE_A_EXTERNAL_IP: &str = "34.76.10.20";
pub const NODE_B_IP: &str = "10.128.0.11";
const CREATED: &str = "2024-06-01T00:00:03Z";

/// A containerd container id: 64 hex digits, distinct per seed.
pub fn cid(seed: u32) -> String {
    (0..8u32)
        .map(|i| {
            format!(
                "{:08x}",
                seed.wrapping_mul(0x9e37_79b9).wrapping_add(i.wrapping_mul(0x85eb_ca6b))
            )
        })
        .collect()
}

/// A pod UID, distinct per seed.
pub fn uid(seed: u32) -> String {
    format!("{seed:08x}-5d1c-4b7e-9a3f-{:012x}", u64::from(seed) * 7919)
}

pub struct PodSpec<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub uid: String,
    pub node: &'a str,
    pub ip: &'a str,
    /// (apiVersion, kind, name)
    pub owner: Option<(&'a str, &'a str, &'a str)>,
    pub labels: Value,
    /// (name, image, container id)
    pub containers: Vec<(&'a str, &'a str, String)>,
    pub host_network: bool,
    /// (container name, id of the instance before the restart)
    pub restarted: Option<(&'a str, String)>,
    /// The node's address (default: node A's or node B's).
    pub host_ip: Option<&'a str>,
}

impl Default for PodSpec<'_> {
    fn default() -> Self {
        PodSpec {
            ns: "default",
            name: "pod",
            uid: uid(0),
            node: NODE_A,
            ip: "10.8.1.100",
            owner: None,
            labels: json!({}),
            containers: Vec::new(),
            host_network: false,
            restarted: None,
            host_ip: None,
        }
    }
}

pub fn pod(p: &PodSpec<'_>) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|(name, image, _)| {
            json!({
                "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 3128, "name": "http", "protocol": "TCP"}],
                "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "name": "kube-api-access-7xq2k", "readOnly": true}]
            })
        })
        .collect();
    let statuses: Vec<Value> = p
        .containers
        .iter()
        .map(|(name, image, id)| {
            let restarted = p.restarted.as_ref().filter(|(c, _)| c == name);
            let last_state = match restarted {
                Some((_, prev)) => {
                    json!({"terminated": {"containerID": format!("containerd://{prev}"), "exitCode": 137,
                    "finishedAt": "2024-06-01T00:04:10Z", "reason": "OOMKilled", "startedAt": "2024-06-01T00:00:05Z"}})
                }
                None => json!({}),
            };
            json!({
                "containerID": format!("containerd://{id}"),
                "image": format!("docker.io/{image}"),
                "imageID": format!("docker.io/{}@sha256:{}", image.split(':').next().unwrap_or(image), cid(7)),
                "lastState": last_state, "name": name, "ready": true,
                "restartCount": if restarted.is_some() { 1 } else { 0 },
                "started": true, "state": {"running": {"startedAt": "2024-06-01T00:04:11Z"}}
            })
        })
        .collect();
    let owners: Vec<Value> = p
        .owner
        .iter()
        .map(|(api_version, kind, name)| {
            json!({"apiVersion": api_version, "blockOwnerDeletion": true, "controller": true,
                   "kind": kind, "name": name, "uid": uid(name.len() as u32 + 900)})
        })
        .collect();
    let host_ip = p.host_ip.unwrap_or(if p.node == NODE_A { NODE_A_IP } else { NODE_B_IP });
    let mut spec = json!({
        "containers": containers, "dnsPolicy": "ClusterFirst", "enableServiceLinks": true,
        "nodeName": p.node, "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
        "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {},
        "serviceAccount": "default", "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
        "tolerations": [
            {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
            {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
        ],
        "volumes": [{"name": "kube-api-access-7xq2k", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}}
        ]}}]
    });
    if p.host_network {
        spec["hostNetwork"] = json!(true);
        spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": CREATED,
            "generateName": p.owner.map(|(_, _, n)| format!("{n}-")),
            "labels": p.labels,
            "name": p.name,
            "namespace": p.ns,
            "ownerReferences": owners,
            "uid": p.uid
        },
        "spec": spec,
        "status": {
            "conditions": [
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:04Z", "status": "True", "type": "PodReadyToStartContainers"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:03Z", "status": "True", "type": "Initialized"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:06Z", "status": "True", "type": "Ready"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:06Z", "status": "True", "type": "ContainersReady"},
                {"lastProbeTime": null, "lastTransitionTime": "2024-06-01T00:00:03Z", "status": "True", "type": "PodScheduled"}
            ],
            "containerStatuses": statuses,
            "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "phase": "Running",
            "podIP": p.ip, "podIPs": [{"ip": p.ip}],
            "qosClass": "Burstable",
            "startTime": CREATED
        }
    })
}

pub fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    port: u16,
    selector: Option<Value>,
) -> Value {
    let mut spec = json!({
        "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "internalTrafficPolicy": "Cluster",
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "tcp", "port": port, "protocol": "TCP", "targetPort": port}],
        "sessionAffinity": "None", "type": "ClusterIP"
    });
    if let Some(selector) = selector {
        spec["selector"] = selector;
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"creationTimestamp": CREATED, "labels": {"app": name}, "name": name, "namespace": ns,
                     "uid": uid(name.len() as u32 + 500)},
        "spec": spec,
        "status": {"loadBalancer": {}}
    })
}

/// One endpoint: (address, Some((pod name, pod uid, node)) for a pod backend).
pub type Endpoint<'a> = (&'a str, Option<(&'a str, String, &'a str)>);

pub fn endpoint_slice(
    ns: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[Endpoint<'_>],
) -> Value {
    // The EndpointSlice controller writes slices of Services with a selector;
    // a selector-less Service's slice is written by hand, without owner.
    let by_controller = endpoints.is_empty() || endpoints.iter().any(|(_, pod)| pod.is_some());
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, pod)| {
            let mut e =
                json!({"addresses": [addr], "conditions": {"ready": true, "serving": true, "terminating": false}});
            if let Some((pod, pod_uid, node)) = pod {
                e["nodeName"] = json!(node);
                e["targetRef"] = json!({"kind": "Pod", "name": pod, "namespace": ns, "uid": pod_uid});
                e["zone"] = json!("europe-west1-b");
            }
            e
        })
        .collect();
    let mut slice = json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": endpoints,
        "kind": "EndpointSlice",
        "metadata": {
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-06-01T00:00:06Z"},
            "creationTimestamp": CREATED, "generateName": format!("{service}-"), "generation": 2,
            "labels": {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "kubernetes.io/service-name": service},
            "name": name, "namespace": ns,
            "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "Service", "name": service, "uid": uid(service.len() as u32 + 500)}],
            "uid": uid(name.len() as u32 + 700)
        },
        "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}]
    });
    if !by_controller {
        let meta = slice["metadata"].as_object_mut().expect("object");
        meta.remove("generateName");
        meta.remove("ownerReferences");
        meta.remove("annotations");
        meta.insert(
            "labels".into(),
            json!({"endpointslice.kubernetes.io/managed-by": "egress-lab-admin",
                                              "kubernetes.io/service-name": service}),
        );
    }
    slice
}

pub fn node(name: &str, internal: &str, external: Option<&str>) -> Value {
    let mut addresses = vec![json!({"address": internal, "type": "InternalIP"})];
    if let Some(external) = external {
        addresses.push(json!({"address": external, "type": "ExternalIP"}));
    }
    addresses.push(json!({"address": name, "type": "Hostname"}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "creationTimestamp": "2024-05-20T08:00:00Z",
            "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "cloud.google.com/gke-nodepool": "egress-pool-1", "topology.kubernetes.io/zone": "europe-west1-b"},
            "name": name, "uid": uid(name.len() as u32 + 300)
        },
        "spec": {"podCIDR": "10.8.1.0/24", "podCIDRs": ["10.8.1.0/24"],
                 "providerID": format!("gce://egress-lab/europe-west1-b/{name}")},
        "status": {
            "addresses": addresses,
            "allocatable": {"cpu": "1930m", "ephemeral-storage": "47060071478", "memory": "5758392Ki", "pods": "110"},
            "capacity": {"cpu": "2", "ephemeral-storage": "98831908Ki", "memory": "8140216Ki", "pods": "110"},
            "conditions": [{"lastHeartbeatTime": "2024-06-01T00:00:00Z", "lastTransitionTime": "2024-05-20T08:01:00Z",
                            "message": "kubelet is posting ready status", "reason": "KubeletReady",
                            "status": "True", "type": "Ready"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"architecture": "amd64", "bootID": "0b4a0a58-3c1e-4d52-8a8e-0e1f5b5a1c11",
                         "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.6.56+",
                         "kubeProxyVersion": "v1.33.1-gke.1", "kubeletVersion": "v1.33.1-gke.1",
                         "machineID": "5f0c2a8e1b9d4c7f8e6a3b2c1d0e9f8a", "operatingSystem": "linux",
                         "osImage": "Container-Optimized OS from Google",
                         "systemUUID": "5f0c2a8e-1b9d-4c7f-8e6a-3b2c1d0e9f8a"}
        }
    })
}

/// A Namespace as the apiserver returns it (with the immutable
/// `kubernetes.io/metadata.name` label it sets) plus `labels`.
pub fn namespace(name: &str, labels: Value) -> Value {
    let mut all = json!({"kubernetes.io/metadata.name": name});
    for (k, v) in labels.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"creationTimestamp": CREATED, "labels": all, "name": name,
                     "uid": uid(name.len() as u32 + 900)},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// A `networking.k8s.io/v1` NetworkPolicy with this `spec`, as
/// `kubectl get networkpolicy -o json` shows it (no status since 1.28).
pub fn network_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"creationTimestamp": CREATED, "generation": 1, "name": name, "namespace": ns,
                     "uid": uid(name.len() as u32 + 1100)},
        "spec": spec
    })
}

/// The standard cluster: the egress chain's proxy Deployment, a DaemonSet with
/// host networking, a StatefulSet and a CronJob's pod on node A; a second
/// proxy replica on node B; Services with their EndpointSlices, one of them
/// selector-less pointing at the GCE proxy VM; both nodes.
pub struct Cluster {
    pub squid: Value,
    pub squid_b: Value,
    pub agent: Value,
    pub redis: Value,
    pub report: Value,
    pub others: Vec<Value>,
}

pub const SQUID_IP: &str = "10.8.1.10";
pub const SQUID_B_IP: &str = "10.8.2.10";
pub const REDIS_IP: &str = "10.8.1.11";
pub const REPORT_IP: &str = "10.8.1.12";
pub const SQUID_SVC_IP: &str = "10.12.0.20";
pub const REDIS_SVC_IP: &str = "10.12.0.30";
pub const VM_SVC_IP: &str = "10.12.0.40";
pub const VM_IP: &str = "10.128.2.100";

pub fn cluster() -> Cluster {
    let squid_uid = uid(1);
    let squid_b_uid = uid(2);
    let redis_uid = uid(4);
    let proxy_labels = json!({"app": "squid-proxy", "pod-template-hash": "6f9c7b8d4"});
    let squid = pod(&PodSpec {
        ns: "intra-proxy",
        name: "squid-proxy-6f9c7b8d4-x2x7q",
        uid: squid_uid.clone(),
        node: NODE_A,
        ip: SQUID_IP,
        owner: Some(("apps/v1", "ReplicaSet", "squid-proxy-6f9c7b8d4")),
        labels: proxy_labels.clone(),
        containers: vec![
            ("squid", "ubuntu/squid:6.6-24.04_beta", cid(1)),
            ("exporter", "boynux/squid-exporter:v1.13", cid(2)),
        ],
        host_network: false,
        restarted: None,
        host_ip: None,
    });
    let squid_b = pod(&PodSpec {
        ns: "intra-proxy",
        name: "squid-proxy-6f9c7b8d4-z9k2m",
        uid: squid_b_uid.clone(),
        node: NODE_B,
        ip: SQUID_B_IP,
        owner: Some(("apps/v1", "ReplicaSet", "squid-proxy-6f9c7b8d4")),
        labels: proxy_labels,
        containers: vec![("squid", "ubuntu/squid:6.6-24.04_beta", cid(3))],
        host_network: false,
        restarted: None,
        host_ip: None,
    });
    let agent = pod(&PodSpec {
        ns: "kube-system",
        name: "egress-agent-7kqzp",
        uid: uid(3),
        node: NODE_A,
        ip: NODE_A_IP,
        owner: Some(("apps/v1", "DaemonSet", "egress-agent")),
        labels: json!({"app.kubernetes.io/name": "egress-agent", "controller-revision-hash": "5b8c9d7f4", "pod-template-generation": "1"}),
        containers: vec![("agent", "egress-observer/egress-agent:0.1.0", cid(4))],
        host_network: true,
        restarted: None,
        host_ip: None,
    });
    let redis = pod(&PodSpec {
        ns: "data",
        name: "redis-0",
        uid: redis_uid.clone(),
        node: NODE_A,
        ip: REDIS_IP,
        owner: Some(("apps/v1", "StatefulSet", "redis")),
        labels: json!({"app": "redis", "apps.kubernetes.io/pod-index": "0", "controller-revision-hash": "redis-6d4f8b9c7",
                       "statefulset.kubernetes.io/pod-name": "redis-0"}),
        containers: vec![("redis", "redis:7.2", cid(5))],
        host_network: false,
        restarted: None,
        host_ip: None,
    });
    let report = pod(&PodSpec {
        ns: "batch",
        name: "nightly-report-28620000-hx4tq",
        uid: uid(5),
        node: NODE_A,
        ip: REPORT_IP,
        owner: Some(("batch/v1", "Job", "nightly-report-28620000")),
        labels: json!({"batch.kubernetes.io/controller-uid": uid(950), "batch.kubernetes.io/job-name": "nightly-report-28620000",
                       "controller-uid": uid(950), "job-name": "nightly-report-28620000"}),
        containers: vec![("report", "curlimages/curl:8.8.0", cid(6))],
        host_network: false,
        restarted: Some(("report", cid(60))),
        host_ip: None,
    });
    let others = vec![
        service(
            "intra-proxy",
            "squid-proxy-service",
            SQUID_SVC_IP,
            3128,
            Some(json!({"app": "squid-proxy"})),
        ),
        service("data", "redis", REDIS_SVC_IP, 6379, Some(json!({"app": "redis"}))),
        // Selector-less: its EndpointSlice is written by hand and points at the VM.
        service("intra-proxy", "vm-squid", VM_SVC_IP, 3128, None),
        endpoint_slice(
            "intra-proxy",
            "squid-proxy-service-8m2xv",
            "squid-proxy-service",
            3128,
            &[
                (SQUID_IP, Some(("squid-proxy-6f9c7b8d4-x2x7q", squid_uid, NODE_A))),
                (SQUID_B_IP, Some(("squid-proxy-6f9c7b8d4-z9k2m", squid_b_uid, NODE_B))),
            ],
        ),
        endpoint_slice(
            "data",
            "redis-q7f5w",
            "redis",
            6379,
            &[(REDIS_IP, Some(("redis-0", redis_uid, NODE_A)))],
        ),
        endpoint_slice("intra-proxy", "vm-squid-1", "vm-squid", 3128, &[(VM_IP, None)]),
        node(NODE_A, NODE_A_IP, Some(NODE_A_EXTERNAL_IP)),
        node(NODE_B, NODE_B_IP, None),
    ];
    Cluster { squid, squid_b, agent, redis, report, others }
}

impl Cluster {
    pub fn all(&self) -> Vec<Value> {
        let pods = [&self.squid, &self.squid_b, &self.agent, &self.redis, &self.report];
        pods.into_iter().cloned().chain(self.others.iter().cloned()).collect()
    }
}
