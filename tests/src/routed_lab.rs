//! A routed gateway with SNAT (issue 20 part 3): a transparent `protocol:
//! routed` hop in network namespaces, for `cargo xtask lab` and
//! `tests/tests/routed_gateway.rs`.
//!
//! ```text
//! client 198.18.120.2 ── 198.18.120.1 gateway 198.18.121.1 ── 198.18.121.2 origin
//!                                 SNAT to 198.18.121.10 (egress IP)   (+ 198.18.123.2)
//! ```
//! The hop `egw` serves 198.18.121.0/24; 198.18.123.2 is reached through the
//! same gateway but is not a served destination. Faults are deterministic
//! iptables rules in the origin: port 8081 REJECTed with a reset, port 8082
//! DROPped. One agent on the host sees the client's sockets (its probes see
//! every namespace) and follows conntrack in the gateway's namespace, as an
//! agent on the gateway machine would. Everything goes with the namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;

use crate::{
    Agent, AgentMode, Netns, Veth, agent::free_port, demo::DemoRow, image::TempDir, netns::Rule,
};

pub const HOP: &str = "egw";
pub const CLIENT: &str = "198.18.120.2";
const GW_IN: &str = "198.18.120.1";
const GW_OUT: &str = "198.18.121.1";
pub const EGRESS_IP: &str = "198.18.121.10";
pub const ORIGIN: &str = "198.18.121.2";
pub const UNSERVED: &str = "198.18.123.2";
/// How long a client-vantage record may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// An unanswered entry ends after the (lowered) SYN_SENT timeout and the
/// kernel's next conntrack garbage collection (up to a minute apart).
pub const GATEWAY_WAIT: Duration = Duration::from_secs(150);

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("lab address"), port)
}

/// The namespaces, the origin's listener and the agent's config file.
pub struct RoutedLab {
    pub client: Netns,
    pub gateway: Netns,
    pub origin: Netns,
    stop: Arc<AtomicBool>,
    config: TempDir,
}

