//! `cargo xtask lab`: the connect-outcome lab as a demo. Builds the lab,
//! starts the agent (`watch` on the terminal, `run` for metrics), drives every
//! outcome, prints expected vs. observed verdicts and a /metrics excerpt.
use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    Agent, AgentMode,
    agent::{agent_bin, free_port},
    lab::{ConnectLab, LabAddrs},
};

pub struct DemoOptions {
    /// Keep healthy traffic flowing until this much time has passed.
    pub duration: Duration,
}

/// Run the demo; Ok(true) when every verdict matched.
pub fn run(opts: &DemoOptions) -> anyhow::Result<bool> {
    let t0 = Instant::now();
    println!("== building the lab: client and server namespaces, veth link, fault rules");
    let lab = ConnectLab::new(LabAddrs::default())?;
    println!("   client {} / {}   server {} / {}", lab.addrs.client4, lab.addrs.client6, lab.addrs.server4, lab.addrs.server6);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut run = Agent::start(AgentMode::Run { metrics, extra: vec![] })?;
    println!("== egress-agent run: metrics on http://{metrics}/metrics");
    println!("== egress-agent watch (live, from the kernel):");
    let mut watch = Command::new(agent_bin()).args(["watch", "-o", "table"]).stdin(Stdio::null()).stderr(Stdio::null()).spawn().context("starting watch")?;
    std::thread::sleep(Duration::from_millis(1500));

    let scenarios = lab.scenarios();
    std::thread::scope(|sc| {
        for s in &scenarios {
            let lab = &lab;
            sc.spawn(move || lab.drive(s, "lab-client"));
        }
    });
    let mut rows = Vec::new();
    let mut all_ok = true;
    for s in &scenarios {
        let want = format!("{}{}", s.expect_verdict, s.expect_reason.map(|r| format!("/{r}")).unwrap_or_default());
        let got = run
            .wait_for(Duration::from_secs(10), |v| v["dst"].as_str() == Some(&s.dst.to_string()) && (v["verdict"] == s.expect_verdict || s.expect_verdict == "ok"))
            .map(|v| format!("{}{}", v["verdict"].as_str().unwrap_or("?"), v["reason"].as_str().map(|r| format!("/{r}")).unwrap_or_default()))
            .unwrap_or_else(|_| "(no record)".to_string());
        let ok = got == want;
        all_ok &= ok;
        rows.push((s.name, s.dst, want, got, ok));
    }
    while t0.elapsed() < opts.duration {
        let _ = lab.drive(&scenarios[0], "lab-client");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let _ = watch.wait();

    println!();
    println!("== verdicts: expected vs. what the agent said");
    println!("{:<34} {:<26} {:<22} {:<22} MATCH", "SCENARIO", "DESTINATION", "EXPECTED", "AGENT");
    for (name, dst, want, got, ok) in &rows {
        println!("{name:<34} {:<26} {want:<22} {got:<22} {}", dst.to_string(), if *ok { "yes" } else { "NO" });
    }
    println!();
    println!("== /metrics excerpt");
    let text = run.http_get("/metrics")?;
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && ["egress_connections_total", "egress_tcp_retransmits_total", "egress_events_lost_total", "egress_program_attached", "egress_events_produced_total"]
                .iter()
                .any(|m| l.starts_with(m))
    }) {
        println!("   {line}");
    }
    run.stop()?;
    println!();
    println!("{}", if all_ok { "lab: every verdict matched" } else { "lab: MISMATCH (see table)" });
    Ok(all_ok)
}
