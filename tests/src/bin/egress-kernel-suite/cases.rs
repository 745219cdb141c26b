//! The tests, in order; each reports one result marker.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egress_tests::{Agent, AgentMode, agent::agent_bin};
use serde_json::Value;

use crate::{
    MARK, Outcome,
    net::{self, Netem, Rule},
    report,
};

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let r = kernel_release();
    let mut it = r.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn outcome(r: anyhow::Result<String>) -> Outcome {
    match r {
        Ok(d) => Outcome::Pass(d),
        Err(e) => Outcome::Fail(format!("{e:#}")),
    }
}

/// Run every test; true when one failed.
pub fn run_all() -> bool {
    let mut failed = false;
    let mut note = |test: &str, o: Outcome| {
        failed |= matches!(o, Outcome::Fail(_));
        report(test, &o);
    };
    let (programs, ct_offsets) = match check() {
        Ok((programs, ct_offsets)) => {
            for (test, o) in judge_programs(&programs) {
                note(test, o);
            }
            (programs, ct_offsets)
        }
        Err(e) => {
            note("check", Outcome::Fail(format!("{e:#}")));
            (Vec::new(), None)
        }
    };
    // NAT at debug: the agent logs each kprobe/ctnetlink comparison.
    let args = [
        "--kube",
        "false",
        "--conntrack",
        "true",
        "--log",
        "info,egress_agent::attribution::nat=debug",
    ];
    let mut agent =
        match Agent::start(AgentMode::Watch(args.iter().map(|a| a.to_string()).collect())) {
            Ok(a) => a,
            Err(e) => {
                note("agent_watch", Outcome::Fail(format!("{e:#}")));
                return true;
            }
        };
    note("connect_ok", outcome(connect_ok(&mut agent, "127.0.0.1:0")));
    note("connect_refused", outcome(connect_refused(&mut agent, "127.0.0.1:0")));
    note("connect_timeout", outcome(connect_timeout(&mut agent)));
    note("icmp_unreachable", outcome(icmp_unreachable(&mut agent)));
    note("syn_retransmit", outcome(syn_retransmit(&mut agent)));
    note(
        "netem_retransmit",
        match netem_retransmit(&mut agent) {
            Ok(Some(d)) => Outcome::Pass(d),
            Ok(None) => Outcome::Skip("no netem qdisc in this kernel (CONFIG_NET_SCH_NETEM); syn_retransmit covers retransmits".into()),
            Err(e) => Outcome::Fail(format!("{e:#}")),
        },
    );
    note(
        "ipv6",
        outcome(
            connect_ok(&mut agent, "[::1]:0")
                .and_then(|a| Ok(format!("{a}; {}", connect_refused(&mut agent, "[::1]:0")?))),
        ),
    );
    note("nat_ctnetlink", outcome(nat_ctnetlink(&mut agent)));
    note("module_btf", module_btf(&programs, ct_offsets.as_deref()));
    note(
        "nat_kprobe",
        match kprobe_status(&programs) {
            Err(why) => Outcome::Skip(why),
            Ok(()) => outcome(nat_kprobe(&mut agent).map(|d| {
                format!("{d}; {}", ct_offsets.as_deref().unwrap_or("check gave no offsets line"))
            })),
        },
    );
    if let Err(e) = agent.stop() {
        note("agent_stop", Outcome::Fail(format!("{e:#}")));
    }
    failed
}

/// `egress-agent check -o json` with a proxy port so the cgroup_skb
/// programs load too; returns the program list and the conntrack kprobe's
/// offsets line (where its layout resolved).
fn check() -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let out = Command::new(agent_bin())
        .args(["check", "-o", "json", "--proxy-ports", "3128"])
        .output()
        .context("running egress-agent check")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "check output is not JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let bad: Vec<String> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "fail")
        .map(|c| format!("{}: {}", c["check"], c["detail"]))
        .collect();
    if v["ok"] != true || !bad.is_empty() {
        bail!("check says the agent cannot run: {}", bad.join("; "));
    }
    let programs = v["programs"].as_array().cloned().unwrap_or_default();
    for p in &programs {
        let n = |k: &str| p[k].as_u64().map_or_else(|| "-".to_string(), |n| n.to_string());
        let err = p["error"].as_str().unwrap_or("?");
        let status = if p["attached"] == true {
            "loaded".to_string()
        } else if p["standby"] == true
            && (p["verified_insns"].is_u64() || p["xlated_insns"].is_u64())
        {
            // Verified, not attached: another hook does its job here.
            format!("standby (loaded, not attached): {}", err.trim_start_matches("standby: "))
        } else {
            format!("skipped: {err}")
        };
        println!(
            "{MARK} insns {} {} {} {}",
            p["program"].as_str().unwrap_or("?"),
            n("verified_insns"),
            n("xlated_insns"),
            status.replace('\n', " ")
        );
    }
    let ct = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == "conntrack kprobe offsets")
        .and_then(|c| c["detail"].as_str())
        .map(str::to_string);
    Ok((programs, ct))
}