impl RoutedLab {
    #[allow(
        clippy::mem_forget,
        reason = "the rules live in the lab's own namespaces and go with them"
    )]
    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::new("rgc")?;
        let gateway = Netns::new("rgw")?;
        let origin = Netns::new("rgo")?;
        Veth::link(&client, &[&format!("{CLIENT}/24")], &gateway, &[&format!("{GW_IN}/24")])?;
        let out = Veth::link(
            &gateway,
            &[&format!("{GW_OUT}/24"), &format!("{EGRESS_IP}/24")],
            &origin,
            &[&format!("{ORIGIN}/24")],
        )?;
        origin.run(&["ip", "addr", "add", &format!("{UNSERVED}/32"), "dev", &out.b_if])?;
        client.run(&["ip", "route", "add", "default", "via", GW_IN])?;
        gateway.run(&["ip", "route", "add", &format!("{UNSERVED}/32"), "via", ORIGIN])?;
        gateway.sysctl("net.ipv4.ip_forward", "1")?;
        // The NAT instance: everything leaving towards the origin side is SNATed.
        std::mem::forget(Rule::add(
            &gateway,
            false,
            "nat",
            &["POSTROUTING", "-o", &out.a_if, "-j", "SNAT", "--to-source", EGRESS_IP],
        )?);
        // Short conntrack timeouts: an entry's end (when it is judged) comes in seconds.
        for (k, v) in [("syn_sent", "3"), ("time_wait", "1"), ("close", "1"), ("fin_wait", "2")] {
            gateway.sysctl(&format!("net.netfilter.nf_conntrack_tcp_timeout_{k}"), v)?;
        }
        std::mem::forget(Rule::add(
            &origin,
            false,
            "filter",
            &[
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                "8081",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
        )?);
        std::mem::forget(Rule::add(
            &origin,
            false,
            "filter",
            &["INPUT", "-p", "tcp", "--dport", "8082", "-j", "DROP"],
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        origin.spawn("eo-routed-origin", move || -> anyhow::Result<()> {
            let l = TcpListener::bind(("0.0.0.0", 8080))?;
            l.set_nonblocking(true)?;
            let _ = tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        let _ = s.write_all(b"ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5)).context("origin listening")?;
        let config = TempDir::new("routed-gw")?;
        std::fs::write(
            config.path().join("agent.yaml"),
            format!(
                "version: 1\nchain:\n  hops:\n    - name: {HOP}\n      protocol: routed\n      match:\n        destinations: ['198.18.121.0/24']\n        egress_ips: ['{EGRESS_IP}']\n"
            ),
        )?;
        Ok(Self { client, gateway, origin, stop, config })
    }

    /// The agent's configuration file.
    pub fn config(&self) -> PathBuf {
        self.config.path().join("agent.yaml")
    }

    /// A `run` agent with the lab's config, following the gateway's conntrack.
    pub fn agent(&self) -> anyhow::Result<Agent> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let extra = [
            "--config",
            &self.config().display().to_string(),
            "--kube",
            "false",
            "--conntrack-netns",
            &format!("/run/netns/{}", self.gateway.name),
        ]
        .map(String::from)
        .to_vec();
        Agent::start(AgentMode::Run { metrics, extra })
    }

    /// Connect from the client namespace (3 s bound); on success read the
    /// origin's answer and close. The local address, or the error kind.
    pub fn connect(
        &self,
        to: SocketAddr,
    ) -> anyhow::Result<Result<SocketAddr, std::io::ErrorKind>> {
        self.client.within("eo-routed-cli", move || {
            let mut s =
                TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.kind())?;
            let local = s.local_addr().map_err(|e| e.kind())?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            Ok(local)
        })
    }
}

impl Drop for RoutedLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn is(v: &Value, field: &str, want: &str) -> bool {
    v[field].as_str() == Some(want)
}

/// `verdict[/reason] at HOP` of a record.
fn said(v: &Value) -> String {
    let mut s = v["verdict"].as_str().unwrap_or("?").to_string();
    if let Some(r) = v["reason"].as_str() {
        s += &format!("/{r}");
    }
    if let Some(h) =
        v["failed_hop"].as_str().or_else(|| v["hop"].as_str().filter(|h| *h == "direct"))
    {
        s += &format!(" at {h}");
    }
    s
}

/// The lab's table: each case's client record, and the gateway's record of
/// the forwarded leg where there is one.
pub fn run() -> anyhow::Result<Vec<DemoRow>> {
    let _kernel = crate::kernel_lock::KernelLock::take()?;
    let lab = RoutedLab::new()?;
    let mut agent = lab.agent()?;
    let cases: [(&'static str, SocketAddr, &str, Option<&str>); 4] = [
        ("routed: healthy", sa(ORIGIN, 8080), "ok", Some("ok")),
        (
            "routed: origin refused",
            sa(ORIGIN, 8081),
            "failed/refused at egw",
            Some("failed/refused at internet"),
        ),
        (
            "routed: origin drops",
            sa(ORIGIN, 8082),
            "failed/timeout at egw",
            Some("failed/timeout at internet"),
        ),
        ("routed: unserved destination", sa(UNSERVED, 8080), "failed/bypass at direct", None),
    ];
    for (_, dst, ..) in &cases {
        let _ = lab.connect(*dst)?;
    }
    let t0 = Instant::now();
    let mut rows = Vec::new();
    for (name, dst, client_expect, gw_expect) in cases {
        let d = dst.to_string();
        let client = agent
            .wait_for(WAIT, |v| {
                is(v, "dst", &d)
                    && v["leg"].is_string()
                    && v["src"].as_str().is_some_and(|s| s.starts_with(CLIENT))
                    && !is(v, "vantage", "gateway")
            })
            .map_or_else(|_| "no client record".to_string(), |v| said(&v));
        let gateway = match gw_expect {
            Some(_) => {
                let left = GATEWAY_WAIT.saturating_sub(t0.elapsed());
                agent
                    .wait_for(left, |v| is(v, "dst", &d) && is(v, "vantage", "gateway"))
                    .map_or_else(|_| "no gateway record".to_string(), |v| said(&v))
            }
            None => {
                agent.poll();
                let any =
                    agent.records.iter().any(|v| is(v, "dst", &d) && is(v, "vantage", "gateway"));
                if any { "a gateway record".to_string() } else { "none".to_string() }
            }
        };
        let expected = format!("{client_expect} | gw {}", gw_expect.unwrap_or("none"));
        let got = format!("{client} | gw {gateway}");
        rows.push(DemoRow { name, dst, ok: got == expected, expected, got });
    }
    agent.stop()?;
    Ok(rows)
}
