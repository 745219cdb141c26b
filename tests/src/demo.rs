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

/// One row of the demo's table.
#[derive(Debug, Clone)]
pub struct DemoRow {
    pub name: &'static str,
    pub dst: SocketAddr,
    pub expected: String,
    /// What the agent said, or why nothing matched (never a bare "no record").
    pub got: String,
    pub ok: bool,
}

/// `verdict[/reason]` of a record.
fn outcome(v: &serde_json::Value) -> String {
    format!(
        "{}{}",
        v["verdict"].as_str().unwrap_or("?"),
        v["reason"].as_str().map(|r| format!("/{r}")).unwrap_or_default()
    )
}

/// Run the demo and return its rows (each says whether it matched).
pub fn run(opts: &DemoOptions) -> anyhow::Result<Vec<DemoRow>> {
    let _kernel = crate::kernel_lock::KernelLock::take()?;
    let t0 = Instant::now();
    println!("== building the lab: client and server namespaces, veth link, fault rules");
    let lab = ConnectLab::new(LabAddrs::default())?;
    println!(
        "   client {} / {}   server {} / {}",
        lab.addrs.client4, lab.addrs.client6, lab.addrs.server4, lab.addrs.server6
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut run = Agent::start(AgentMode::Run { metrics, extra: vec![] })?;
    println!("== egress-agent run: metrics on http://{metrics}/metrics");
    println!("== egress-agent watch (live, from the kernel):");
    let mut watch = Command::new(agent_bin())
        .args(["watch", "-o", "table"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting watch")?;
    std::thread::sleep(Duration::from_millis(1500));

    let scenarios = lab.scenarios();
    std::thread::scope(|sc| {
        for s in &scenarios {
            let lab = &lab;
            sc.spawn(move || lab.drive(s, "lab-client"));
        }
    });
    let mut rows = Vec::new();
    for s in &scenarios {
        let expected = format!(
            "{}{}",
            s.expect_verdict,
            s.expect_reason.map(|r| format!("/{r}")).unwrap_or_default()
        );
        let to_dst = |v: &serde_json::Value| v["dst"].as_str() == Some(&s.dst.to_string());
        let got = match run.wait_for(Duration::from_secs(10), |v| {
            to_dst(v) && (v["verdict"] == s.expect_verdict || s.expect_verdict == "ok")
        }) {
            Ok(v) => outcome(&v),
            // Say what the agent did say about this destination, and what
            // the lab saw of its own fault.
            Err(_) => {
                let seen: Vec<String> =
                    run.records.iter().filter(|v| to_dst(v)).map(outcome).collect();
                let said = if seen.is_empty() {
                    "no record of this destination in 10 s".to_string()
                } else {
                    seen.join(", ")
                };
                let said = match lab.diagnose(s) {
                    Some(why) => format!("{said} ({why})"),
                    None => said,
                };
                format!("{said}; {}", run.health())
            }
        };
        rows.push(DemoRow { name: s.name, dst: s.dst, ok: got == expected, expected, got });
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
    print(&rows);
    println!();
    println!("== /metrics excerpt");
    let text = run.http_get("/metrics")?;
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && [
                "egress_connections_total",
                "egress_tcp_retransmits_total",
                "egress_events_lost_total",
                "egress_program_attached",
                "egress_events_produced_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
    }) {
        println!("   {line}");
    }
    run.stop()?;
    println!();
    println!(
        "{}",
        if rows.iter().all(|r| r.ok) {
            "lab: every verdict matched"
        } else {
            "lab: MISMATCH (see table)"
        }
    );
    Ok(rows)
}

pub fn print(rows: &[DemoRow]) {
    println!("{:<34} {:<26} {:<22} {:<22} MATCH", "SCENARIO", "DESTINATION", "EXPECTED", "AGENT");
    for r in rows {
        let mark = if r.ok { "yes" } else { "NO" };
        if r.expected.len() <= 22 && r.got.len() <= 22 {
            println!(
                "{:<34} {:<26} {:<22} {:<22} {mark}",
                r.name,
                r.dst.to_string(),
                r.expected,
                r.got
            );
        } else {
            // Too long for the columns: each on its own line, whole.
            println!("{:<34} {:<26} {:<45} {mark}", r.name, r.dst.to_string(), "");
            println!("    expected: {}", r.expected);
            println!("    agent:    {}", r.got);
        }
    }
}
