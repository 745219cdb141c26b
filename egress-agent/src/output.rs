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

pub const TABLE_HEADER: &str = "TIME         PID     COMM             SRC                    DST                    VERDICT   LAT        RETX  REASON";

fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_string(), |a| a.to_string())
}

pub fn latency(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2}s", ms / 1000.0) } else { format!("{ms:.2}ms") }
}

pub fn table_row(r: &FlowRecord) -> String {
    let time = r.time.get(11..23).unwrap_or(&r.time);
    let reason = r.reason.map_or("-", |x| x.as_str());
    let dst = match (r.dst, r.dst_actual) {
        (Some(d), Some(a)) if d != a => format!("{d} ({a})"),
        (d, _) => addr(d),
    };
    format!(
        "{time:<12} {:<7} {:<16} {:<22} {:<22} {:<9} {:<10} {:<5} {reason}",
        r.pid,
        r.comm,
        addr(r.src),
        dst,
        r.verdict.as_str(),
        latency(r.latency_ms),
        r.retransmits,
    )
}

pub fn json_line(r: &FlowRecord) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
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
        assert!(row.starts_with("22:01:02.345 4242    curl "), "{row}");
        assert!(row.contains("10.96.0.10:3128 (10.0.1.5:3128)"));
        assert!(row.contains("failed") && row.contains("3.01s") && row.ends_with("timeout"), "{row}");
        let header_cols: Vec<&str> = TABLE_HEADER.split_whitespace().collect();
        assert_eq!(header_cols, ["TIME", "PID", "COMM", "SRC", "DST", "VERDICT", "LAT", "RETX", "REASON"]);
    }
}
