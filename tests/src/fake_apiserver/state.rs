//! The fake API server's state: objects by kind, the lines watchers get,
//! the request log, the answer mode.
use std::{
    collections::BTreeMap,
    sync::{Condvar, Mutex, MutexGuard, atomic::AtomicBool},
};

use serde_json::{Value, json};

/// (kind, API path prefix, resource, namespaced, apiVersion)
/// `Namespace` comes after every namespaced core kind: `/api/v1/namespaces/<ns>/pods`
/// is the pods of a namespace, `/api/v1/namespaces[/<name>]` the namespaces.
pub(super) const RESOURCES: [(&str, &str, &str, bool, &str); 6] = [
    ("Pod", "/api/v1", "pods", true, "v1"),
    ("Service", "/api/v1", "services", true, "v1"),
    ("Node", "/api/v1", "nodes", false, "v1"),
    ("EndpointSlice", "/apis/discovery.k8s.io/v1", "endpointslices", true, "discovery.k8s.io/v1"),
    (
        "NetworkPolicy",
        "/apis/networking.k8s.io/v1",
        "networkpolicies",
        true,
        "networking.k8s.io/v1",
    ),
    ("Namespace", "/api/v1", "namespaces", false, "v1"),
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
pub(super) struct Line {
    pub(super) seq: u64,
    pub(super) kind: &'static str,
    /// The event's resourceVersion; None for a raw line.
    pub(super) rv: Option<u64>,
    /// The object, for selectors; Null for a raw line.
    pub(super) object: Value,
    pub(super) text: String,
}

pub(super) struct State {
    pub(super) rv: u64,
    pub(super) mode: Mode,
    /// kind → objects by `namespace/name` (or `name`).
    pub(super) objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// kind → list items served as they are (undecodable ones).
    pub(super) junk: BTreeMap<&'static str, Vec<Value>>,
    pub(super) lines: Vec<Line>,
    pub(super) seq: u64,
    /// Bumped by `close_watches`.
    pub(super) closes: u64,
    pub(super) requests: Vec<String>,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(super) fn push_event(s: &mut State, kind: &'static str, rv: u64, event: &str, object: Value) {
    s.seq += 1;
    let text = format!("{}\n", json!({"type": event, "object": object}));
    s.lines.push(Line { seq: s.seq, kind, rv: Some(rv), object, text });
}

pub(super) fn kind_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().unwrap_or_default();
    RESOURCES
        .iter()
        .map(|r| r.0)
        .find(|k| *k == kind)
        .unwrap_or_else(|| panic!("object of a kind not served: {object}"))
}

pub(super) fn key_of(object: &Value) -> String {
    let meta = &object["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => panic!("object without metadata.name: {object}"),
    }
}
