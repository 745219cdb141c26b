//! `explain --assemble`'s product path without a kernel: the hop's node is
//! found through the Kubernetes API — genuine Kubernetes JSON (Service,
//! EndpointSlice, Pod, Node as `kubectl get -o json` shows them) served over
//! HTTP by the fake apiserver (tests/src/fake_apiserver) — and the VM hop's
//! agent from its configured address; both agents are real peer API servers
//! (mutual TLS on loopback, 127.0.0.1 and 127.0.0.2 standing for two
//! machines) fed through the local API's history. Needs no root.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use egress_agent::{
    api::{
        peer::{self, DEFAULT_SERVER_NAME, tls::PeerTlsFiles},
        server::{ApiHandle, ApiOptions, start as start_api},
        wire::Status,
    },
    assembly::{Link, discover::Directory, fetch::PeerClient, walk::walk},
    config::Config,
    records::{ChainRecord, FlowRecord, LegSummary, Reason, Record, Verdict},
};
use egress_tests::fake_apiserver::{FakeApiServer, objects};
use serde_json::json;
use tokio::sync::watch;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn tls() -> PeerTlsFiles {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../egress-agent/src/api/peer/testdata");
    PeerTlsFiles { cert: d.join("peer.crt"), key: d.join("peer.key"), ca: d.join("ca.crt") }
}

fn status() -> Status {
    Status {
        version: "t".into(),
        pid: 1,
        started: String::new(),
        attached: "0/0".into(),
        history: 0,
        history_capacity: 100,
    }
}

