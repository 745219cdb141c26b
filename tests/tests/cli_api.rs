//! The node-debugging CLI against the real daemon: real Squid chain, real
//! NAT, the real agent serving its API socket. `flows` filters (each one),
//! `watch` following the daemon in order, `flows -f`, `explain` for a
//! failing and a healthy target and an unknown one, standalone `watch`,
//! and the table in a real terminal (tmux) at 80 and 200 columns.
//!
//! Not covered here: `-n` and `--workload` need Kubernetes metadata; their
//! matching is unit-tested (egress-agent filter.rs), and the attribution
//! tests prove the records carry namespace and workload.
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{agent_bin, api_socket_for, free_port},
    cgroups::{Layout, TestCgroup},
    chain_lab::{ChainLab, ChainLabConfig, OriginName, wait_output},
    faults::agent_config,
    require_root,
};
use serde_json::Value;

/// Run the CLI; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run egress-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `flows -o json` with `extra`: the array.
fn flows(sock: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["flows", "--api-socket", sock, "-o", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "flows {extra:?}: {err}");
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("flows {extra:?} is not a JSON array ({e}):\n{out}"));
    v.as_array().cloned().expect("array")
}

/// A child whose stdout lines arrive on a channel.
fn spawn_lines(args: &[&str]) -> (Child, Receiver<String>, Receiver<String>) {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, rx) = channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let (etx, erx) = channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if etx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx, erx)
}

fn wait_line(rx: &Receiver<String>, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(l) = rx.recv_timeout(left) {
            if pred(&l) {
                return l;
            }
            seen.push(l);
        }
    }
    panic!("no matching line within {within:?}; saw:\n{}", seen.join("\n"));
}

fn collect(
    rx: &Receiver<String>,
    within: Duration,
    until: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !until(&got) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("stream incomplete after {within:?}: {got:#?}"));
        if let Ok(l) = rx.recv_timeout(left) {
            got.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")));
        }
    }
    got
}

struct Lab {
    lab: ChainLab,
    client: TestCgroup,
    _hops: [TestCgroup; 2],
    conf: std::path::PathBuf,
}

impl Lab {
    /// One request from the client pod through the chain; its curl PID.
    fn request(&self, host: &str) -> u64 {
        let args = self.lab.curl_via_chain_args(host, "/");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let gated = self.lab.spawn_client_gated(&refs).expect("client");
        self.client.enter(gated.pid()).expect("enter pod cgroup");
        let mut child = gated.release().expect("release");
        wait_output(&mut child, Duration::from_secs(25)).expect("client ran");
        u64::from(child.id())
    }
}

fn chain_of(agent: &mut Agent, pid: u64) -> Value {
    agent
        .wait_for(Duration::from_secs(10), |v| {
            v["record"] == "chain" && v["pid"].as_u64() == Some(pid)
        })
        .expect("chain record")
}

