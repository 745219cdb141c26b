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
//!   → the object; `fieldSelector=spec.nodeName=<node>` and
//!   `fieldSelector=metadata.name=<name>` and equality `labelSelector`s are
//!   honoured;
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
mod http;
pub mod objects;
mod state;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub use self::state::Mode;
use self::state::{Line, RESOURCES, Shared, State, key_of, kind_of, push_event};
use crate::Agent;

/// How long a watch is held open at most (the real apiserver: `timeoutSeconds`).
pub const WATCH_HOLD: Duration = Duration::from_secs(20);

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
        Self::serve(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    /// A server holding `objects` on a listener the caller bound (e.g. in
    /// a lab's network namespace, where other machines reach it).
    pub fn with_listener(
        listener: TcpListener,
        objects: impl IntoIterator<Item = Value>,
    ) -> FakeApiServer {
        let server = Self::serve(listener);
        for o in objects {
            server.apply(o);
        }
        server
    }

    fn serve(listener: TcpListener) -> FakeApiServer {
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
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
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
                                let _ = http::serve_one(s, &sh);
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
        let mut object = s
            .objects
            .entry(kind)
            .or_default()
            .remove(key)
            .unwrap_or_else(|| panic!("no {kind} {key}"));
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
            .filter(|(p, q)| {
                *p == collection && q.split('&').any(|kv| kv == "watch=1" || kv == "watch=true")
            })
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

/// A kubeconfig file for the fake (plain HTTP, no credentials); removed on drop.
pub struct Kubeconfig(pub PathBuf);

impl Kubeconfig {
    pub fn write(server: SocketAddr) -> Kubeconfig {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "eo-{}-{}-kubeconfig.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
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
