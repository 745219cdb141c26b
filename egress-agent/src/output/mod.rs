//! Rendering records for people (tables sized to the terminal, colour on a
//! TTY) and for programs (JSON with stable snake_case field names).
pub mod table;

use std::{io::IsTerminal as _, net::SocketAddr};

use crate::api::RecordRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header, fitted to the terminal width.
    Table,
    /// Every column (PID, source, NAT, proxy status, ids), not truncated.
    Wide,
    /// JSON: an array for a snapshot; one object per line for a stream.
    Json,
    /// One JSON object per line, always.
    Jsonl,
}

impl Format {
    pub fn is_json(self) -> bool {
        matches!(self, Self::Json | Self::Jsonl)
    }
}

/// When to colour the verdict column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

impl Color {
    pub fn enabled(self) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// The terminal's width: the tty's size, else $COLUMNS, else 200.
pub fn terminal_width() -> usize {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills a winsize; stdout may not be a tty (then it fails).
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
        return usize::from(ws.ws_col);
    }
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|&c| c > 0).unwrap_or(200)
}

pub fn addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// Cut a cell to `width` characters, marking the cut with `…`.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

pub fn latency(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2}s", ms / 1000.0) } else { format!("{ms:.2}ms") }
}

/// One JSON line.
pub fn json_line(r: &impl serde::Serialize) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// A record as a JSON line, tagged `"record":"flow"` or `"record":"chain"`.
pub fn record_line(r: RecordRef<'_>) -> String {
    json_line(&r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::{FlowRecord, Phase}, verdict::{Reason, Verdict}};

    #[test]
    fn json_has_documented_fields() {
        let r = FlowRecord {
            time: "2026-11-21T22:01:02.345Z".into(), phase: Phase::Connect, pid: 4242, comm: "curl".into(), cgroup_id: 9,
            dst: Some("10.96.0.10:3128".parse().expect("a")), dst_actual: Some("10.0.1.5:3128".parse().expect("a")),
            verdict: Verdict::Failed, reason: Some(Reason::Timeout), latency_ms: 3012.5, retransmits: 2, ..FlowRecord::default()
        };
        let v: serde_json::Value = serde_json::from_str(&record_line(RecordRef::Flow(&r))).expect("json");
        for k in ["record", "time", "pid", "comm", "cgroup_id", "src", "dst", "verdict", "reason", "latency_ms", "retransmits", "hop", "target", "proxy_status", "chain_id"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!((v["record"].as_str(), v["verdict"].as_str(), v["reason"].as_str()), (Some("flow"), Some("failed"), Some("timeout")));
        assert_eq!((v["dst"].as_str(), v["dst_actual"].as_str(), v["phase"].as_str()), (Some("10.96.0.10:3128"), Some("10.0.1.5:3128"), Some("connect")));
    }

    #[test]
    fn fit_marks_cuts() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("abc", 0), "");
    }
}
