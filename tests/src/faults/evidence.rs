//! What a fault row prints beside the full view: the client node's own
//! verdict and the evidence that decided it, and why a row's record never
//! came.
use serde_json::Value;

use super::{Source, native_view};

/// What decided the client leg's own verdict (its `evidence`).
pub(super) fn client_evidence(records: &[Value], pid: u64) -> String {
    records
        .iter()
        .find(|v| {
            v["record"] == "flow"
                && v["pid"].as_u64() == Some(pid)
                && v["phase"] == "connect"
                && v["vantage"] == "client"
        })
        .and_then(|v| v["evidence"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// The client-vantage verdict of the client's request, from its client leg's
/// connect record (`vantage` `client`) or, for a bypass, its direct flow.
pub(crate) fn client_view(records: &[Value], pid: u64) -> String {
    let mine = |v: &&Value| {
        v["record"] == "flow" && v["pid"].as_u64() == Some(pid) && v["phase"] == "connect"
    };
    let leg = |v: &&Value, p: &str| v["leg"].as_str().is_some_and(|l| l.starts_with(p));
    let Some(v) = records.iter().filter(mine).find(|v| leg(v, "client->") || leg(v, "direct"))
    else {
        return "(no client leg)".to_string();
    };
    if v["leg"] == "direct" {
        return format!(
            "{} at direct: {}",
            v["verdict"].as_str().unwrap_or("?"),
            v["reason"].as_str().unwrap_or("-")
        );
    }
    match (v["verdict"].as_str(), v["failed_hop"].as_str(), v["reason"].as_str()) {
        (Some("ok"), _, _) => "ok".to_string(),
        (Some(verdict), Some(h), Some(r)) => format!("{verdict} at {h}: {r}"),
        (Some(verdict), None, r) => format!("{verdict}: {} (no hop named)", r.unwrap_or("-")),
        _ => "?".to_string(),
    }
}

/// What to print instead of a verdict when the row's record never came:
/// what the agent did record of the client's request, so the row says why.
pub(super) fn no_record(
    records: &[Value],
    source: Source,
    pid: u64,
    client_exit: Option<i32>,
) -> String {
    let exit = client_exit.map_or_else(|| "killed".to_string(), |c| format!("exit {c}"));
    if source == Source::Dns {
        return format!("no failed lookup of the proxy's name (client {exit})");
    }
    let legs: Vec<String> = records
        .iter()
        .map(native_view)
        .filter(|v| v["record"] == "flow" && v["pid"].as_u64() == Some(pid))
        .map(|v| leg_summary(&v))
        .collect();
    if legs.is_empty() {
        // Whose flows the agent did see in the row's window: tells a flow
        // the kernel never reported from one put on another process.
        let seen: Vec<String> = records
            .iter()
            .map(native_view)
            .filter(|v| v["record"] == "flow")
            .map(|v| {
                format!(
                    "pid {} {} {} {}{}",
                    v["pid"],
                    v["comm"].as_str().unwrap_or("?"),
                    v["dst"].as_str().unwrap_or("?"),
                    v["verdict"].as_str().unwrap_or("?"),
                    v["reason"].as_str().map(|r| format!("/{r}")).unwrap_or_default()
                )
            })
            .take(12)
            .collect();
        format!(
            "no record of the client pid {pid} (client {exit}); flows in the window: [{}]",
            seen.join("; ")
        )
    } else {
        format!("no chain; client flows: {} (client {exit})", legs.join(", "))
    }
}

/// `leg verdict/reason` of a flow record, for a row's notes.
pub(crate) fn leg_summary(v: &Value) -> String {
    format!(
        "{} {}{}",
        v["leg"].as_str().unwrap_or("no leg"),
        v["verdict"].as_str().unwrap_or("?"),
        v["reason"].as_str().map(|r| format!("/{r}")).unwrap_or_default()
    )
}
