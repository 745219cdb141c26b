//! Hostile input against the real daemon's API and the real CLI: an
//! `--api-socket` naming something that is not a socket, a process whose
//! name is an escape sequence, a 300 MB request line, more clients than the
//! cap, absurd `--since`/`--last`. No crash, no terminal injection, every
//! refusal counted (egress_api_clients_dropped_total).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    Agent, AgentMode,
    agent::{agent_bin, api_socket_for, free_port, metric_sum},
    require_root,
};

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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn the_socket_path_is_never_clobbered() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("eo-api-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "keep me").expect("file");
    let link = dir.join("api.sock");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    for path in [&precious, &link] {
        let port = free_port().expect("port").to_string();
        let t0 = Instant::now();
        let (code, _, err) = cli(&[
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--api-socket",
            &path.display().to_string(),
        ]);
        assert_ne!(code, 0, "the agent started on {}", path.display());
        assert!(err.contains("refusing --api-socket"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10), "refused before loading anything");
        assert_eq!(std::fs::read_to_string(&precious).expect("intact"), "keep me");
    }
    assert!(std::fs::symlink_metadata(&link).expect("link kept").file_type().is_symlink());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_clients_and_names_against_the_real_agent() {
    require_root!();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let sock = api_socket_for(&metrics);
    let sock_s = sock.display().to_string();
    let mut agent = Agent::start(AgentMode::Run { metrics, extra: vec![] }).expect("agent");

    // A process named with terminal escapes connects to a closed port.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let evil = "\\x1b]0;pwn\\x07\\x1b[2J";
    let script = format!(
        "import ctypes,socket\nctypes.CDLL(None).prctl(15, b'{evil}', 0, 0, 0)\n\
         s=socket.socket(); s.settimeout(2); s.connect_ex(('127.0.0.1', {closed}))\n"
    );
    let st = Command::new("python3").args(["-c", &script]).status().expect("python3");
    assert!(st.success());
    let rec = agent
        .wait_for(Duration::from_secs(10), |v| {
            v["dst"].as_str() == Some(&format!("127.0.0.1:{closed}"))
        })
        .expect("the refused connect's record");
    assert!(rec["comm"].as_str().is_some_and(|c| c.contains('\u{1b}')), "{rec}");
    let (code, table, err) = cli(&["flows", "--api-socket", &sock_s, "-o", "wide"]);
    assert_eq!(code, 0, "{err}");
    assert!(!table.contains('\u{1b}') && !table.contains('\u{7}'), "raw escapes: {table:?}");
    assert!(table.contains("\\x1b]0;pwn\\x07"), "escaped name shown: {table}");
    let (_, json, _) = cli(&["flows", "--api-socket", &sock_s, "-o", "jsonl"]);
    assert!(json.contains("\\u001b]0;pwn\\u0007"), "JSON stays exact: {json}");

    // A 300 MB request line: refused after 1 KiB, the agent's memory flat.
    let before = rss_kib(agent.pid());
    let mut s = UnixStream::connect(&sock).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut r = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'{'; 1 << 20];
        let mut sent = 0usize;
        while sent < 300 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    r.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let sent = writer.join().expect("writer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("longer than"), "{answer:?}");
    assert!(sent < 300 << 20, "the agent read all {sent} bytes");
    let after = rss_kib(agent.pid());
    eprintln!("300 MB request: {sent} bytes accepted before the close; RSS {before} → {after} KiB");
    assert!(after < before + 20_000, "RSS grew {before} → {after} KiB");

    // More clients than the cap (32): the extra ones are told and closed.
    let idle: Vec<UnixStream> =
        (0..32).map(|_| UnixStream::connect(&sock).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, err) = cli(&["flows", "--api-socket", &sock_s]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("too many clients"), "{err}");
    // The idle ones (no request) are dropped at the request timeout (5 s):
    // the slots come back while they still hold their connections.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cli(&["flows", "--api-socket", &sock_s]).0 != 0 {
        assert!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(idle);

    // Absurd durations and counts: usage errors (2), never a panic (101).
    for args in [
        &["--since", "18446744073709551615"][..],
        &["--since", "99999d"],
        &["--last", "18446744073709551615"],
        &["--last=-1"],
    ] {
        let mut a = vec!["flows", "--api-socket", &sock_s];
        a.extend_from_slice(args);
        let (code, _, err) = cli(&a);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--since") || err.contains("--last"), "{err}");
    }
    let (code, _, err) =
        cli(&["explain", "a.test", "--api-socket", &sock_s, "--since", "9999999d"]);
    assert_eq!(code, 2, "{err}");

    let text = agent.http_get("/metrics").expect("metrics");
    let dropped =
        |reason| metric_sum(&text, "egress_api_clients_dropped_total", &[("reason", reason)]);
    assert_eq!(dropped("request_too_long"), 1.0, "{text}");
    assert!(dropped("too_many_clients") >= 1.0);
    assert!(dropped("request_timeout") >= 1.0);
    assert!(agent.stop().expect("stop"), "the agent exits cleanly");
    assert!(!sock.exists(), "socket removed at exit");
}
