//! The fake kube-apiserver of every test that needs Kubernetes: no real one
//! can run on the machines this is built and tested on, so this plain-HTTP
//! server on 127.0.0.1 serves *real-shaped Kubernetes JSON*, the way the
//! apiserver does, for Pods, Services, EndpointSlices and Nodes; [`objects`]
//! makes those objects (the one fixture set). The agent's kube client talks
//! to it as to a real one: in-process (`KubeIndex`, `tests/kube_index.rs`)
//! or as a child process through a [`Kubeconfig`]; so does kubectl.
//!
//! - `GET <collection>` (cluster-wide or `…/namespaces/<ns>/…`) → a
//!   `<Kind>List` with `metadata.resourceVersion`, items without
//!   `apiVersion`/`kind` as the apiserver sends them; `GET <collection>/<name>`
//!   → the object; `fieldSelector=spec.nodeName=<node>` and equality
//!   `labelSelector`s are honoured;
//! - `GET <collection>?watch=true&resourceVersion=N` → a chunked stream of
//!   newline-delimited `WatchEvent`s: the events after `N`, a `BOOKMARK` when
//!   asked for, then live events as the test makes changes, until the
//!   apiserver-style timeout (at most [`WATCH_HOLD`]) or [`FakeApiServer::close_watches`];
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`) as kubectl asks for it.
//!
//! The test drives it: add, modify and delete objects (each change gets the
//! next resourceVersion), serve undecodable list items, write raw lines into
//! watch streams, make every request fail, and read the request log. Every
//! answer closes its connection. Dropping the server joins its threads.
pub mod objects;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::Agent;

/// How long a watch is held open at most (the real apiserver: `timeoutSeconds`).
pub const WATCH_HOLD: Duration = Duration::from_secs(20);

/// (kind, API path prefix, resource, namespaced, apiVersion)
const RESOURCES: [(&str, &str, &str, bool, &str); 4] = [
    ("Pod", "/api/v1", "pods", true, "v1"),
    ("Service", "/api/v1", "services", true, "v1"),
    ("Node", "/api/v1", "nodes", false, "v1"),
    ("EndpointSlice", "/apis/discovery.k8s.io/v1", "endpointslices", true, "discovery.k8s.io/v1"),
];

/// How the server answers every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// HTTP 500 with a `Status` body.
    Fail,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

/// A line for watchers: an event (kept for watches that resume from an
/// older resourceVersion) or a raw line (live watches only).
struct Line {
    seq: u64,
    kind: &'static str,
    /// The event's resourceVersion; None for a raw line.
    rv: Option<u64>,
    /// The object, for selectors; Null for a raw line.
    object: Value,
    text: String,
}

struct State {
    rv: u64,
    mode: Mode,
    /// kind → objects by `namespace/name` (or `name`).
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// kind → list items served as they are (undecodable ones).
    junk: BTreeMap<&'static str, Vec<Value>>,
    lines: Vec<Line>,
    seq: u64,
    /// Bumped by `close_watches`.
    closes: u64,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A plain-HTTP fake kube-apiserver on 127.0.0.1 (see the module header).
pub struct FakeApiServer {
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// An empty server; objects come with [`Self::apply`].
    pub fn start() -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = State {
            rv: 1000,
            mode: Mode::Healthy,
            objects: RESOURCES.iter().map(|r| (r.0, BTreeMap::new())).collect(),
            junk: BTreeMap::new(),
            lines: Vec::new(),
            seq: 0,
            closes: 0,
            requests: Vec::new(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new(), stop: AtomicBool::new(false) });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !sh.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let sh = sh.clone();
                            conns.push(std::thread::spawn(move || {
                                // A client that hangs up mid-answer is its business.
                                let _ = serve_one(s, &sh);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                    conns.retain(|c| !c.is_finished());
                }
                for c in conns {
                    // A panicked connection thread already failed its request.
                    let _ = c.join();
                }
            })
            .expect("spawn fake apiserver");
        FakeApiServer { url: format!("http://{addr}"), addr, shared, accept: Some(accept) }
    }

    /// A server holding `objects` (each with `apiVersion` and `kind`).
    pub fn with(objects: impl IntoIterator<Item = Value>) -> FakeApiServer {
        let server = Self::start();
        for o in objects {
            server.apply(o);
        }
        server
    }

    /// Adds or replaces an object (`ADDED` / `MODIFIED` to watchers). The
    /// object carries `apiVersion` and `kind`, as in a watch event.
    pub fn apply(&self, object: Value) {
        let kind = kind_of(&object);
        let mut s = self.shared.lock();
        s.rv += 1;
        let rv = s.rv;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let objects = s.objects.entry(kind).or_default();
        let event = if objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        objects.insert(key, object.clone());
        push_event(&mut s, kind, rv, event, object);
        self.shared.changed.notify_all();
    }

    /// Deletes an object by `namespace/name` (or `name`): `DELETED` with its last state.
    pub fn delete(&self, kind: &'static str, key: &str) {
        let mut s = self.shared.lock();
        s.rv += 1;
        let rv = s.rv;
        let mut object = s.objects.entry(kind).or_default().remove(key).unwrap_or_else(|| panic!("no {kind} {key}"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        push_event(&mut s, kind, rv, "DELETED", object);
        self.shared.changed.notify_all();
    }

    /// An item served in lists of `kind` as it is, for objects that do not decode.
    pub fn add_junk(&self, kind: &'static str, item: Value) {
        self.shared.lock().junk.entry(kind).or_default().push(item);
    }

    /// A raw line in every open watch of `kind` (not necessarily JSON).
    pub fn raw_watch_line(&self, kind: &'static str, line: &str) {
        let mut s = self.shared.lock();
        s.seq += 1;
        let seq = s.seq;
        s.lines.push(Line { seq, kind, rv: None, object: Value::Null, text: format!("{line}\n") });
        self.shared.changed.notify_all();
    }

    /// Ends every open watch stream, as the apiserver does at `timeoutSeconds`.
    pub fn close_watches(&self) {
        self.shared.lock().closes += 1;
        self.shared.changed.notify_all();
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Every request so far, as `GET path?query` with the query decoded and sorted.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
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
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.accept.take() {
            // Its panic, if any, already failed the test.
            let _ = t.join();
        }
    }
}

fn push_event(s: &mut State, kind: &'static str, rv: u64, event: &str, object: Value) {
    s.seq += 1;
    let text = format!("{}\n", json!({"type": event, "object": object}));
    s.lines.push(Line { seq: s.seq, kind, rv: Some(rv), object, text });
}

fn kind_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().unwrap_or_default();
    RESOURCES.iter().map(|r| r.0).find(|k| *k == kind).unwrap_or_else(|| panic!("object of a kind not served: {object}"))
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => panic!("object without metadata.name: {object}"),
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

/// What a request path names: a collection of `kind` (in `namespace`, if
/// given), or one object of it.
struct Target {
    kind: &'static str,
    api_version: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    RESOURCES.iter().find_map(|&(kind, prefix, resource, namespaced, api_version)| {
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        let (namespace, rest) = match rest.strip_prefix("namespaces/") {
            Some(r) if namespaced => {
                let (ns, r) = r.split_once('/')?;
                (Some(ns.to_string()), r)
            }
            _ => (None, rest),
        };
        let name = match rest.strip_prefix(resource)? {
            "" => None,
            n => Some(n.strip_prefix('/').filter(|n| !n.is_empty() && !n.contains('/'))?.to_string()),
        };
        Some(Target { kind, api_version, namespace, name })
    })
}

/// Which objects a request selects.
struct Selector {
    namespace: Option<String>,
    node: Option<String>,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn new(t: &Target, params: &BTreeMap<String, String>) -> Self {
        Self {
            namespace: t.namespace.clone(),
            // Only `spec.nodeName=<node>` (the one the agent uses) is understood.
            node: params.get("fieldSelector").and_then(|f| f.strip_prefix("spec.nodeName=")).map(str::to_string),
            // Equality terms only (`k=v,k2=v2`), as kubectl -l sends them.
            labels: params
                .get("labelSelector")
                .map(|l| l.split(',').filter_map(|t| t.split_once('=')).map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string())).collect())
                .unwrap_or_default(),
        }
    }

    fn selects(&self, o: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && self.node.as_deref().is_none_or(|n| o["spec"]["nodeName"].as_str() == Some(n))
            && self.labels.iter().all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v))
    }
}

fn respond_json(s: &mut TcpStream, code: u16, reason: &str, body: &Value) -> std::io::Result<()> {
    respond(s, code, reason, &body.to_string())
}

fn respond(s: &mut TcpStream, code: u16, reason: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nAudit-Id: 6d1e0b4a-0000-4000-8000-{:012x}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        std::process::id(),
        body.len()
    )?;
    s.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(s, "{:x}\r\n{data}\r\n", data.len())?;
    s.flush()
}

/// One request on one connection, then close.
fn serve_one(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
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
    let (method, uri) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mode = {
        let mut st = shared.lock();
        let logged: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        st.requests.push(format!("{method} {path}?{}", logged.join("&")));
        st.mode
    };
    match mode {
        Mode::Healthy => {}
        Mode::Fail => return respond_json(&mut s, 500, "Internal Server Error", &status(500, "InternalError", "etcd is down")),
        Mode::Garbage => return respond(&mut s, 200, "OK", "<html>this is a captive portal, not an apiserver</html>"),
    }
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
    let Some(t) = target(path) else {
        return respond_json(&mut s, 404, "Not Found", &status(404, "NotFound", "the server could not find the requested resource"));
    };
    let sel = Selector::new(&t, &params);
    if let Some(name) = &t.name {
        let found = shared.lock().objects.get(t.kind).and_then(|o| o.values().find(|o| o["metadata"]["name"].as_str() == Some(name) && sel.selects(o)).cloned());
        return match found {
            Some(o) => respond_json(&mut s, 200, "OK", &o),
            None => respond_json(&mut s, 404, "Not Found", &status(404, "NotFound", &format!("{} \"{name}\" not found", t.kind.to_lowercase()))),
        };
    }
    if !matches!(params.get("watch").map(String::as_str), Some("1" | "true")) {
        let list = {
            let st = shared.lock();
            // List items come without apiVersion/kind, as the apiserver sends them.
            let mut items: Vec<Value> = st
                .objects
                .get(t.kind)
                .into_iter()
                .flat_map(|o| o.values())
                .filter(|o| sel.selects(o))
                .map(|o| {
                    let mut item = o.clone();
                    if let Some(m) = item.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    item
                })
                .collect();
            items.extend(st.junk.get(t.kind).into_iter().flatten().cloned());
            json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version, "metadata": {"resourceVersion": st.rv.to_string()}, "items": items})
        };
        return respond_json(&mut s, 200, "OK", &list);
    }
    watch(s, shared, &t, &sel, &params)
}

/// A watch: the events after the asked resourceVersion, a BOOKMARK when
/// asked for, then live lines until the timeout, `close_watches` or stop.
fn watch(mut s: TcpStream, shared: &Shared, t: &Target, sel: &Selector, params: &BTreeMap<String, String>) -> std::io::Result<()> {
    let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(WATCH_HOLD, Duration::from_secs);
    let end = Instant::now() + timeout.min(WATCH_HOLD);
    // The backlog and the point live lines start from, under one lock: no
    // event falls between them.
    let (backlog, mut seen, closes, rv) = {
        let st = shared.lock();
        let backlog: Vec<String> = st.lines.iter().filter(|l| l.kind == t.kind && l.rv.is_some_and(|rv| rv > since) && sel.selects(&l.object)).map(|l| l.text.clone()).collect();
        (backlog, st.seq, st.closes, st.rv)
    };
    write!(s, "HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")?;
    for line in &backlog {
        chunk(&mut s, line)?;
    }
    if params.get("allowWatchBookmarks").is_some_and(|v| v == "true") {
        let bookmark = json!({"type": "BOOKMARK", "object": {"kind": t.kind, "apiVersion": t.api_version, "metadata": {"resourceVersion": rv.to_string()}}});
        chunk(&mut s, &format!("{bookmark}\n"))?;
    }
    loop {
        let live = {
            let mut st = shared.lock();
            while st.seq == seen && st.closes == closes && !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
                st = shared.changed.wait_timeout(st, Duration::from_millis(50)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            if st.closes != closes || shared.stop.load(Ordering::Relaxed) || Instant::now() >= end {
                break;
            }
            let live: Vec<String> = st.lines.iter().filter(|l| l.seq > seen && l.kind == t.kind && (l.rv.is_none() || sel.selects(&l.object))).map(|l| l.text.clone()).collect();
            seen = st.seq;
            live
        };
        for line in &live {
            chunk(&mut s, line)?;
        }
    }
    // The end of the stream; the client may be gone already.
    let _ = s.write_all(b"0\r\n\r\n");
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

/// A kubeconfig file for the fake (plain HTTP, no credentials); removed on drop.
pub struct Kubeconfig(pub PathBuf);

impl Kubeconfig {
    pub fn write(server: SocketAddr) -> Kubeconfig {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!("eo-{}-{}-kubeconfig.yaml", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{server}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n    namespace: default\ncurrent-context: fake\nusers:\n- name: agent\n  user: {{}}\npreferences: {{}}\n"
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        Kubeconfig(path)
    }
}

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        // Gone already is fine.
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let t = target("/api/v1/pods").expect("pods");
        assert_eq!((t.kind, t.namespace, t.name), ("Pod", None, None));
        let t = target("/api/v1/namespaces/payments/pods/api-7d9f").expect("one pod");
        assert_eq!((t.kind, t.namespace.as_deref(), t.name.as_deref()), ("Pod", Some("payments"), Some("api-7d9f")));
        let t = target("/apis/discovery.k8s.io/v1/endpointslices").expect("slices");
        assert_eq!(t.api_version, "discovery.k8s.io/v1");
        assert_eq!(target("/api/v1/nodes/node-a").and_then(|t| t.name).as_deref(), Some("node-a"));
        assert!(target("/api/v1/namespaces/x/nodes").is_none() && target("/api/v1/secrets").is_none() && target("/api/v1/podsx").is_none());
    }
}
