//! Tests of the API server: snapshot bounds, follow order, client caps, slow clients.
use super::*;
use crate::{
    api::{client, wire::Message},
    records::FlowRecord,
};

fn opts(path: &std::path::Path) -> ApiOptions {
    ApiOptions {
        path: path.to_path_buf(),
        history: 3,
        status: Status::for_tests(3),
        limits: ApiLimits::default(),
    }
}

#[tokio::test]
async fn snapshot_is_bounded_and_follow_streams_in_order() {
    let dir = std::env::temp_dir().join(format!("eo-api-{}", std::process::id()));
    let path = dir.join("api.sock");
    let reg = prometheus::Registry::new();
    let (tx, rx) = watch::channel(false);
    let mut api = start(opts(&path), &reg, rx).expect("start");
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(&path).expect("socket").permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);
    // A second agent on the same socket is refused.
    let (_t2, rx2) = watch::channel(false);
    assert!(start(opts(&path), &prometheus::Registry::new(), rx2).is_err());
    let flow = |pid| Record::Flow(FlowRecord { pid, ..Default::default() });
    for i in 0..5 {
        api.publish(flow(i));
    }
    api.flush();
    let mut follow = None;
    for _ in 0..100 {
        let s = client::status(&path).await.expect("status");
        if s.history == 3 {
            follow = Some(
                client::open(&path, &Request::Follow { history: false }).await.expect("follow"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut follow = follow.expect("history filled");
    assert!(matches!(
        follow.next().await.expect("read"),
        Some(Message::Control(Control::HistoryEnd))
    ));
    let snap = client::snapshot(&path).await.expect("snapshot");
    let pids: Vec<u32> = snap
        .iter()
        .map(|r| match r {
            Message::Record(Record::Flow(f)) => f.pid,
            _ => 99,
        })
        .collect();
    assert_eq!(pids, [2, 3, 4], "oldest dropped first");
    for i in 5..8 {
        api.publish(flow(i));
    }
    // Nothing leaves before the batch is flushed.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), follow.next()).await.is_err(),
        "unflushed batch delivered"
    );
    api.flush();
    for want in 5..8 {
        let r = tokio::time::timeout(Duration::from_secs(2), follow.next())
            .await
            .expect("in time")
            .expect("read")
            .expect("record");
        assert!(matches!(&r, Message::Record(Record::Flow(f)) if f.pid == want), "{r:?}");
    }
    tx.send(true).expect("shutdown");
    for _ in 0..100 {
        if !path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!path.exists(), "socket removed at shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A counter of `reg` by name and `reason` label (0 when absent).
fn counted(reg: &prometheus::Registry, name: &str, reason: &str) -> u64 {
    reg.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.name() == "reason" && l.value() == reason))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

async fn read_all(s: &mut UnixStream) -> String {
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("eo-api-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test]
async fn clients_capped_requests_bounded_every_refusal_counted() {
    let dir = scratch("limits");
    let path = dir.join("api.sock");
    let reg = prometheus::Registry::new();
    let (tx, rx) = watch::channel(false);
    let limits = ApiLimits {
        max_clients: 2,
        request_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_millis(300),
    };
    let _api = start(ApiOptions { limits, ..opts(&path) }, &reg, rx).expect("start");
    let dropped = |r| counted(&reg, "egress_api_clients_dropped_total", r);

    // Two followers hold both slots; a third client is told and closed.
    let mut a = client::open(&path, &Request::Follow { history: false }).await.expect("a");
    let b = client::open(&path, &Request::Follow { history: false }).await.expect("b");
    assert!(matches!(a.next().await, Ok(Some(Message::Control(Control::HistoryEnd)))));
    let err = client::status(&path).await.expect_err("third client refused");
    assert!(err.to_string().contains("too many clients"), "{err}");
    assert_eq!(dropped("too_many_clients"), 1);
    // A slot freed is a slot usable again.
    drop(b);
    let mut ok = false;
    for _ in 0..100 {
        if client::status(&path).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slot not released after a client left");
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A request line past the cap: refused after MAX_REQUEST_BYTES, not buffered.
    let p = path.clone();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(&p).expect("connect");
        let mut w = s.try_clone().expect("clone");
        // 8 MiB without a newline: the agent stops reading long before.
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer, then EOF (or ECONNRESET: the agent closed with our
        // unread bytes still queued).
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let _ = writer.join();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("join");
    assert!(answer.contains("longer than"), "{answer:?}");
    assert_eq!(dropped("request_too_long"), 1);

    // A malformed request, and one never sent.
    let mut s = UnixStream::connect(&path).await.expect("connect");
    s.write_all(b"{\"op\":\"rm -rf\"}\n").await.expect("write");
    assert!(read_all(&mut s).await.contains("bad request"));
    let mut idle = UnixStream::connect(&path).await.expect("connect");
    let t0 = std::time::Instant::now();
    assert_eq!(read_all(&mut idle).await, "", "closed without an answer");
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!((dropped("bad_request"), dropped("request_timeout")), (1, 1));
    tx.send(true).expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_and_counted() {
    let dir = scratch("slow");
    let path = dir.join("api.sock");
    let reg = prometheus::Registry::new();
    let (tx, rx) = watch::channel(false);
    let limits = ApiLimits { write_timeout: Duration::from_millis(200), ..ApiLimits::default() };
    let n = 20_000;
    let mut api = start(ApiOptions { history: n, limits, ..opts(&path) }, &reg, rx).expect("start");
    for i in 0..n {
        api.publish(Record::Flow(FlowRecord {
            pid: i as u32,
            comm: "x".repeat(15),
            flow_id: format!("{i:064}"),
            ..Default::default()
        }));
    }
    api.flush();
    for _ in 0..200 {
        if client::status(&path).await.map(|s| s.history).unwrap_or(0) == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Ask for the snapshot (several MB) and never read it.
    let mut s = UnixStream::connect(&path).await.expect("connect");
    s.write_all(b"{\"op\":\"snapshot\"}\n").await.expect("request");
    let mut gone = false;
    for _ in 0..300 {
        if counted(&reg, "egress_api_clients_dropped_total", "write_timeout") == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "a client that does not read was not dropped");
    let lost = counted(&reg, "egress_api_records_dropped_total", "slow_client");
    assert!(lost > 0 && lost < n as u64, "undelivered records counted: {lost}");
    // Whatever reached the socket before the drop, then EOF: the client
    // got a prefix of the history, and the records it did not get are the ones counted.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let lines = got.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
    assert!(lines + lost <= n as u64 + 1, "{lines} read + {lost} counted > {n}");
    tx.send(true).expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
