//! The fake API server's answers: one request per connection, routed by
//! path to discovery, a collection, one object or a watch.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    WATCH_HOLD,
    state::{Mode, RESOURCES, Shared},
};

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
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
            n => {
                Some(n.strip_prefix('/').filter(|n| !n.is_empty() && !n.contains('/'))?.to_string())
            }
        };
        Some(Target { kind, api_version, namespace, name })
    })
}

/// Which objects a request selects.
struct Selector {
    namespace: Option<String>,
    node: Option<String>,
    name: Option<String>,
    labels: Vec<(String, String)>,
}

impl Selector {
    fn new(t: &Target, params: &BTreeMap<String, String>) -> Self {
        let field = |key: &str| {
            params
                .get("fieldSelector")
                .and_then(|f| f.split(',').find_map(|t| t.strip_prefix(key)).map(str::to_string))
        };
        Self {
            namespace: t.namespace.clone(),
            // The field selectors the agent uses: `spec.nodeName=<node>` (its
            // pod watch) and `metadata.name=<name>` (explain --assemble).
            node: field("spec.nodeName="),
            name: field("metadata.name="),
            // Equality terms only (`k=v,k2=v2`), as kubectl -l sends them.
            labels: params
                .get("labelSelector")
                .map(|l| {
                    l.split(',')
                        .filter_map(|t| t.split_once('='))
                        .map(|(k, v)| (k.trim_end_matches('=').to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn selects(&self, o: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
            && self.node.as_deref().is_none_or(|n| o["spec"]["nodeName"].as_str() == Some(n))
            && self.name.as_deref().is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
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
pub(super) fn serve_one(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
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
        Mode::Fail => {
            return respond_json(
                &mut s,
                500,
                "Internal Server Error",
                &status(500, "InternalError", "etcd is down"),
            );
        }
        Mode::Garbage => {
            return respond(
                &mut s,
                200,
                "OK",
                "<html>this is a captive portal, not an apiserver</html>",
            );
        }
    }
    if method != "GET" {
        return respond_json(
            &mut s,
            405,
            "Method Not Allowed",
            &status(405, "MethodNotAllowed", "read-only fake"),
        );
    }
    // Discovery, as kubectl asks for it before a `get` (legacy JSON forms).
    match path {
        "/version" => {
            return respond_json(
                &mut s,
                200,
                "OK",
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
            );
        }
        "/api" => {
            return respond_json(
                &mut s,
                200,
                "OK",
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
            );
        }
        "/apis" => {
            return respond_json(
                &mut s,
                200,
                "OK",
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            );
        }
        "/api/v1" => {
            let r = |name: &str, singular: &str, kind: &str, namespaced: bool| json!({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": ["get", "list", "watch"]});
            return respond_json(
                &mut s,
                200,
                "OK",
                &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [r("pods", "pod", "Pod", true), r("services", "service", "Service", true), r("nodes", "node", "Node", false), r("namespaces", "namespace", "Namespace", false)]}),
            );
        }
        _ => {}
    }
    let Some(t) = target(path) else {
        return respond_json(
            &mut s,
            404,
            "Not Found",
            &status(404, "NotFound", "the server could not find the requested resource"),
        );
    };
    let sel = Selector::new(&t, &params);
    if let Some(name) = &t.name {
        let found = shared.lock().objects.get(t.kind).and_then(|o| {
            o.values()
                .find(|o| o["metadata"]["name"].as_str() == Some(name) && sel.selects(o))
                .cloned()
        });
        return match found {
            Some(o) => respond_json(&mut s, 200, "OK", &o),
            None => respond_json(
                &mut s,
                404,
                "Not Found",
                &status(
                    404,
                    "NotFound",
                    &format!("{} \"{name}\" not found", t.kind.to_lowercase()),
                ),
            ),
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
fn watch(
    mut s: TcpStream,
    shared: &Shared,
    t: &Target,
    sel: &Selector,
    params: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(WATCH_HOLD, Duration::from_secs);
    let end = Instant::now() + timeout.min(WATCH_HOLD);
    // The backlog and the point live lines start from, under one lock: no
    // event falls between them.
    let (backlog, mut seen, closes, rv) = {
        let st = shared.lock();
        let backlog: Vec<String> = st
            .lines
            .iter()
            .filter(|l| {
                l.kind == t.kind && l.rv.is_some_and(|rv| rv > since) && sel.selects(&l.object)
            })
            .map(|l| l.text.clone())
            .collect();
        (backlog, st.seq, st.closes, st.rv)
    };
    write!(
        s,
        "HTTP/1.1 200 OK\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
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
            while st.seq == seen
                && st.closes == closes
                && !shared.stop.load(Ordering::Relaxed)
                && Instant::now() < end
            {
                st = shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(50))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if st.closes != closes || shared.stop.load(Ordering::Relaxed) || Instant::now() >= end {
                break;
            }
            let live: Vec<String> = st
                .lines
                .iter()
                .filter(|l| {
                    l.seq > seen && l.kind == t.kind && (l.rv.is_none() || sel.selects(&l.object))
                })
                .map(|l| l.text.clone())
                .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let t = target("/api/v1/pods").expect("pods");
        assert_eq!((t.kind, t.namespace, t.name), ("Pod", None, None));
        let t = target("/api/v1/namespaces/payments/pods/api-7d9f").expect("one pod");
        assert_eq!(
            (t.kind, t.namespace.as_deref(), t.name.as_deref()),
            ("Pod", Some("payments"), Some("api-7d9f"))
        );
        let t = target("/apis/discovery.k8s.io/v1/endpointslices").expect("slices");
        assert_eq!(t.api_version, "discovery.k8s.io/v1");
        assert_eq!(target("/api/v1/nodes/node-a").and_then(|t| t.name).as_deref(), Some("node-a"));
        assert!(
            target("/api/v1/namespaces/x/nodes").is_none()
                && target("/api/v1/secrets").is_none()
                && target("/api/v1/podsx").is_none()
        );
    }
}
