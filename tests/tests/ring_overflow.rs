//! A tiny ring and a stalled reader: events are lost, and every loss is
//! counted, so produced = delivered + lost.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{free_port, metric_sum},
    require_root,
};

#[test]
fn produced_equals_delivered_plus_lost() {
    require_root!();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let stall_ms = 3000;
    let agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec![
            "--ring-bytes".into(),
            "4096".into(),
            "--stall-reader-ms".into(),
            stall_ms.to_string(),
        ],
    })
    .expect("agent");
    let started = Instant::now();
    // Bounded storm on loopback: 600 connections, well inside the stall.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let acceptor = std::thread::spawn(move || {
        for _ in 0..600 {
            if l.accept().is_err() {
                break;
            }
        }
    });
    for _ in 0..600 {
        drop(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect"));
    }
    acceptor.join().expect("acceptor");
    assert!(
        started.elapsed() < Duration::from_millis(stall_ms),
        "storm outlasted the stall; the test proves nothing"
    );

    // Wait for the reader to drain, then the books must balance exactly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (produced, delivered, lost, text) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = agent.http_get("/metrics").expect("scrape");
        let produced = metric_sum(&text, "egress_events_produced_total", &[]);
        let delivered = metric_sum(&text, "egress_events_delivered_total", &[]);
        let lost = metric_sum(&text, "egress_events_lost_total", &[("stage", "ring")]);
        if (produced == delivered + lost
            && started.elapsed() > Duration::from_millis(stall_ms + 500))
            || Instant::now() > deadline
        {
            break (produced, delivered, lost, text);
        }
    };
    eprintln!("produced {produced} delivered {delivered} lost {lost}");
    assert!(
        produced >= 1200.0,
        "600 connections make ≥ 1200 events with every flow an event (--log-flows): connected and closed: {produced}"
    );
    assert!(lost > 0.0, "a 4 KiB ring with a stalled reader must overflow\n{text}");
    assert!(delivered > 0.0);
    assert_eq!(produced, delivered + lost, "produced = delivered + lost\n{text}");
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0);
    assert!(agent.stop().expect("stop"));
}
