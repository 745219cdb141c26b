//! A UDP/53 flood must not starve flow events (issue 18, "fair rings"):
//! one namespace sends DNS queries at full speed toward a resolver address
//! while another makes 1000 concurrent connects to a listener. Every one of
//! the 1000 is reported by the agent with its outcome; the flood's messages
//! that were not captured are counted per kind (`dns_budget`, or the
//! capture ring's `dns` loss), and no flow event is lost.
//!
//! DNS messages go to the capture ring under a per-cgroup token bucket;
//! flow events have their own ring: neither can take the other's room.
//!
//! The resolver address (10.202.0.53) is a neighbour of the flooding
//! namespace with a MAC no one has: the queries leave through the cgroup
//! egress hook like any query and are dropped at the link's other end.
//! Everything is removed on drop.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    require_root,
};

const CONNECTS: usize = 1000;
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 119, 2);
const RESOLVER: &str = "10.202.0.53:53";
/// The flood stops at this, whatever happens.
const FLOOD_MAX: Duration = Duration::from_secs(15);
const FLOOD_MAX_PACKETS: u64 = 20_000_000;
/// The flood runs this long before the connects start, and at least
/// FLOOD_MIN in all.
const FLOOD_LEAD: Duration = Duration::from_secs(1);
const FLOOD_MIN: Duration = Duration::from_secs(4);

/// A query for `flood.test. A`.
fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["flood", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// 1000 non-blocking connects at once to `dst`; once each resolved (or 20 s
/// passed), closed. Returns each socket's local address and what its
/// connect gave (0 or the errno).
fn concurrent_connects(dst: SocketAddrV4) -> Result<Vec<(SocketAddr, i32)>, String> {
    let mut socks = Vec::with_capacity(CONNECTS);
    for i in 0..CONNECTS {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(format!("socket {i}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: a descriptor we just opened and own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*dst.ip()).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: valid sockaddr of its length.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(format!("connect {i}: {err}"));
        }
        socks.push(owned);
    }
    // Wait until every connect resolved: writable (connected) or in error.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending: Vec<usize> = (0..CONNECTS).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd { fd: socks[i].as_raw_fd(), events: libc::POLLOUT, revents: 0 })
            .collect();
        // SAFETY: valid array of pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        pending =
            pending.into_iter().zip(fds).filter(|(_, p)| p.revents == 0).map(|(i, _)| i).collect();
    }
    let mut out = Vec::with_capacity(CONNECTS);
    for s in &socks {
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out pointers of their length.
        unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            )
        };
        // SAFETY: sockaddr_in is plain integers, valid all-zero.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid out pointers of their length.
        unsafe { libc::getsockname(s.as_raw_fd(), (&raw mut sa).cast(), &mut len) };
        let local = SocketAddr::from((
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        ));
        out.push((local, err));
    }
    drop(socks); // every client closes first
    Ok(out)
}

/// With the default DNS budget (200/s, burst 400 a cgroup): the flood is
/// cut in the kernel and counted.
#[test]
fn a_dns_flood_leaves_1000_concurrent_connects_fully_reported() {
    require_root!();
    flood_while_connecting(Budget::Default);
}

/// Without a budget (`--dns-rate 0`) every query is captured: the capture
/// ring takes the whole flood (what it cannot hold is counted as its own
/// loss) and the flow ring is untouched.
#[test]
fn without_a_dns_budget_the_capture_ring_alone_takes_the_flood() {
    require_root!();
    flood_while_connecting(Budget::None);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    Default,
    None,
}