/// Every program loads, except where its hook is absent (said so), and
/// as its BTF variant where it has one; the error-report hook must exist
/// from 5.16; the canary loads iff 5.11+.
fn judge_programs(programs: &[Value]) -> Vec<(&'static str, Outcome)> {
    let ver = kernel_version();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut canary = Outcome::Fail("compat_canary missing from check".into());
    for p in programs {
        let name = p["program"].as_str().unwrap_or("?");
        let err = p["error"].as_str().unwrap_or("");
        let attached = p["attached"] == true;
        // Every kernel here has BTF: a BTF tracepoint the verifier refused
        // (its typed socket loads) would leave the slower classic one.
        if let Some(why) = p["fallback"].as_str() {
            problems.push(format!("{name}: BTF variant refused, the classic one stood in: {why}"));
        }
        if name == "compat_canary" {
            canary = match (attached, ver >= (5, 11)) {
                (true, true) => {
                    Outcome::Pass("loaded (kernel has bpf_get_current_task_btf)".into())
                }
                (false, false) if !err.is_empty() => {
                    Outcome::Pass(format!("skipped by check: {}", tail(err)))
                }
                (true, false) => Outcome::Fail("loaded on a kernel older than 5.11".into()),
                (false, _) => Outcome::Fail(format!("not loaded on 5.11+: {err}")),
            };
        } else if attached {
            continue;
        } else if p["standby"] == true
            && (p["verified_insns"].is_u64() || p["xlated_insns"].is_u64())
        {
            // Not needed here (another hook does its job) but loaded: verified.
            skipped.push(format!("{name} (standby, verified)"));
        } else if name == "conntrack_confirm"
            && (err.contains("no kprobes") || (ver < (5, 11) && err.contains("no module BTF")))
        {
            skipped.push(format!("{name} ({})", err.split(" (").next().unwrap_or(err)));
        } else if name == "inet_sk_error_report" && ver < (5, 16) && err.contains("does not exist")
        {
            skipped.push(format!("{name} (hook absent before 5.16; sk_err fallback)"));
        } else {
            problems.push(format!("{name}: {err}"));
        }
    }
    let loaded = programs.iter().filter(|p| p["attached"] == true).count();
    let all = if problems.is_empty() {
        Outcome::Pass(format!(
            "{loaded}/{} loaded and attached{}",
            programs.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped: {}", skipped.join(", "))
            }
        ))
    } else {
        Outcome::Fail(problems.join("; "))
    };
    vec![
        ("check", Outcome::Pass(format!("ok on {}", kernel_release()))),
        ("programs_load", all),
        ("incompatible_skipped", canary),
    ]
}

/// The verifier's line naming the helper it refused, else the whole error.
fn tail(s: &str) -> &str {
    s.split(" | ").find(|l| l.contains("func")).unwrap_or(s)
}

fn field(v: &Value, k: &str) -> String {
    v[k].as_str().map_or_else(|| v[k].to_string(), str::to_string)
}

/// Wait for the connect record to `dst` satisfying `pred`.
fn record(
    agent: &mut Agent,
    dst: SocketAddr,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let d = dst.to_string();
    agent.wait_for(within, |v| v["phase"] == "connect" && v["dst"] == d.as_str() && pred(v))
}

fn expect(
    agent: &mut Agent,
    dst: SocketAddr,
    verdict: &str,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    let r = record(agent, dst, Duration::from_secs(15), |v| {
        v["verdict"] == verdict && reason.is_none_or(|r| v["reason"] == r)
    })?;
    Ok(format!(
        "{dst} {} {} {}ms",
        field(&r, "verdict"),
        field(&r, "reason"),
        field(&r, "latency_ms")
    ))
}

fn connect_ok(agent: &mut Agent, bind: &str) -> anyhow::Result<String> {
    let l = TcpListener::bind(bind)?;
    let dst = l.local_addr()?;
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
        .with_context(|| format!("connect {dst}"))?;
    let res = expect(agent, dst, "ok", None);
    drop(s);
    res
}

