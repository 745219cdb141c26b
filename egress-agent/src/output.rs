//! Rendering flow records for people (table) and programs (JSON lines).
use std::net::SocketAddr;

use crate::record::FlowRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    Table,
    /// One JSON object per line.
    Json,
}

pub const TABLE_HEADER: &str = "TIME         NAMESPACE        POD/UNIT                 PID     COMM             SRC                    DST                            VERDICT   LAT        RETX  REASON";

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// Cut a cell to `width` characters, marking the cut with `…`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

pub fn latency(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2}s", ms / 1000.0) } else { format!("{ms:.2}ms") }
}

pub fn table_row(r: &FlowRecord) -> String {
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let reason = r.reason.map_or("-", |x| x.as_str());
    let dst = fit(&r.dst_name.clone().unwrap_or_else(|| addr(r.dst)), 30);
    let ns = fit(r.namespace.as_deref().unwrap_or("-"), 16);
    let who = fit(r.pod.as_deref().or(r.unit.as_deref()).or(r.pod_uid.as_deref()).unwrap_or("-"), 24);
    let comm = fit(&r.comm, 16);
    let src = fit(&addr(r.src), 22);
    format!(
        "{time:<12} {ns:<16} {who:<24} {:<7} {comm:<16} {src:<22} {dst:<30} {:<9} {:<10} {:<5} {reason}",
        r.pid,
        r.verdict.as_str(),
        latency(r.latency_ms),
        r.retransmits,
    )
}

pub fn json_line(r: &impl serde::Serialize) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// One line for a stitched chain: who, target, each leg, the verdict.
pub fn chain_line(c: &crate::chains::ChainRecord) -> String {
    let who = c.pod.as_deref().or(c.unit.as_deref()).unwrap_or(&c.comm);
    let legs: Vec<String> = c
        .legs
        .iter()
        .map(|l| {
            let what = l.proxy_status.map_or_else(|| l.reason.map_or(l.verdict.as_str().to_string(), |r| r.as_str().to_string()), |s| s.to_string());
            format!("{}[{what}]", l.hop)
        })
        .collect();
    let verdict = match (&c.failed_hop, c.reason) {
        (Some(h), Some(r)) => format!("{} at {h}: {}", c.verdict.as_str(), r.as_str()),
        _ => c.verdict.as_str().to_string(),
    };
    format!("{} {who} -> {}  via {}  => {verdict}", c.time.get(11..23).unwrap_or(&c.time), c.target.as_deref().unwrap_or("-"), legs.join(" > "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::Phase, verdict::{Reason, Verdict}};

    fn rec() -> FlowRecord {
        FlowRecord {
            time: "2026-11-21T22:01:02.345Z".into(), phase: Phase::Connect, pid: 4242, tid: 4243, comm: "curl".into(),
            cgroup_id: 9, netns: 4026531840, src: Some("10.0.0.2:40000".parse().expect("a")),
            dst: Some("10.96.0.10:3128".parse().expect("a")), dst_actual: Some("10.0.1.5:3128".parse().expect("a")),
            verdict: Verdict::Failed, reason: Some(Reason::Timeout), errno: 110, latency_ms: 3012.5, retransmits: 2,
            syn_retransmits: 2, duration_ms: None, flow_id: "ff-1".into(), ..FlowRecord::default()
        }
    }

    #[test]
    fn json_has_documented_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&rec())).expect("json");
        for k in ["time", "pid", "comm", "cgroup_id", "src", "dst", "verdict", "reason", "latency_ms", "retransmits"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["verdict"], "failed");
        assert_eq!(v["reason"], "timeout");
        assert_eq!(v["dst"], "10.96.0.10:3128");
        assert_eq!(v["dst_actual"], "10.0.1.5:3128");
        assert_eq!(v["phase"], "connect");
    }

    #[test]
    fn table_row_columns() {
        let row = table_row(&rec());
        assert!(row.starts_with("22:01:02.345 -                -                        4242    curl "), "{row}");
        assert!(row.contains(" 10.96.0.10:3128 "));
        assert!(row.contains("failed") && row.contains("3.01s") && row.ends_with("timeout"), "{row}");
        let header_cols: Vec<&str> = TABLE_HEADER.split_whitespace().collect();
        assert_eq!(header_cols, ["TIME", "NAMESPACE", "POD/UNIT", "PID", "COMM", "SRC", "DST", "VERDICT", "LAT", "RETX", "REASON"]);
        // Columns line up with the header.
        let mut r = rec();
        r.namespace = Some("intra-proxy".into());
        r.pod = Some("squid-7d9f-a-very-long-generated-pod-name".into());
        r.dst_name = Some("intra-proxy/squid-proxy-service-with-a-long-name:3128".into());
        let row = table_row(&r);
        for col in ["PID", "COMM", "SRC", "DST", "VERDICT"] {
            let at = TABLE_HEADER.find(col).expect("col");
            let prefix: String = row.chars().take(at).collect();
            assert!(prefix.ends_with(' '), "column {col} misaligned:\n{TABLE_HEADER}\n{row}");
        }
    }
}
