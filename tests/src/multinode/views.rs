//! What each machine said of one request of the multi-machine table: an
//! agent's own records of it (polled, bounded), a hop machine's view of the
//! link the request crossed, and `explain --assemble`'s view from node A.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    Expect,
    lab::Lab,
    table::{NO_RECORD, matches},
};
use crate::faults::leg_summary;

/// `failed at H: R` (or `ok`, `degraded at H: R`) of a record's verdict.
pub(super) fn verdict_of(v: &Value, hop_key: &str) -> String {
    match (v["verdict"].as_str(), v[hop_key].as_str(), v["reason"].as_str()) {
        (Some("ok"), _, _) => "ok".into(),
        (Some(verdict), Some(h), Some(r)) => format!("{verdict} at {h}: {r}"),
        (Some(verdict), None, Some(r)) => format!("{verdict}: {r} (no hop named)"),
        (verdict, _, _) => verdict.unwrap_or("?").into(),
    }
}

/// A link as its accepting end knows it, from a connect record.
pub(super) fn connect_link(v: &Value) -> Option<(String, String)> {
    let peer = v["snat"].as_str().or_else(|| v["src"].as_str())?;
    let local = v["dst_actual"].as_str().or_else(|| v["dst"].as_str())?;
    Some((peer.to_string(), local.to_string()))
}

/// The hop-vantage record of the accepted connection `link` (its latest).
fn accepted<'a>(records: &'a [Value], link: &(String, String)) -> Option<&'a Value> {
    records.iter().rev().find(|v| {
        v["record"] == "flow"
            && v["vantage"] == "hop"
            && v["src"].as_str() == Some(&link.0)
            && v["dst_actual"].as_str().or_else(|| v["dst"].as_str()) == Some(&link.1)
    })
}

/// Poll agent `i` until one of its records from index `from` on (this
/// row's) matches `pred` (bounded); the record, or None. An earlier row's
/// record never answers for this one (the same failed lookup, say).
pub(super) fn wait(
    lab: &mut Lab,
    i: usize,
    from: usize,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Option<Value>> {
    let deadline = Instant::now() + within;
    loop {
        lab.poll()?;
        let recs = &lab.agents[i].records;
        if let Some(v) = recs[from.min(recs.len())..].iter().rev().find(|v| pred(v)) {
            return Ok(Some(v.clone()));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the hop machine `i` said alone about the request: its hop-vantage
/// record of one of `links`. Waits for it only where the request reached
/// the machine (elsewhere there is nothing to wait for).
pub(super) fn hop_view(
    lab: &mut Lab,
    i: usize,
    mark: usize,
    links: Vec<(String, String)>,
    expect: Expect,
    notes: &mut Vec<String>,
) -> anyhow::Result<String> {
    let within =
        if matches!(expect, Expect::Nothing) { Duration::ZERO } else { Duration::from_secs(8) };
    let ls = links.clone();
    let found = wait(lab, i, mark, within, move |v| {
        ls.iter().any(|l| accepted(std::slice::from_ref(v), l).is_some())
    })?;
    let name = lab.machines[i].name.clone();
    // What the hop's agent said of the request: its hop chain (the answer
    // it gave joined to its own upstream legs), rooted at that accepted
    // connection; the accepted connection's own record until it comes.
    let chain = match &found {
        Some(v) => {
            let flow = v["flow_id"].clone();
            wait(lab, i, mark, Duration::from_secs(3), move |c| {
                c["record"] == "chain" && c["vantage"] == "hop" && c["legs"][0]["flow_id"] == flow
            })?
        }
        None => None,
    };
    let said = match (&chain, &found) {
        (Some(c), _) => verdict_of(c, "failed_hop"),
        (None, Some(v)) => verdict_of(v, "failed_hop"),
        (None, None) => NO_RECORD.to_string(),
    };
    if !matches(&expect, &said)
        && let Some(v) = &found
    {
        notes.push(format!(
            "{name}: its hop-vantage record of {} -> {} said {}: status {}, evidence {}; its hop chain {}",
            v["src"].as_str().unwrap_or("?"),
            v["dst_actual"].as_str().unwrap_or("?"),
            verdict_of(v, "failed_hop"),
            v["proxy_status"],
            v["evidence"],
            chain.as_ref().map_or_else(
                || "did not come".to_string(),
                |c| format!("said {said}, legs {}", c["legs"])
            )
        ));
    } else if !matches(&expect, &said) {
        let own: Vec<String> = lab.agents[i].records[mark..]
            .iter()
            .filter(|v| v["record"] == "flow" && v["synthetic"] != true)
            .map(leg_summary)
            .collect();
        let keys: Vec<String> = links.iter().map(|(p, l)| format!("{p} -> {l}")).collect();
        notes.push(format!(
            "{name}: no hop-vantage record of {}; its own flow records this row: {}",
            if keys.is_empty() { "any link (none known)".into() } else { keys.join(" or ") },
            if own.is_empty() { "none".into() } else { own.join(", ") }
        ));
    }
    Ok(said)
}

/// `egress-agent explain TARGET --assemble -o json` on node A; the
/// assembled verdict of this request's attempt, and a note when it could
/// not be had.
pub(super) fn assembled(
    lab: &Lab,
    target: &str,
    since: Duration,
    mine: &dyn Fn(&Value) -> bool,
) -> anyhow::Result<(String, Option<String>)> {
    let a = lab.a();
    std::thread::sleep(Duration::from_millis(500));
    let bin = if a.is_vm() {
        "/bin/egress-agent".to_string()
    } else {
        crate::agent::agent_bin().display().to_string()
    };
    let window = format!("{}s", since.as_secs() + 3);
    let mut args: Vec<String> = [
        bin.as_str(),
        "explain",
        target,
        "--assemble",
        "-o",
        "json",
        "--since",
        &window,
        "--last",
        "50",
        "--api-socket",
        &lab.agents[0].api_socket,
        "--config",
        &lab.configs[0],
        "--kubeconfig",
        &lab.kubeconfig_on_a,
        "--peer-port",
        &lab.cfg.peer_port.to_string(),
        "--peer-timeout",
        "20s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(lab.certs[0].args());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = a.exec(None, &refs, Duration::from_secs(120))?;
    if o.code != Some(0) {
        return Ok((
            format!("(explain exit {:?})", o.code),
            Some(format!("explain --assemble: {}", o.stderr.trim())),
        ));
    }
    let v: Value =
        serde_json::from_str(&o.stdout).with_context(|| format!("explain output: {}", o.stdout))?;
    let attempts = v["recent"].as_array().cloned().unwrap_or_default();
    let Some(t) = attempts.iter().rev().find(|t| mine(t)) else {
        return Ok((
            "(no attempt)".into(),
            Some(format!("explain --assemble listed no attempt of this request: {}", o.stdout)),
        ));
    };
    let w = &t["assembled"];
    let said = verdict_of(w, "failed_hop");
    let notes: Vec<&str> = w["notes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let decided = w["decided_by"].as_str().unwrap_or("-");
    Ok((
        said,
        Some(format!(
            "assembled: decided by {decided}{}",
            if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) }
        )),
    ))
}