fn connect_refused(agent: &mut Agent, bind: &str) -> anyhow::Result<String> {
    let dst = TcpListener::bind(bind)?.local_addr()?;
    match TcpStream::connect_timeout(&dst, Duration::from_secs(10)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("connect {dst}: expected refused, got {other:?}"),
    }
    expect(agent, dst, "failed", Some("refused"))
}

fn connect_timeout(agent: &mut Agent) -> anyhow::Result<String> {
    let start = Instant::now();
    match TcpStream::connect_timeout(&net::BLACKHOLE, Duration::from_secs(20)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => bail!("connect {}: expected a kernel timeout, got {other:?}", net::BLACKHOLE),
    }
    let took = start.elapsed();
    expect(agent, net::BLACKHOLE, "failed", Some("timeout"))
        .map(|d| format!("{d} (client gave up after {:.1}s)", took.as_secs_f64()))
}

/// ICMP host unreachable for a SYN: the errno reaches the agent through
/// `sk_err` at close, or the error report where the kernel has it.
fn icmp_unreachable(agent: &mut Agent) -> anyhow::Result<String> {
    let dst = net::UNREACHABLE;
    let _rule = Rule::add(
        "filter",
        &[
            "OUTPUT",
            "-d",
            &dst.ip().to_string(),
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    )?;
    let res = TcpStream::connect_timeout(&dst, Duration::from_secs(20));
    if res.is_ok() {
        bail!("connect {dst} succeeded through a REJECT rule");
    }
    expect(agent, dst, "failed", Some("unreachable"))
        .map(|d| format!("{d} (client: {})", res.err().map(|e| e.to_string()).unwrap_or_default()))
}

/// The first SYN to the listener is dropped (iptables statistic, every
/// 2nd packet from the first): the retransmitted SYN gets through, the
/// connect succeeds late and the verdict is degraded.
fn syn_retransmit(agent: &mut Agent) -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let dst = l.local_addr()?;
    let port = dst.port().to_string();
    let rule = Rule::add(
        "filter",
        &[
            "OUTPUT",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port,
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            "2",
            "--packet",
            "0",
            "-j",
            "DROP",
        ],
    )?;
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(20));
    drop(rule);
    let _s = s.with_context(|| format!("connect {dst} with its first SYN dropped"))?;
    let r = record(agent, dst, Duration::from_secs(15), |_| true)?;
    let retx = r["syn_retransmits"].as_u64().unwrap_or(0);
    if retx == 0 || r["verdict"] != "degraded" {
        bail!("expected degraded with SYN retransmits, got {r}");
    }
    Ok(format!("{dst} degraded, syn_retransmits={retx}, {}ms", field(&r, "latency_ms")))
}

/// netem drops everything on loopback for a while after the connect: the
/// data is retransmitted until netem goes; the close record says degraded.
fn netem_retransmit(agent: &mut Agent) -> anyhow::Result<Option<String>> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let dst = l.local_addr()?;
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))?;
    let (mut peer, _) = l.accept()?;
    let netem = match Netem::loss_lo() {
        Ok(n) => n,
        Err(e) if format!("{e:#}").contains("qdisc kind is unknown") => return Ok(None),
        Err(e) => return Err(e),
    };
    std::io::Write::write_all(&mut s, b"ping")?;
    std::thread::sleep(Duration::from_millis(1500));
    drop(netem);
    peer.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 4];
    std::io::Read::read_exact(&mut peer, &mut buf).context("data after netem")?;
    drop(s);
    drop(peer);
    let d = dst.to_string();
    let r = agent
        .wait_for(Duration::from_secs(15), |v| v["phase"] == "close" && v["dst"] == d.as_str())?;
    let retx = r["retransmits"].as_u64().unwrap_or(0);
    if retx == 0 || r["verdict"] != "degraded" {
        bail!("expected a degraded close with retransmits, got {r}");
    }
    Ok(Some(format!("{dst} close degraded, retransmits={retx}")))
}