#[test]
fn cli_against_the_running_agent() {
    require_root!();
    let cfg = ChainLabConfig {
        pod_range: egress_tests::chain_lab::Cidr::new(Ipv4Addr::new(10, 7, 0, 0), 16),
        app_ip: Ipv4Addr::new(10, 7, 5, 20),
        app_gw: Ipv4Addr::new(10, 7, 5, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 7, 6, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 7, 6, 1),
        cluster_ip: Ipv4Addr::new(10, 97, 3, 3),
        proxy_port: 8080,
        healthy: OriginName::new("api.cli-lab.test", Ipv4Addr::new(198, 19, 7, 10)),
        refused: OriginName::new("closed.cli-lab.test", Ipv4Addr::new(198, 19, 7, 11)),
        blackhole: OriginName::new("void.cli-lab.test", Ipv4Addr::new(198, 19, 7, 12)),
        denied_at_hop1: "no1.cli-lab.test".into(),
        denied_at_hop2: "no2.cli-lab.test".into(),
        peer_connect_fail_limit: 1000,
        ..ChainLabConfig::default()
    };
    let hop1 =
        TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 711).expect("hop1 cgroup");
    let hop2 = TestCgroup::new(Layout::Unit, 712).expect("hop2 cgroup");
    let client = TestCgroup::new(Layout::Cgroupfs { qos: None }, 713).expect("client cgroup");
    let mut cfg = cfg;
    cfg.hop1_cgroup = Some(hop1.path().to_path_buf());
    cfg.hop2_cgroup = Some(hop2.path().to_path_buf());
    let dir = std::env::temp_dir().join(format!("eo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("agent.yaml");
    std::fs::write(&conf, agent_config(&cfg, &hop1, &hop2)).expect("config");
    let lab =
        Lab { lab: ChainLab::new(cfg.clone()).expect("lab"), client, _hops: [hop1, hop2], conf };
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let sock = api_socket_for(&metrics).display().to_string();
    let mut agent = Agent::start(AgentMode::Run {
        metrics,
        extra: vec!["--config".into(), lab.conf.display().to_string()],
    })
    .expect("agent");

    // A watcher that follows the daemon, before any traffic.
    let (mut watcher, wrx, werr) = spawn_lines(&["watch", "--api-socket", &sock, "-o", "jsonl"]);
    wait_line(&werr, Duration::from_secs(10), |l| l.contains("following the agent"));

    let healthy = cfg.healthy.name.clone();
    let denied = cfg.denied_at_hop2.clone();
    let mut pids = Vec::new();
    for host in [&healthy, &denied, &denied, &healthy, &denied] {
        let pid = lab.request(host);
        chain_of(&mut agent, pid);
        pids.push(pid);
    }

    // ---- flows: the snapshot, and each filter ----
    let all = flows(&sock, &[]);
    assert!(all.iter().all(|v| v["record"] == "flow"), "flows prints flow records");
    let client_flows: Vec<&Value> =
        all.iter().filter(|v| pids.contains(&v["pid"].as_u64().unwrap_or(0))).collect();
    assert_eq!(
        client_flows.len(),
        pids.len(),
        "one shown flow per client request: {client_flows:#?}"
    );
    let check = |extra: &[&str], pred: &dyn Fn(&Value) -> bool| {
        let got = flows(&sock, extra);
        assert!(!got.is_empty(), "{extra:?} matched nothing");
        assert!(got.iter().all(pred), "{extra:?} let through: {got:#?}");
        let expected = all.iter().filter(|v| pred(v)).count();
        assert!(got.len() >= expected, "{extra:?}: {} of {expected}", got.len());
        got
    };
    check(&["--verdict", "failed"], &|v| v["verdict"] == "failed");
    check(&["--verdict", "ok"], &|v| v["verdict"] == "ok");
    check(&["--reason", "proxy_denied"], &|v| v["reason"] == "proxy_denied");
    check(&["--hop", "gce-proxy"], &|v| v["hop"] == "gce-proxy");
    let pod_uid =
        client_flows[0]["pod_uid"].as_str().expect("client pod uid from its cgroup").to_string();
    let by_pod = check(&["--pod", &pod_uid], &|v| v["pod_uid"] == pod_uid.as_str());
    assert_eq!(by_pod.len(), pids.len());
    check(&["--dst", &healthy], &|v| {
        v["target"].as_str().is_some_and(|t| t.starts_with(&format!("{healthy}:")))
    });
    let cluster = format!("{}/32", cfg.cluster_ip);
    check(&["--dst", &cluster], &|v| {
        v["dst"].as_str().is_some_and(|d| d.starts_with(&format!("{}:", cfg.cluster_ip)))
    });
    check(&["--port", "8080"], &|v| {
        v["dst"].as_str().is_some_and(|d| d.ends_with(":8080"))
            || v["target"].as_str().is_some_and(|t| t.ends_with(":8080"))
    });
    assert!(flows(&sock, &["-n", "no-such-namespace"]).is_empty());
    assert!(flows(&sock, &["--workload", "no-such-workload"]).is_empty());
    let last2 = flows(&sock, &["--last", "2"]);
    assert_eq!(last2, all[all.len() - 2..].to_vec(), "--last keeps the newest");
    let chains = flows(&sock, &["--chains", "--dst", &denied]);
    assert_eq!(chains.len(), 3, "{chains:#?}");
    assert!(chains.iter().all(|c| c["record"] == "chain"
        && c["failed_hop"] == "gce-proxy"
        && c["reason"] == "proxy_denied"));
    std::thread::sleep(Duration::from_millis(1500));
    // Only the lab's own records: on a shared host other flows keep coming.
    assert!(
        flows(&sock, &["--since", "1s", "--dst", &cluster]).is_empty(),
        "--since excludes older records"
    );
    // Unknown filter values are refused with the accepted ones listed.
    let (code, _, err) = cli(&["flows", "--api-socket", &sock, "--reason", "bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("proxy_denied") && err.contains("timeout"), "{err}");
    let (code, _, err) = cli(&["flows", "--api-socket", &sock, "--since", "5 parsecs"]);
    assert_eq!(code, 2, "{err}");
    // JSON lines.
    let (code, out, _) = cli(&["flows", "--api-socket", &sock, "-o", "jsonl", "--last", "3"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().map(|l| serde_json::from_str::<Value>(l).expect("line")).collect::<Vec<_>>(),
        all[all.len() - 3..].to_vec()
    );

    // ---- watch followed the daemon: same records, same order ----
    let want: Vec<String> =
        flows(&sock, &[]).iter().map(|v| v["flow_id"].as_str().unwrap_or("").to_string()).collect();
    let streamed = collect(&wrx, Duration::from_secs(5), |got| {
        got.iter().filter(|v| v["record"] == "flow").count() >= want.len()
    });
    let ids: Vec<String> = streamed
        .iter()
        .filter(|v| v["record"] == "flow")
        .map(|v| v["flow_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids, want, "watch streams flows in the order the agent made them");
    let _ = watcher.kill();
    let _ = watcher.wait();

    // ---- flows -f: the last N of the history, then live ----
    let (mut follower, frx, _ferr) =
        spawn_lines(&["flows", "-f", "--last", "1", "--api-socket", &sock, "-o", "jsonl"]);
    let first = collect(&frx, Duration::from_secs(5), |g| !g.is_empty());
    assert_eq!(first[0]["flow_id"], all[all.len() - 1]["flow_id"]);
    let pid = lab.request(&healthy);
    let live =
        collect(&frx, Duration::from_secs(5), |g| g.iter().any(|v| v["pid"].as_u64() == Some(pid)));
    assert!(!live.is_empty());
    let _ = follower.kill();
    let _ = follower.wait();

    // ---- explain ----
    let (code, out, err) = cli(&["explain", &format!("{denied}:443"), "--api-socket", &sock]);
    assert_eq!(code, 0, "{err}");
    eprintln!("explain {denied}:443\n{out}");
    let conclusion = out.lines().find(|l| l.starts_with("Conclusion: ")).expect("conclusion");
    assert!(
        conclusion.starts_with("Conclusion: failing at hop gce-proxy: 403 proxy_denied since "),
        "{conclusion}"
    );
    assert!(conclusion.ends_with("3 of 3 attempts"), "{conclusion}");
    assert!(out.contains("gke-squid") && out.contains("client->gke-squid"), "hop by hop: {out}");
    // The last healthy request's chain settles 300 ms after its client leg.
    let deadline = Instant::now() + Duration::from_secs(5);
    let e: Value = loop {
        let (code, out, _) = cli(&["explain", &healthy, "--api-socket", &sock, "-o", "json"]);
        assert_eq!(code, 0);
        let e: Value = serde_json::from_str(&out).expect("explain json");
        if e["attempts"].as_u64() == Some(3) || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (e["state"].as_str(), e["attempts"].as_u64(), e["failures"].as_u64()),
        (Some("healthy"), Some(3), Some(0)),
        "{e:#}"
    );
    assert!(
        e["conclusion"].as_str().is_some_and(
            |c| c.starts_with("healthy: last attempt ok via gke-squid > gce-proxy > internet")
        ),
        "{e:#}"
    );
    let (code, _, err) = cli(&["explain", "nothing-here.cli-lab.test", "--api-socket", &sock]);
    assert_eq!(code, 3, "no recent flows is its own exit code: {err}");
    assert!(err.contains("no recent flows"), "{err}");

    // ---- the table in a real terminal ----
    for width in [80usize, 200] {
        table_in_tmux(&sock, width, flows(&sock, &[]).len());
    }

    // ---- bad input: no agent, then standalone ----
    agent.stop().expect("agent stopped");
    let (code, _, err) = cli(&["flows", "--api-socket", &sock]);
    assert_eq!(code, 1);
    assert!(err.contains("no agent is serving") && err.contains("standalone"), "{err}");
    let conf = lab.conf.display().to_string();
    let (mut solo, srx, serr) = spawn_lines(&[
        "watch",
        "--api-socket",
        &sock,
        "--duration",
        "20",
        "-o",
        "jsonl",
        "--config",
        &conf,
    ]);
    wait_line(&serr, Duration::from_secs(30), |l| {
        l.contains("standalone mode, probes loaded by this process")
    });
    let pid = lab.request(&healthy);
    let got = collect(&srx, Duration::from_secs(10), |g| {
        g.iter().any(|v| v["pid"].as_u64() == Some(pid))
    });
    let rec = got.iter().find(|v| v["pid"].as_u64() == Some(pid)).expect("record");
    assert_eq!(
        (rec["verdict"].as_str(), rec["hop"].as_str()),
        (Some("ok"), Some("gke-squid")),
        "{rec}"
    );
    let _ = solo.kill();
    let _ = solo.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `flows` in a tmux pane `width` columns wide: no line wraps, every row
/// lines up with the header, the verdict is coloured on the terminal.
fn table_in_tmux(sock: &str, width: usize, records: usize) {
    let server = format!("eo-cli-{}-{width}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = Command::new("tmux").args(["-L", &server]).args(args).output().expect("tmux");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let bin = agent_bin().display().to_string();
    let script = format!("{bin} flows --api-socket {sock}; echo EO-DONE; sleep 60");
    let (ok, _) =
        tmux(&["new-session", "-d", "-x", &width.to_string(), "-y", "100", "sh", "-c", &script]);
    assert!(ok, "tmux new-session");
    let (_, pid) = tmux(&["display-message", "-p", "#{pid}"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pane = String::new();
    while Instant::now() < deadline {
        pane = tmux(&["capture-pane", "-p"]).1;
        if pane.contains("EO-DONE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let coloured = tmux(&["capture-pane", "-p", "-e"]).1;
    if let Ok(p) = pid.trim().parse::<i32>() {
        // SAFETY: our own tmux server, by PID.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let lines: Vec<&str> = pane.lines().take_while(|l| !l.starts_with("EO-DONE")).collect();
    assert_eq!(
        lines.len(),
        records + 1,
        "{width} columns: header + one line per record, nothing wrapped:\n{pane}"
    );
    let header = lines[0];
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    assert!(starts.len() >= 5, "{header}");
    for row in &lines[1..] {
        assert!(row.chars().count() <= width, "{width}: row wider than the terminal:\n{row}");
        let chars: Vec<char> = row.chars().collect();
        for &at in &starts[1..] {
            assert!(
                chars.get(at - 1).is_none_or(|c| *c == ' '),
                "{width} columns: misaligned at {at}:\n{header}\n{row}"
            );
        }
    }
    assert!(coloured.contains("\u{1b}["), "verdicts are coloured on a terminal");
    eprintln!(
        "flows at {width} columns:\n{}",
        lines.iter().take(6).copied().collect::<Vec<_>>().join("\n")
    );
}

/// The kubectl plugin with a real kubectl (Kubernetes' release binary,
/// installed by `cargo xtask setup`) against the fake API server, which
/// serves real-shaped discovery, Pod and PodList JSON (no kube-apiserver can
/// run here). Exec itself needs a real cluster: the plugin's dry run prints
/// the exact `kubectl exec` it would run, and that is what is asserted.
#[test]
fn kubectl_plugin_finds_the_agent_of_the_node() {
    use egress_tests::fake_apiserver::{
        FakeApiServer, Kubeconfig,
        objects::{self, PodSpec, cid},
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugin = root.join("deploy/kubectl-plugin/kubectl-egress");
    let kubectl = std::env::var_os("EGRESS_KUBECTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/tools/kubectl/bin/kubectl"));
    assert!(kubectl.exists(), "{} missing: run `cargo xtask setup`", kubectl.display());
    let pod = |seed: u32, ns: &str, name: &str, node: &str, app: &str| {
        objects::pod(&PodSpec {
            ns,
            name,
            uid: objects::uid(seed),
            node,
            labels: serde_json::json!({"app.kubernetes.io/name": app}),
            containers: vec![("agent", "egress-agent:dev", cid(seed))],
            ..PodSpec::default()
        })
    };
    let api = FakeApiServer::with([
        pod(21, "egress-observer", "egress-agent-a1b2c", "node-a", "egress-agent"),
        pod(22, "egress-observer", "egress-agent-d3e4f", "node-b", "egress-agent"),
        pod(23, "egress-observer", "not-the-agent", "node-b", "something-else"),
        pod(24, "payments", "api-7d9f", "node-b", "api"),
    ]);
    let kc = Kubeconfig::write(api.addr);
    let home = std::env::temp_dir().join(format!("eo-kubectl-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&plugin)
            .args(args)
            .args(["--kubeconfig", &kc.0.display().to_string()])
            .env("KUBECTL", &kubectl)
            .env("EGRESS_PLUGIN_DRY_RUN", "1")
            .env("HOME", &home)
            .env("KUBECACHEDIR", home.join("cache"))
            .stdin(Stdio::null())
            .output()
            .expect("plugin");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["flows", "--pod", "payments/api-7d9f", "--verdict", "failed"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("exec -n egress-observer egress-agent-d3e4f -c agent -- egress-agent flows --verdict failed -n payments --pod api-7d9f"), "{out}");
    let (code, out, err) = run(&["explain", "login.example.test:443", "--node", "node-a"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("egress-agent-a1b2c -c agent -- egress-agent explain login.example.test:443"),
        "{out}"
    );
    // Assembled across agents, run on the agent of the client pod's node.
    let (code, out, err) =
        run(&["explain", "login.example.test:443", "--assemble", "--pod", "payments/api-7d9f"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(
            "egress-agent-d3e4f -c agent -- egress-agent explain login.example.test:443 --assemble"
        ),
        "{out}"
    );
    let (code, _, err) = run(&["flows"]);
    assert_eq!(code, Some(2), "several agents: the user must choose");
    assert!(err.contains("--node node-a") && err.contains("--node node-b"), "{err}");
    let (code, _, err) = run(&["check", "--node", "node-z"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no egress-agent pod on node node-z"), "{err}");
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.contains("/api/v1/namespaces/egress-observer/pods")
            && r.contains("fieldSelector=spec.nodeName=node-b")
            && r.contains("labelSelector=app.kubernetes.io/name=egress-agent")),
        "{reqs:#?}"
    );
    let _ = std::fs::remove_dir_all(&home);
}

/// The kubectl plugin's own argument handling (no cluster here: choosing the
/// pod and exec'ing needs a kube-apiserver that serves exec; not tested).
#[test]
fn kubectl_plugin_usage() {
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubectl-plugin/kubectl-egress");
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&plugin)
            .args(args)
            .env("KUBECTL", "/bin/false")
            .stdin(Stdio::null())
            .output()
            .expect("plugin");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["-h"]);
    assert_eq!(code, Some(0));
    for w in
        ["watch|flows|explain|check", "--node NODE", "--pod NS/NAME", "--context", "--kubeconfig"]
    {
        assert!(out.contains(w), "help lacks {w}:\n{out}");
    }
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown command 'frobnicate'"), "{err}");
    let (code, _, err) = run(&["flows", "--pod", "no-namespace"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("NS/NAME"), "{err}");
    let (code, _, err) = run(&["flows", "--pod", "a/b", "--node", "n"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exclusive"), "{err}");
}