fn flood_while_connecting(budget: Budget) {
    let started = Instant::now();
    // The flooding namespace; its resolver address is a neighbour nobody
    // answers for (a MAC no one has): the queries leave and are dropped by
    // the other end of the link.
    let flood_ns = Netns::new("dnsflood").expect("netns");
    let sink = Netns::new("dnssink").expect("netns");
    let link = Veth::link(&flood_ns, &["10.202.0.1/24"], &sink, &["10.202.0.2/24"]).expect("link");
    flood_ns
        .run(&[
            "ip",
            "neigh",
            "add",
            "10.202.0.53",
            "lladdr",
            "02:00:00:00:00:53",
            "dev",
            &link.a_if,
            "nud",
            "permanent",
        ])
        .expect("neighbour");
    // The connecting namespace and its server.
    let client = Netns::new("dnsconn").expect("netns");
    let server = Netns::new("dnssrv").expect("netns");
    Veth::link(&client, &["198.18.119.1/24"], &server, &["198.18.119.2/24"]).expect("link");
    client.sysctl("net.ipv4.ip_local_port_range", "20000 60000").expect("ports");
    let listener = server
        .within("eo-dns-srv", || TcpListener::bind((SERVER, 8080)))
        .expect("thread")
        .expect("bind");
    // Room for all 1000 at once in the accept queue (std listens with 128).
    // SAFETY: listen() again on our own listening socket only resizes its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s), // closed when the test ends (client first)
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            held.len()
        })
    };

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut extra = ["--kube", "false", "--conntrack", "false"].map(String::from).to_vec();
    if budget == Budget::None {
        extra.extend(["--dns-rate".to_string(), "0".to_string()]);
    }
    let mut agent = Agent::start(AgentMode::Run { metrics, extra }).expect("agent");
    let before = agent.http_get("/metrics").expect("scrape");

    // The flood, from its own namespace, until told to stop (bounded).
    let sent = Arc::new(AtomicU64::new(0));
    let flood_stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (sent, flood_stop) = (sent.clone(), flood_stop.clone());
        flood_ns
            .spawn("eo-dns-flood", move || {
                let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
                let to: SocketAddr = RESOLVER.parse().expect("addr");
                let t0 = Instant::now();
                let mut id = 0u16;
                let mut failed = 0u64;
                while !flood_stop.load(Ordering::Relaxed)
                    && t0.elapsed() < FLOOD_MAX
                    && sent.load(Ordering::Relaxed) < FLOOD_MAX_PACKETS
                {
                    for _ in 0..256 {
                        id = id.wrapping_add(1);
                        if s.send_to(&query(id), to).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed += 1;
                        }
                    }
                }
                (t0.elapsed(), failed)
            })
            .expect("flood thread")
    };
    // The flood is on (a second of it) before the connects start.
    let flood_t0 = Instant::now();
    let deadline = flood_t0 + Duration::from_secs(10);
    while (sent.load(Ordering::Relaxed) < 20_000 || flood_t0.elapsed() < FLOOD_LEAD)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_connects = sent.load(Ordering::Relaxed);
    assert!(at_connects >= 20_000, "the flood did not start: {at_connects} packets");

    let dst = SocketAddrV4::new(SERVER, 8080);
    let t_conn = Instant::now();
    let results = client
        .within("eo-dns-conn", move || concurrent_connects(dst))
        .expect("thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let conn_took = t_conn.elapsed();
    // The closes happen under the flood too; it lasts FLOOD_MIN in all.
    std::thread::sleep(Duration::from_millis(500));
    while flood_t0.elapsed() < FLOOD_MIN && !flood.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_flooding = !flood.is_finished();
    flood_stop.store(true, Ordering::Relaxed);
    let (flood_took, send_errors) = flood.join().expect("join").expect("flood");
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {sent} queries in {flood_took:?} ({:.0}/s, {send_errors} send errors); \
         {CONNECTS} connects resolved in {conn_took:?}",
        sent as f64 / flood_took.as_secs_f64()
    );
    assert!(still_flooding, "the flood ended before the connects did: the test proves nothing");
    let ok = results.iter().filter(|(_, e)| *e == 0).count();
    assert_eq!(ok, CONNECTS, "every connect to the listener succeeds: {results:?}");

    // Every connect reported, with its outcome.
    let want: HashMap<String, i32> = results.iter().map(|(a, e)| (a.to_string(), *e)).collect();
    let dst_s = dst.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: HashMap<String, String> = HashMap::new();
    while got.len() < CONNECTS && Instant::now() < deadline {
        let _ = agent.wait_for_after(agent.records.len(), Duration::from_millis(500), |_| true);
        agent.poll();
        for v in &agent.records {
            if v["dst"].as_str() != Some(dst_s.as_str()) || v["phase"] != "connect" {
                continue;
            }
            if let Some(src) = v["src"].as_str().filter(|s| want.contains_key(*s)) {
                got.entry(src.to_string())
                    .or_insert_with(|| v["verdict"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let mut verdicts: HashMap<&str, usize> = HashMap::new();
    for v in got.values() {
        *verdicts.entry(v.as_str()).or_default() += 1;
    }
    let text = agent.settled_metrics(Duration::from_secs(10)).expect("scrape");
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&text, name, labels) - metric_sum(&before, name, labels)
    };
    let dns_produced = delta("egress_events_produced_total", &[("kind", "dns")]);
    let dns_budget = delta("egress_events_lost_total", &[("stage", "dns_budget")]);
    let dns_ring = delta("egress_events_lost_total", &[("stage", "ring"), ("kind", "dns")]);
    let flow_lost = delta("egress_events_lost_total", &[("kind", "flow")]);
    eprintln!(
        "reported {} of {CONNECTS} {verdicts:?}; dns: captured {dns_produced}, over budget \
         {dns_budget}, ring lost {dns_ring}; flow events lost {flow_lost}; test took {:?}",
        got.len(),
        started.elapsed()
    );
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} connects not reported, e.g. {missing:?}\n{text}",
        CONNECTS - got.len()
    );
    assert!(
        got.values().all(|v| v == "ok" || v == "degraded"),
        "every connect succeeded, so no record may say failed: {verdicts:?}"
    );
    assert_eq!(flow_lost, 0.0, "no flow event lost to the flood\n{text}");
    match budget {
        Budget::Default => {
            assert!(dns_budget > 0.0, "the flood went over its budget and that is counted\n{text}")
        }
        Budget::None => assert_eq!(dns_budget, 0.0, "no budget, nothing cut\n{text}"),
    }
    assert!(
        dns_produced + dns_budget >= sent as f64,
        "every flood query is captured or counted as not captured: {dns_produced} + {dns_budget} < {sent}"
    );
    assert!(
        metric_sum(&text, "egress_events_produced_total", &[("kind", "dns")])
            == metric_sum(&text, "egress_events_delivered_total", &[("kind", "dns")])
                + metric_sum(
                    &text,
                    "egress_events_lost_total",
                    &[("stage", "ring"), ("kind", "dns")]
                ),
        "captured DNS messages: produced = delivered + lost\n{text}"
    );
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0, "{text}");
    assert!(agent.alive(), "{}", agent.stderr_text());
    stop.store(true, Ordering::Relaxed);
    let accepted = acceptor.join().expect("acceptor");
    assert_eq!(accepted, CONNECTS, "the server accepted every connect");
    assert!(agent.stop().expect("stop"));
}