/// The module's split BTF (`/sys/kernel/btf/nf_conntrack`, 5.11+) parsed
/// over vmlinux's on the path the conntrack kprobe's offsets take (`check`
/// names it in its offsets line); before 5.11 there is none to parse.
fn module_btf(programs: &[Value], line: Option<&str>) -> Outcome {
    if let Err(why) = kprobe_status(programs) {
        return Outcome::Skip(format!("conntrack kprobe off: {why}"));
    }
    let line = line.unwrap_or("check gave no conntrack offsets line");
    match line.find("(vmlinux + split") {
        Some(i) if !line.contains(": 0 module types") => Outcome::Pass(
            line[i..].split(')').next().unwrap_or(line).trim_start_matches('(').to_string(),
        ),
        _ if kernel_version() < (5, 11) => Outcome::Skip(format!(
            "no module BTF before 5.11 (CONFIG_DEBUG_INFO_BTF_MODULES); {}",
            line.split(':').next().unwrap_or(line)
        )),
        _ => Outcome::Fail(format!("expected nf_conntrack's split BTF on 5.11+: {line}")),
    }
}

/// Whether the conntrack kprobe attached (as `check` reports it), else why not.
fn kprobe_status(programs: &[Value]) -> Result<(), String> {
    let p = programs
        .iter()
        .find(|p| p["program"] == "conntrack_confirm")
        .ok_or("conntrack_confirm missing from check")?;
    if p["attached"] == true {
        Ok(())
    } else {
        Err(p["error"].as_str().unwrap_or("not attached").to_string())
    }
}

/// The optional conntrack kprobe next to ctnetlink: for a ClusterIP DNAT'ed
/// in OUTPUT, the agent compares the two sources' reply tuples of the same
/// original tuple and logs the comparison; this connection's must say
/// agree, with the backend as the reply source, and no comparison may
/// have disagreed.
fn nat_kprobe(agent: &mut Agent) -> anyhow::Result<String> {
    let l = TcpListener::bind((net::LOCAL, 0))?;
    let backend = l.local_addr()?;
    let _rule = Rule::add(
        "nat",
        &[
            "OUTPUT",
            "-d",
            &net::CLUSTER_IP.ip().to_string(),
            "-p",
            "tcp",
            "--dport",
            &net::CLUSTER_IP.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &backend.to_string(),
        ],
    )?;
    let s = TcpStream::connect_timeout(&net::CLUSTER_IP, Duration::from_secs(10))
        .with_context(|| format!("connect {}", net::CLUSTER_IP))?;
    let client = s.local_addr()?;
    let original = format!("original={client}->{}", net::CLUSTER_IP);
    let reply = format!("{backend}->{client}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        let text = plain(&agent.stderr_text());
        if let Some(bad) = text.lines().find(|l| l.contains("nat sources disagree")) {
            bail!("the kprobe and ctnetlink disagree: {bad}");
        }
        if let Some(line) =
            text.lines().find(|l| l.contains("nat sources") && l.contains(&original))
        {
            break line.to_string();
        }
        if Instant::now() > deadline {
            bail!(
                "no comparison of {original} in the agent's log within 15 s (kprobe or ctnetlink mapping missing)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let want =
        [format!("ctnetlink={reply}"), format!("kprobe={reply}"), "nat sources agree".to_string()];
    if let Some(missing) = want.iter().find(|w| !line.contains(w.as_str())) {
        bail!("expected {missing} in: {line}");
    }
    let agreed =
        plain(&agent.stderr_text()).lines().filter(|l| l.contains("nat sources agree")).count();
    drop(s);
    Ok(format!(
        "{client}->{} reply {reply} from both sources ({agreed} entries compared, none disagreed)",
        net::CLUSTER_IP
    ))
}

/// Log text without ANSI colour sequences (`ESC [ … letter`).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// kube-proxy-style DNAT of a ClusterIP in OUTPUT: the agent's ctnetlink
/// view must name the real backend.
fn nat_ctnetlink(agent: &mut Agent) -> anyhow::Result<String> {
    let l = TcpListener::bind((net::LOCAL, 0))?;
    let backend = l.local_addr()?;
    let _rule = Rule::add(
        "nat",
        &[
            "OUTPUT",
            "-d",
            &net::CLUSTER_IP.ip().to_string(),
            "-p",
            "tcp",
            "--dport",
            &net::CLUSTER_IP.port().to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &backend.to_string(),
        ],
    )?;
    let _s = TcpStream::connect_timeout(&net::CLUSTER_IP, Duration::from_secs(10))
        .with_context(|| format!("connect {}", net::CLUSTER_IP))?;
    let want = backend.to_string();
    let r = record(agent, net::CLUSTER_IP, Duration::from_secs(15), |v| {
        v["dst_actual"] == want.as_str()
    })?;
    Ok(format!(
        "{} -> dst_actual {} ({})",
        net::CLUSTER_IP,
        field(&r, "dst_actual"),
        field(&r, "verdict")
    ))
}
