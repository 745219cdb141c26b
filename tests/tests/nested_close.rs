//! A state change the kernel traces from a softirq while the same program
//! runs in a task on that CPU is skipped by the kernel (a tracing program is
//! never run nested in itself on one CPU). The agent must not lose the flow:
//! a later hook on the same socket takes the skipped close up (the error
//! report after it, or the socket's destruction), and every skip is
//! exported.
//!
//! The case that made the lab miss rows: a namespace with
//! `tcp_syn_retries=1` and its SYNs dropped, so the kernel's retransmit
//! timer (a softirq) closes each connect about 3 s in, while a loopback
//! connect storm on the host keeps the program busy in tasks. Every one of
//! the blackholed connects must have its record (connect, failed, timeout,
//! with its source port), whatever the number of skips.
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode, Netns,
    agent::{free_port, metric_sum},
    require_root,
    traffic::LoopbackStorm,
};

const CONNECTS: usize = 400;
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);

/// A non-blocking connect from LOCAL to BLACKHOLE:`port`, left to the kernel.
fn connect_nonblocking(port: u16) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(LOCAL, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(BLACKHOLE, port);
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(owned)
    }
}

#[test]
fn connects_closed_by_the_kernel_during_a_storm_all_have_records() {
    require_root!();
    let ns = Netns::new("nested").expect("netns");
    for addr in [LOCAL, BLACKHOLE] {
        ns.run(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"]).expect("address");
    }
    ns.sysctl("net.ipv4.tcp_syn_retries", "1").expect("sysctl");
    let target = BLACKHOLE.to_string();
    ns.run(&["iptables", "-A", "INPUT", "-d", &target, "-p", "tcp", "--syn", "-j", "DROP"])
        .expect("drop rule");

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut agent = Agent::start(AgentMode::Run { metrics, extra: vec![] }).expect("agent");

    // The storm: loopback connects on the host, bounded in count and time.
    let storm = LoopbackStorm::start(300_000, Duration::from_secs(20)).expect("storm");
    std::thread::sleep(Duration::from_millis(500));

    // The blackholed connects, in the namespace; the kernel gives each up
    // after its one SYN retry (~3 s), from its retransmit timer.
    let sockets = ns
        .within("eo-nested", || {
            // Spread over 2 s, so that the kernel gives them up one timer
            // run at a time: each one another chance to land nested.
            (0..CONNECTS)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(5));
                    connect_nonblocking(9000 + (i % 50) as u16)
                })
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("thread")
        .expect("connects");
    let ports: Vec<u16> = sockets
        .iter()
        .filter_map(|fd| {
            // SAFETY: sockaddr_in is plain integers, valid all-zero.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: a valid descriptor and a buffer of `len` bytes.
            let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) };
            (r == 0).then(|| u16::from_be(sa.sin_port))
        })
        .collect();
    assert_eq!(ports.len(), CONNECTS, "every connect has its source port");
    std::thread::sleep(Duration::from_secs(5));
    let made = storm.stop();
    drop(sockets);

    // Every blackholed connect's record, by its source port.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mine = |v: &serde_json::Value| {
        v["record"] == "flow" && v["dst"].as_str().is_some_and(|d| d.starts_with(&target))
    };
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        agent.poll();
        seen = agent.records.iter().filter(|v| mine(v)).cloned().collect::<Vec<_>>();
        if seen.len() >= CONNECTS {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = agent.http_get("/metrics").expect("metrics");
    let skipped =
        |p: &str| metric_sum(&text, "egress_program_runs_skipped_total", &[("program", p)]);
    eprintln!(
        "storm: {} loopback connects; {} of {CONNECTS} blackholed connects reported; runs \
         skipped: {}; taken up later {}, at destroy {}; {}",
        made,
        seen.len(),
        skipped("inet_sock_set_state_btf") + skipped("inet_sock_set_state"),
        metric_sum(&text, "egress_kernel_nested_recovered_total", &[]),
        metric_sum(&text, "egress_kernel_destroy_recovered_total", &[]),
        agent.health(),
    );
    let missing: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| !seen.iter().any(|v| v["src"].as_str() == Some(&format!("{LOCAL}:{p}"))))
        .collect();
    assert!(
        missing.is_empty(),
        "no record of {} connects, source ports {missing:?}",
        missing.len()
    );
    for v in &seen {
        assert_eq!(
            (v["phase"].as_str(), v["verdict"].as_str(), v["reason"].as_str()),
            (Some("connect"), Some("failed"), Some("timeout")),
            "{v}"
        );
    }
}