/// A peer API server on `ip` (port `port`, 0: any) answering from `records`;
/// returns its address.
async fn agent(
    ip: &str,
    port: u16,
    node: &str,
    records: Vec<Record>,
    shutdown: watch::Receiver<bool>,
) -> (SocketAddr, ApiHandle) {
    let sock = std::env::temp_dir().join(format!("eo-asm-{}-{node}.sock", std::process::id()));
    let mut api = start_api(
        ApiOptions {
            path: sock,
            history: 100,
            status: status(),
            limits: egress_agent::api::server::ApiLimits::default(),
        },
        &prometheus::Registry::new(),
        shutdown.clone(),
    )
    .expect("api");
    let n = records.len();
    for r in records {
        api.publish(r);
    }
    api.flush();
    let history = api.history();
    for _ in 0..200 {
        if history.with(|h| h.count()) == Some(n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let l = tokio::net::TcpListener::bind((ip, port)).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let config = peer::tls::server_config(&tls()).expect("tls");
    peer::start(l, config, history, node.into(), &prometheus::Registry::new(), shutdown)
        .expect("peer");
    (addr, api)
}

/// A hop machine's records: the accepted connection `peer -> local`, its
/// upstream leg `up_src -> up_dst` to `next`, and the chain joining them.
fn hop(
    hop: &str,
    next: &str,
    link: (&str, &str),
    up: (&str, &str),
    v: (Verdict, Option<Reason>, Option<&str>),
    up_v: (Verdict, Option<Reason>, Option<u16>),
) -> Vec<Record> {
    let inbound = FlowRecord {
        flow_id: format!("{hop}-in"),
        leg: Some(format!("{}->{hop}", if hop == "gke-squid" { "client" } else { "gke-squid" })),
        hop: Some(hop.into()),
        vantage: Some("hop".into()),
        src: Some(a(link.0)),
        dst: Some(a(link.1)),
        dst_actual: Some(a(link.1)),
        chain_id: Some(format!("{hop}-c")),
        verdict: v.0,
        reason: v.1,
        failed_hop: v.2.map(str::to_string),
        ..FlowRecord::default()
    };
    let upstream = FlowRecord {
        flow_id: format!("{hop}-up"),
        leg: Some(format!("{hop}->{next}")),
        hop: Some(next.into()),
        src: Some(a(up.0)),
        dst: Some(a(up.1)),
        verdict: up_v.0,
        reason: up_v.1,
        proxy_status: up_v.2,
        ..FlowRecord::default()
    };
    let legs = [&inbound, &upstream]
        .iter()
        .map(|f| LegSummary {
            flow_id: f.flow_id.clone(),
            leg: f.leg.clone().unwrap_or_default(),
            ..LegSummary::default()
        })
        .collect();
    let chain = ChainRecord {
        chain_id: format!("{hop}-c"),
        legs,
        verdict: inbound.verdict,
        failed_hop: inbound.failed_hop.clone(),
        reason: inbound.reason,
        vantage: Some("hop".into()),
        ..ChainRecord::default()
    };
    vec![Record::Flow(inbound), Record::Flow(upstream), Record::Chain(chain)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_hop_is_found_through_kubernetes_and_the_vm_through_its_address() {
    let (_stop, shutdown) = watch::channel(false);
    // Hop 1 on "node-b" (127.0.0.1), hop 2 the "VM" (127.0.0.2).
    let client_link = ("10.0.1.10:43512", "10.0.2.10:3128");
    let up1 = ("10.0.2.10:50001", "10.128.2.100:3128");
    let (hop1, _h1) = agent(
        "127.0.0.1",
        0,
        "node-b",
        hop(
            "gke-squid",
            "gce-proxy",
            client_link,
            up1,
            (Verdict::Failed, Some(Reason::ProxyUpstreamError), Some("gce-proxy")),
            (Verdict::Failed, Some(Reason::ProxyUpstreamError), Some(503)),
        ),
        shutdown.clone(),
    )
    .await;
    let (vm, _h2) = agent(
        "127.0.0.2",
        0,
        "instance-proxy",
        hop(
            "gce-proxy",
            "internet",
            up1,
            ("10.128.2.100:51001", "198.19.1.11:443"),
            (Verdict::Failed, Some(Reason::Refused), Some("internet")),
            (Verdict::Failed, Some(Reason::Refused), None),
        ),
        shutdown.clone(),
    )
    .await;
    // The cluster: the proxy Service, its EndpointSlice (one endpoint with
    // nodeName, one with only its pod), the pods, both nodes.
    let mut slice = objects::endpoint_slice(
        "intra-proxy",
        "squid-proxy-abcde",
        "squid-proxy",
        3128,
        &[
            ("10.0.2.10", Some(("squid-0", objects::uid(1), "node-b"))),
            ("10.0.3.10", Some(("squid-1", objects::uid(2), "node-c"))),
        ],
    );
    slice["endpoints"][1].as_object_mut().expect("endpoint").remove("nodeName");
    let api = FakeApiServer::with([
        objects::service(
            "intra-proxy",
            "squid-proxy",
            "10.96.0.10",
            3128,
            Some(json!({"app": "squid"})),
        ),
        slice,
        objects::pod(&objects::PodSpec {
            ns: "intra-proxy",
            name: "squid-0",
            uid: objects::uid(1),
            node: "node-b",
            ip: "10.0.2.10",
            ..Default::default()
        }),
        objects::pod(&objects::PodSpec {
            ns: "intra-proxy",
            name: "squid-1",
            uid: objects::uid(2),
            node: "node-c",
            ip: "10.0.3.10",
            host_ip: Some("127.0.0.3"),
            ..Default::default()
        }),
        objects::node("node-b", "127.0.0.1", None),
        objects::node("node-c", "127.0.0.3", None),
    ]);
    let kubeconfig = egress_tests::fake_apiserver::Kubeconfig::write(api.addr);
    let config = Config::from_yaml(&format!(
        "version: 1\nchain:\n  hops:\n    - name: gke-squid\n      match:\n        service: {{namespace: intra-proxy, name: squid-proxy, port: 3128}}\n    - name: gce-proxy\n      agents: ['{vm}']\n      match:\n        address: 10.128.2.100:3128\n"
    ))
    .expect("config");
    let kube_config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig.0).expect("kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube config");
    let dir = Directory {
        chain: config.chain,
        kube: Some(kube::Client::try_from(kube_config).expect("client")),
        kube_error: None,
        peer_port: hop1.port(),
        client: PeerClient::new(&tls(), DEFAULT_SERVER_NAME, Duration::from_secs(5))
            .expect("client"),
    };
    // Endpoint with nodeName → node-b's InternalIP; endpoint with only its pod → the pod's node.
    let l1 = Link { peer: a(client_link.0), local: a(client_link.1) };
    let places = dir.places("gke-squid", &l1).await.expect("places");
    assert_eq!(
        places.iter().map(|p| (p.what.as_str(), p.addr.clone())).collect::<Vec<_>>(),
        [("node node-b", hop1.to_string())]
    );
    let l3 = Link { peer: a(client_link.0), local: a("10.0.3.10:3128") };
    let places = dir.places("gke-squid", &l3).await.expect("places");
    assert_eq!(places[0].what, "node node-c");
    assert_eq!(places[0].addr, format!("127.0.0.3:{}", hop1.port()));
    let reqs = api.requests().join("\n");
    for want in [
        "/apis/discovery.k8s.io/v1/namespaces/intra-proxy/endpointslices?labelSelector=kubernetes.io/service-name=squid-proxy",
        "/api/v1/namespaces/intra-proxy/pods?fieldSelector=metadata.name=squid-1",
        "/api/v1/nodes?fieldSelector=metadata.name=node-c",
    ] {
        assert!(reqs.contains(want), "no {want} in:\n{reqs}");
    }
    // The whole walk: client (this node) → node-b (kube) → the VM (configured).
    let client = FlowRecord {
        flow_id: "c-1".into(),
        leg: Some("client->gke-squid".into()),
        hop: Some("gke-squid".into()),
        vantage: Some("client".into()),
        src: Some(a(client_link.0)),
        dst: Some(a("10.96.0.10:3128")),
        dst_actual: Some(a(client_link.1)),
        verdict: Verdict::Failed,
        reason: Some(Reason::ProxyUpstreamError),
        failed_hop: Some("gce-proxy".into()),
        proxy_status: Some(503),
        ..FlowRecord::default()
    };
    let w = walk(&client, "local", &dir).await;
    assert_eq!(
        (w.verdict, w.failed_hop.as_deref(), w.reason),
        (Verdict::Failed, Some("internet"), Some(Reason::Refused)),
        "{w:#?}"
    );
    assert_eq!(w.decided_by.as_deref(), Some("hop at gce-proxy (instance-proxy)"));
    let agents: Vec<&str> = w.legs.iter().map(|l| l.agent.as_str()).collect();
    assert_eq!(agents, ["local", "node-b", "node-b", "instance-proxy", "instance-proxy"]);
    assert!(w.notes.is_empty(), "{:?}", w.notes);
    // The VM's agent down: what is known stands, and the note names it.
    let mut down = dir;
    down.chain.hops[1].agents = vec![format!("127.0.0.2:{}", vm.port() + 1)];
    let w = walk(&client, "local", &down).await;
    assert_eq!((w.failed_hop.as_deref(), w.views.len()), (Some("gce-proxy"), 2));
    assert!(w.notes[0].starts_with("gce-proxy: agent configured at 127.0.0.2:"), "{:?}", w.notes);
}
