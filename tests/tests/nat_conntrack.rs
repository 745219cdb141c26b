//! NAT seen through ctnetlink, with real kernel parts: a router namespace
//! does kube-proxy-style DNAT for a fake ClusterIP and MASQUERADE towards an
//! "outside" namespace; the agent's conntrack module, started on the router's
//! namespace path, must say where each flow really went and as whom.
//!
//! ```text
//! client 198.18.1.2 ── 198.18.1.1 router 198.18.2.1 ── 198.18.2.2 outside (listener :8080)
//!                     DNAT 198.19.0.10:80 → 198.18.2.2:8080, MASQUERADE -o outside
//! ```
//! Addresses exist only inside the test's namespaces.
use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use egress_agent::attribution::nat::{FlowKey, NatEntry, NatOptions, NatTable};
use egress_tests::{Netns, Veth, agent::metric_sum, netns::Rule, require_root};

const CLUSTER_IP: &str = "198.19.0.10:80";
const BACKEND: &str = "198.18.2.2:8080";
const ROUTER_OUT: &str = "198.18.2.1";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Connect from inside `ns`; the socket stays in the namespace.
fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    let s = ns
        .within("eo-nat-client", move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .expect("client thread")
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s
}

fn key_of(s: &TcpStream, dst: SocketAddr) -> FlowKey {
    FlowKey { src: s.local_addr().expect("local addr"), dst }
}

