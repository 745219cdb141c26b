//! A fake kube-apiserver for tests: no real one can run on the machines this
//! is built and tested on, so this plain-HTTP server on 127.0.0.1 serves
//! real-shaped Kubernetes JSON (List and Watch endpoints, as the API returns
//! them) for the collections a test gives it, and writes a kubeconfig that
//! points the agent at it.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::Agent;

/// How long a watch is held open (the real apiserver: `timeoutSeconds`).
pub const WATCH_HOLD: Duration = Duration::from_secs(20);


// ---------------------------------------------------------------------------
// The fake API server.

/// (collection path, apiVersion, kind, objects with apiVersion/kind)
pub type Collection = (&'static str, &'static str, &'static str, Vec<Value>);

/// A plain-HTTP fake kube-apiserver on 127.0.0.1 (see the file header).
/// Every answer closes its connection; watches end after [`WATCH_HOLD`] or
/// when the server is dropped. Dropping it joins every thread it started.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// `GET path?query` (query decoded), in arrival order.
    pub requests: Arc<Mutex<Vec<String>>>,
    accept: Option<JoinHandle<()>>,
}

/// The resourceVersion lists and bookmarks report (nothing ever changes).
const LIST_RV: &str = "1042";

impl FakeApiServer {
    pub fn start(collections: Vec<Collection>) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let collections = Arc::new(collections);
        let (st, rq) = (stop.clone(), requests.clone());
        let accept = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (st, rq, cs) = (st.clone(), rq.clone(), collections.clone());
                            conns.push(std::thread::spawn(move || {
                                let _ = serve_one(s, &cs, &rq, &st);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                    conns.retain(|c| !c.is_finished());
                }
                for c in conns {
                    let _ = c.join();
                }
            })
            .expect("spawn fake apiserver");
        FakeApiServer { addr, stop, requests, accept: Some(accept) }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Watch requests so far for `collection`.
    pub fn watches(&self, collection: &str) -> usize {
        self.requests()
            .iter()
            .filter_map(|r| r.strip_prefix("GET ")?.split_once('?'))
            .filter(|(p, q)| *p == collection && q.split('&').any(|kv| kv == "watch=1" || kv == "watch=true"))
            .count()
    }

    /// Wait until every collection has been listed and then watched `n`
    /// times: the watcher asks for the watch only after the list was applied
    /// to the agent's index, so by then the metadata is in.
    pub fn wait_watched(&self, collections: &[&str], n: usize, within: Duration, agent: &Agent) {
        let deadline = Instant::now() + within;
        while collections.iter().any(|c| self.watches(c) < n) {
            assert!(
                Instant::now() < deadline,
                "the agent did not list+watch {collections:?} within {within:?}; requests:\n{}\nagent stderr:\n{}",
                self.requests().join("\n"),
                agent.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond_json(s: &mut TcpStream, code: u16, reason: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nAudit-Id: 6d1e0b4a-0000-4000-8000-{:012x}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        std::process::id(),
        body.len()
    )?;
    s.flush()
}

fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(s, "{:x}\r\n{data}\r\n", data.len())?;
    s.flush()
}

/// One request on one connection, then close.
fn serve_one(mut s: TcpStream, collections: &[Collection], log: &Mutex<Vec<String>>, stop: &AtomicBool) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let decoded: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Ok(mut l) = log.lock() {
        l.push(format!("{method} {path}?{}", decoded.join("&")));
    }
    let status = |code: u16, reason: &str, message: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
    };
    if method != "GET" {
        return respond_json(&mut s, 405, "Method Not Allowed", &status(405, "MethodNotAllowed", "read-only fake"));
    }
    // Discovery, as kubectl asks for it before a `get` (legacy JSON forms).
    match path {
        "/version" => return respond_json(&mut s, 200, "OK", &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})),
        "/api" => return respond_json(&mut s, 200, "OK", &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        "/apis" => return respond_json(&mut s, 200, "OK", &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})),
        "/api/v1" => {
            let r = |name: &str, singular: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": ["get", "list", "watch"]});
            return respond_json(&mut s, 200, "OK", &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [r("pods", "pod", "Pod", true), r("services", "service", "Service", true), r("nodes", "node", "Node", false)]}));
        }
        _ => {}
    }
    // One object: `<collection>/<name>`.
    if let Some((parent, name)) = path.rsplit_once('/')
        && let Some((_, api_version, kind, objects)) = collections.iter().find(|(p, ..)| *p == parent)
        && let Some(o) = objects.iter().find(|o| o["metadata"]["name"].as_str() == Some(name))
    {
        let mut o = o.clone();
        o["apiVersion"] = json!(api_version);
        o["kind"] = json!(kind);
        return respond_json(&mut s, 200, "OK", &o);
    }
    let Some((_, api_version, kind, objects)) = collections.iter().find(|(p, ..)| *p == path) else {
        return respond_json(&mut s, 404, "Not Found", &status(404, "NotFound", "the server could not find the requested resource"));
    };
    let node = params.get("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName="));
    // labelSelector: equality terms only (`k=v,k2=v2`), as kubectl -l sends them.
    let labels: Vec<(String, String)> = params
        .get("labelSelector")
        .map(|l| l.split(',').filter_map(|t| t.split_once('=')).map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string())).collect())
        .unwrap_or_default();
    let selected = |o: &&Value| node.is_none_or(|n| o["spec"]["nodeName"].as_str() == Some(n)) && labels.iter().all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v));

    if !matches!(params.get("watch").map(String::as_str), Some("1" | "true")) {
        // List items come without apiVersion/kind, as the apiserver sends them.
        let items: Vec<Value> = objects
            .iter()
            .filter(selected)
            .map(|o| {
                let mut item = o.clone();
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                item
            })
            .collect();
        let list = json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                          "metadata": {"resourceVersion": LIST_RV}, "items": items});
        return respond_json(&mut s, 200, "OK", &list);
    }

    // Watch from the list's version: nothing changed since, so a BOOKMARK
    // (when asked for), then the stream stays open, quiet, until the
    // apiserver-style timeout (bounded by WATCH_HOLD) or the fake stops.
    write!(
        s,
        "HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                          "metadata": {"resourceVersion": LIST_RV}}});
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    if bookmarks {
        chunk(&mut s, &format!("{bookmark}\n"))?;
    }
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(WATCH_HOLD, Duration::from_secs);
    let end = Instant::now() + timeout.min(WATCH_HOLD);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

/// A kubeconfig file for the fake (plain HTTP, no credentials); removed on drop.
pub struct Kubeconfig(pub PathBuf);

impl Kubeconfig {
    pub fn write(server: SocketAddr) -> Kubeconfig {
        let path = std::env::temp_dir().join(format!("eo-{}-kubeconfig.yaml", std::process::id()));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{server}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n    namespace: default\ncurrent-context: fake\nusers:\n- name: agent\n  user: {{}}\npreferences: {{}}\n"
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        Kubeconfig(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
