//! A fake Kubernetes API server for the kube tests.
//!
//! No kube-apiserver can run on the machines this project is built and tested
//! on, so this serves *real-shaped Kubernetes JSON* over plain HTTP on
//! 127.0.0.1, the way the apiserver does for the four collections the index
//! watches (`/api/v1/pods`, `/api/v1/services`, `/api/v1/nodes`,
//! `/apis/discovery.k8s.io/v1/endpointslices`):
//!
//! - `GET <collection>` → a `<Kind>List` with `metadata.resourceVersion`;
//!   items without `apiVersion`/`kind`, as the apiserver sends list items;
//! - `GET <collection>?watch=true&resourceVersion=N` → a chunked stream of
//!   newline-delimited `WatchEvent`s (`ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`,
//!   objects with `apiVersion`/`kind`): the events after `N`, a `BOOKMARK`, then
//!   live events as the test makes changes;
//! - `fieldSelector=spec.nodeName=<node>` is honoured for pods.
//!
//! The test drives it: add/modify/delete objects (each gets the next
//! resourceVersion), put undecodable items into lists, write raw lines into
//! watch streams, make every request fail, and read the request log.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// (collection path, apiVersion, kind)
const COLLECTIONS: [(&str, &str, &str); 4] = [
    ("/api/v1/pods", "v1", "Pod"),
    ("/api/v1/services", "v1", "Service"),
    ("/api/v1/nodes", "v1", "Node"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
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

#[derive(Clone, Debug)]
enum Broadcast {
    Event { kind: &'static str, event: Value },
    Raw { kind: &'static str, line: String },
    CloseWatches,
}

struct Collection {
    /// By `namespace/name` (or `name`).
    objects: BTreeMap<String, Value>,
    /// Extra list items served as they are (undecodable ones).
    junk: Vec<Value>,
    /// (resourceVersion, event) for watches that resume from an older version.
    log: Vec<(u64, Value)>,
}

struct Shared {
    rv: u64,
    mode: Mode,
    collections: BTreeMap<&'static str, Collection>,
    requests: Vec<String>,
}

pub struct FakeApiServer {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<Broadcast>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.events.send(Broadcast::CloseWatches);
        self.task.abort();
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<Broadcast>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => panic!("fixture without metadata.name: {object}"),
    }
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let collections = COLLECTIONS
            .iter()
            .map(|(_, _, kind)| (*kind, Collection { objects: BTreeMap::new(), junk: Vec::new(), log: Vec::new() }))
            .collect();
        let shared = Arc::new(Mutex::new(Shared { rv: 1000, mode: Mode::Healthy, collections, requests: Vec::new() }));
        let (events, _) = broadcast::channel(1024);
        let state = AppState { shared: shared.clone(), events: events.clone() };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { url, shared, events, task }
    }

    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url.parse().expect("server url"))
    }

    /// Adds or replaces an object (`ADDED` / `MODIFIED` to watchers).
    /// The fixture carries `apiVersion` and `kind`, as in a watch event.
    pub fn apply(&self, object: Value) {
        let kind = kind_of(&object);
        let mut shared = lock(&self.shared);
        shared.rv += 1;
        let rv = shared.rv;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let collection = shared.collections.get_mut(kind).expect("known kind");
        let kind_of_event = if collection.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        collection.objects.insert(key, object.clone());
        let event = json!({"type": kind_of_event, "object": object});
        collection.log.push((rv, event.clone()));
        let _ = self.events.send(Broadcast::Event { kind, event });
    }

    /// Deletes an object (`DELETED` with its last state to watchers).
    pub fn delete(&self, kind: &'static str, key: &str) {
        let mut shared = lock(&self.shared);
        shared.rv += 1;
        let rv = shared.rv;
        let collection = shared.collections.get_mut(kind).expect("known kind");
        let mut object = collection.objects.remove(key).unwrap_or_else(|| panic!("no {kind} {key}"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": "DELETED", "object": object});
        collection.log.push((rv, event.clone()));
        let _ = self.events.send(Broadcast::Event { kind, event });
    }

    /// An item served in lists as it is, for objects that do not decode.
    pub fn add_junk(&self, kind: &'static str, item: Value) {
        lock(&self.shared).collections.get_mut(kind).expect("known kind").junk.push(item);
    }

    /// A raw line in every open watch of `kind` (not necessarily JSON).
    pub fn raw_watch_line(&self, kind: &'static str, line: &str) {
        let _ = self.events.send(Broadcast::Raw { kind, line: line.to_owned() });
    }

    /// Ends every open watch stream, as the apiserver does at `timeoutSeconds`.
    pub fn close_watches(&self) {
        let _ = self.events.send(Broadcast::CloseWatches);
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.shared).mode = mode;
    }

    /// Every request so far, as `path?query` with the query decoded and sorted.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared).requests.clone()
    }
}