/// Poll `lookup` until `pred` holds, at most `within`.
fn wait_for(
    table: &NatTable,
    key: &FlowKey,
    within: Duration,
    pred: impl Fn(&NatEntry) -> bool,
) -> Option<NatEntry> {
    let deadline = Instant::now() + within;
    loop {
        let e = table.lookup(key);
        if e.as_ref().is_some_and(&pred) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Accepts and holds connections until stopped; bounded by `stop` and 60 s.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

fn metrics_text(registry: &prometheus::Registry) -> String {
    let mut buf = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf)
        .expect("encode");
    String::from_utf8(buf).expect("utf8")
}

fn conntrack_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("conntrack-"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn dnat_and_masquerade_through_a_router_namespace() {
    require_root!();
    let client = Netns::new("natc").expect("client ns");
    let router = Netns::new("natr").expect("router ns");
    let outside = Netns::new("nato").expect("outside ns");
    Veth::link(&client, &["198.18.1.2/24"], &router, &["198.18.1.1/24"]).expect("client veth");
    let out = Veth::link(&router, &[&format!("{ROUTER_OUT}/24")], &outside, &["198.18.2.2/24"])
        .expect("outside veth");
    client.run(&["ip", "route", "add", "default", "via", "198.18.1.1"]).expect("client route");
    router.sysctl("net.ipv4.ip_forward", "1").expect("ip_forward");
    let _dnat = Rule::add(
        &router,
        false,
        "nat",
        &[
            "PREROUTING",
            "-d",
            "198.19.0.10/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            BACKEND,
        ],
    )
    .expect("DNAT rule");
    let _masq =
        Rule::add(&router, false, "nat", &["POSTROUTING", "-o", &out.a_if, "-j", "MASQUERADE"])
            .expect("MASQUERADE rule");

    let listener = outside
        .within("eo-nat-server", || TcpListener::bind(BACKEND))
        .expect("server thread")
        .expect("bind backend");
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(listener, stop.clone());

    // A flow opened before the table starts: known from the initial dump.
    let early = connect(&client, sa(CLUSTER_IP));
    let early_key = key_of(&early, sa(CLUSTER_IP));

    let registry = prometheus::Registry::new();
    let router_path = format!("/run/netns/{}", router.name);
    let opts = NatOptions {
        netns: vec![PathBuf::from(&router_path)],
        max_entries: 1024,
        destroyed_retention: Duration::from_secs(30),
        snat_watch: Vec::new(),
    };
    let threads_before = conntrack_threads();
    let table = NatTable::start(opts, &registry).expect("conntrack in the router namespace");
    assert!(table.is_enabled());

    let e =
        table.lookup(&early_key).expect("pre-existing flow known from the dump right after start");
    assert_eq!(e.dnat_to(), Some(sa(BACKEND)), "{e:?}");
    assert_eq!(
        e.snat_to().map(|a| a.ip()),
        Some(ROUTER_OUT.parse::<IpAddr>().expect("ip")),
        "{e:?}"
    );
    assert_eq!(e.netns, router_path);
    assert!(!e.destroyed);

    // A flow opened after start: known from a NEW event.
    let late = connect(&client, sa(CLUSTER_IP));
    let late_key = key_of(&late, sa(CLUSTER_IP));
    let e = wait_for(&table, &late_key, Duration::from_secs(5), |_| true)
        .expect("NEW event within 5 s");
    eprintln!("late flow: {e:?}");
    assert_eq!(e.dnat_to(), Some(sa(BACKEND)), "{e:?}");
    let snat = e.snat_to().expect("masqueraded");
    assert_eq!(snat.ip(), ROUTER_OUT.parse::<IpAddr>().expect("ip"));
    assert_ne!(snat.port(), 0);
    assert!(!e.destroyed);

    // Straight to the backend: no DNAT, only MASQUERADE.
    let direct = connect(&client, sa(BACKEND));
    let direct_key = key_of(&direct, sa(BACKEND));
    let e = wait_for(&table, &direct_key, Duration::from_secs(5), |_| true)
        .expect("NEW event for the direct flow");
    assert_eq!(e.dnat_to(), None, "{e:?}");
    assert_eq!(e.snat_to().map(|a| a.ip()), Some(ROUTER_OUT.parse::<IpAddr>().expect("ip")));

    // An unknown tuple.
    assert_eq!(table.lookup(&FlowKey { src: sa("198.18.1.2:1"), dst: sa(CLUSTER_IP) }), None);

    // DESTROY: the router's outside link goes down, and the kernel kills
    // every conntrack entry masqueraded through it (a DESTROY event each for
    // entries created while the agent listened; the early one is found gone
    // by the agent's periodic check, ≤ 5 s).
    drop((early, late, direct));
    router.run(&["ip", "link", "set", &out.a_if, "down"]).expect("link down");
    for (name, key) in [("early", early_key), ("late", late_key), ("direct", direct_key)] {
        let e = wait_for(&table, &key, Duration::from_secs(10), |e| e.destroyed)
            .unwrap_or_else(|| panic!("{name}: entry vanished instead of being kept as destroyed"));
        assert!(e.destroyed, "{name}: no DESTROY within 10 s: {e:?}\n{}", metrics_text(&registry));
    }
    // Kept for late lookups, translation intact.
    let e = table.lookup(&late_key).expect("kept for the retention period");
    assert_eq!(e.dnat_to(), Some(sa(BACKEND)));

    let text = metrics_text(&registry);
    let ns = [("netns", router_path.as_str())];
    let events =
        |ty: &str| metric_sum(&text, "egress_conntrack_events_total", &[ns[0], ("type", ty)]);
    assert!(events("dump") >= 1.0, "the early flow came from the dump\n{text}");
    assert!(events("new") >= 2.0, "late + direct\n{text}");
    // The early flow predates the subscription: with nf_conntrack_events=2
    // it sends no DESTROY and is retired by the agent's GET check instead.
    assert!(events("destroy") >= 2.0, "late + direct\n{text}");
    assert_eq!(metric_sum(&text, "egress_conntrack_decode_errors_total", &[]), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_conntrack_lost_total", &ns), 0.0, "{text}");
    assert!(metric_sum(&text, "egress_conntrack_entries", &[]) >= 3.0, "{text}");
    for m in ["egress_conntrack_insert_failed_total", "egress_conntrack_drop_total"] {
        assert!(text.contains(&format!("{m}{{netns=\"{router_path}\"}}")), "{m} exported\n{text}");
    }

    // Dropping the last handle stops the worker thread.
    drop(table);
    let deadline = Instant::now() + Duration::from_secs(5);
    while conntrack_threads() > threads_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        conntrack_threads(),
        threads_before,
        "worker thread still running after the table was dropped"
    );

    stop.store(true, Ordering::Relaxed);
    server.join().expect("server thread");
}
