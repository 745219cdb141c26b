//! SIGTERM under a flood: the agent detaches its programs first, so the last
//! drain is bounded; it exits within `--shutdown-grace`, and what was still
//! open goes out as records with verdict `unknown` (here an unanswered DNS
//! lookup) instead of vanishing.
use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use egress_tests::{Agent, AgentMode, agent::free_port, require_root};

/// A DNS query (RD set) for `name`, type `qtype`, class IN.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

#[test]
fn sigterm_under_a_flood_stops_within_the_grace_and_flushes() {
    require_root!();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let grace = Duration::from_secs(5);
    let mut agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec!["--shutdown-grace".into(), "5s".into(), "--ring-bytes".into(), "65536".into()],
    })
    .expect("agent");

    // A resolver that never answers, on an address of its own.
    let resolver = UdpSocket::bind("127.0.0.93:53").expect("bind a silent resolver");
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");

    // The flood: loopback connects as fast as two threads go, bounded in
    // count and time. What counts is the attempts (each one is a SYN the
    // programs see): on a busy two-core machine the accept queue can
    // overflow and drop SYNs, so an attempt gives up after 200 ms rather
    // than sitting out the 1 s SYN retransmit, and two threads accept.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let (tried, made) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acceptors: Vec<_> = (0..2)
        .map(|_| {
            let (stop, l) = (stop.clone(), l.try_clone().expect("clone listener"));
            // Blocking accepts; the last connects below wake them to see `stop`.
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if l.accept().is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, tried, made) = (stop.clone(), tried.clone(), made.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed)
                    && tried.load(Ordering::Relaxed) < 200_000
                    && t0.elapsed() < Duration::from_secs(30)
                {
                    tried.fetch_add(1, Ordering::Relaxed);
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // At least 1.5 s of flood and 5000 attempts (bounded: 10 s), so that a
    // slow start on a busy machine still ends in a flood.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500)
        || (tried.load(Ordering::Relaxed) < 5_000 && t0.elapsed() < Duration::from_secs(10))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The lookup still open when the stop comes.
    client
        .send_to(&dns_query(0x5d5d, "never-answered.shutdown.test", 1), "127.0.0.93:53")
        .expect("send query");
    std::thread::sleep(Duration::from_millis(300));
    let (before, made_before) = (tried.load(Ordering::Relaxed), made.load(Ordering::Relaxed));
    let (ok, took) = agent.terminate(grace + Duration::from_secs(3)).expect("stop");
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flooder");
    }
    for _ in &acceptors {
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
    }
    for a in acceptors {
        a.join().expect("acceptor");
    }
    drop(resolver);
    let after = tried.load(Ordering::Relaxed);
    eprintln!(
        "flood: {before} connects tried before SIGTERM ({made_before} established), \
         {after} in all; stop took {took:?}"
    );
    assert!(before > 1_000, "a flood up to the stop, or the test proves nothing");
    assert!(ok, "clean exit within the grace; stderr:\n{}", agent.stderr_text());
    assert!(took < grace, "stop took {took:?}, over the {grace:?} grace");
    assert!(
        agent.stderr_text().contains("programs detached"),
        "the programs go first; stderr:\n{}",
        agent.stderr_text()
    );
    let lookup = agent
        .records
        .iter()
        .find(|v| v["record"] == "dns" && v["name"] == "never-answered.shutdown.test")
        .unwrap_or_else(|| {
            panic!("no record of the open lookup; stderr:\n{}", agent.stderr_text())
        });
    assert_eq!(
        (lookup["rcode"].as_str(), lookup["verdict"].as_str()),
        (Some("pending"), Some("unknown"))
    );
}