fn kind_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().unwrap_or_default();
    COLLECTIONS
        .iter()
        .map(|(_, _, k)| *k)
        .find(|k| *k == kind)
        .unwrap_or_else(|| panic!("fixture of unknown kind: {object}"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Only `spec.nodeName=<node>` (the one the index uses) is understood.
fn selected(object: &Value, field_selector: Option<&String>) -> bool {
    match field_selector.and_then(|s| s.strip_prefix("spec.nodeName=")) {
        Some(node) => object["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let params = query(&request);
    let mut shared = lock(&state.shared);
    let logged: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    shared.requests.push(format!("{path}?{}", logged.join("&")));
    match shared.mode {
        Mode::Healthy => {}
        Mode::Fail => {
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, &status(500, "InternalError", "etcd is down"));
        }
        Mode::Garbage => {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from("<html>this is a captive portal, not an apiserver</html>"))
                .expect("response");
        }
    }
    let Some(&(_, api_version, kind)) = COLLECTIONS.iter().find(|(p, _, _)| *p == path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "the server could not find the requested resource"),
        );
    };
    let field_selector = params.get("fieldSelector");
    let rv = shared.rv;
    let collection = shared.collections.get(kind).expect("known kind");

    if !matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
        let mut items: Vec<Value> = collection
            .objects
            .values()
            .filter(|o| selected(o, field_selector))
            .map(|o| {
                // The apiserver leaves apiVersion/kind out of list items.
                let mut item = o.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                item
            })
            .collect();
        items.extend(collection.junk.iter().cloned());
        let list = json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                          "metadata": {"resourceVersion": rv.to_string()}, "items": items});
        return json_response(StatusCode::OK, &list);
    }

    let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut lines: Vec<String> = collection
        .log
        .iter()
        .filter(|(v, e)| *v > since && selected(&e["object"], field_selector))
        .map(|(_, e)| format!("{e}\n"))
        .collect();
    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                          "metadata": {"resourceVersion": rv.to_string()}}});
    lines.push(format!("{bookmark}\n"));
    // Subscribed under the same lock as the replay: no event falls between.
    let live = state.events.subscribe();
    drop(shared);
    let selector = field_selector.cloned();
    let backlog = futures::stream::iter(lines.into_iter().map(|l| Ok::<_, Infallible>(Bytes::from(l))));
    let live = futures::stream::unfold((live, selector), move |(mut rx, selector)| async move {
        loop {
            match rx.recv().await {
                Ok(Broadcast::Event { kind: k, event })
                    if k == kind && selected(&event["object"], selector.as_ref()) =>
                {
                    return Some((Ok(Bytes::from(format!("{event}\n"))), (rx, selector)));
                }
                Ok(Broadcast::Raw { kind: k, line }) if k == kind => {
                    return Some((Ok(Bytes::from(format!("{line}\n"))), (rx, selector)));
                }
                Ok(Broadcast::CloseWatches) | Err(broadcast::error::RecvError::Closed) => return None,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::StreamExt::chain(backlog, live)))
        .expect("response")
}
