//! Tables that fit the terminal, and the cells of each record kind: columns have a priority and a width range;
//! the most important columns are kept when the terminal is narrow, and the
//! spare width goes to the columns that benefit. Every row is cut to the
//! layout, so rows never wrap and always line up with the header.
//!
//! Cells carry what the traffic said (process names, CONNECT targets, proxy
//! headers, pod names): every cell is passed through [`printable`] first, so
//! no control character (an ANSI escape, a carriage return, a newline) or
//! bidirectional override reaches the terminal. JSON output is not touched.
use std::{borrow::Cow, net::SocketAddr};

use crate::records::{AggregateRecord, ChainRecord, DnsRecord, FlowRecord, Verdict};

#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    /// Width the column gets at least when shown, and at most when there is room.
    pub min: usize,
    pub max: usize,
    /// 0 = always shown; higher numbers are dropped first.
    pub prio: u8,
    /// Only in `-o wide`.
    pub wide_only: bool,
}

const fn col(name: &'static str, min: usize, max: usize, prio: u8) -> Col {
    Col { name, min, max, prio, wide_only: false }
}
const fn wide(name: &'static str, max: usize) -> Col {
    Col { name, min: max, max, prio: 9, wide_only: true }
}

/// Columns of flow records, in display order.
pub const FLOW_COLS: [Col; 17] = [
    col("TIME", 12, 12, 0),
    col("NAMESPACE", 12, 16, 3),
    col("POD/UNIT", 14, 28, 1),
    col("PID", 7, 7, 5),
    col("COMM", 12, 15, 4),
    wide("SRC", 21),
    col("DST", 21, 32, 0),
    wide("DST-ACTUAL", 21),
    wide("SNAT", 21),
    col("HOP", 10, 14, 2),
    col("TARGET", 22, 32, 2),
    wide("STATUS", 6),
    col("VERDICT", 8, 8, 0),
    col("LAT", 8, 9, 1),
    col("RETX", 4, 4, 5),
    wide("CHAIN", 24),
    col("REASON", 12, 20, 0),
];

/// Columns of chain records, in display order.
pub const CHAIN_COLS: [Col; 9] = [
    col("TIME", 12, 12, 0),
    col("NAMESPACE", 12, 16, 3),
    col("POD/UNIT", 16, 28, 2),
    col("TARGET", 18, 32, 0),
    col("VIA", 16, 56, 0),
    col("VERDICT", 8, 8, 0),
    col("AT", 10, 14, 0),
    wide("CHAIN", 24),
    col("REASON", 10, 20, 0),
];

/// Columns of DNS records, in display order.
pub const DNS_COLS: [Col; 11] = [
    col("TIME", 12, 12, 0),
    col("NAMESPACE", 12, 16, 3),
    col("POD/UNIT", 14, 28, 1),
    col("NAME", 22, 40, 0),
    col("TYPE", 5, 5, 4),
    col("RCODE", 8, 8, 0),
    col("SERVER", 15, 21, 2),
    col("LAT", 8, 9, 1),
    col("HOP", 10, 14, 2),
    col("VERDICT", 8, 8, 0),
    col("REASON", 10, 12, 1),
];

/// A layout: for each column, its width, or None when not shown.
pub struct Table {
    widths: Vec<Option<usize>>,
    /// The last shown column is not padded and is cut only in fitted tables.
    last_cut: Option<usize>,
    verdict_col: Option<usize>,
    color: bool,
}

impl Table {
    /// Fit `cols` to `width` columns, or everything unfitted when `wide`.
    pub fn new(cols: &[Col], width: usize, wide: bool, color: bool) -> Self {
        let verdict_col = cols.iter().position(|c| c.name == "VERDICT");
        if wide {
            return Self {
                widths: cols.iter().map(|c| Some(c.max)).collect(),
                last_cut: None,
                verdict_col,
                color,
            };
        }
        let mut shown: Vec<bool> = cols.iter().map(|c| c.prio == 0 && !c.wide_only).collect();
        let used = |shown: &[bool]| -> usize {
            let w: usize =
                cols.iter().zip(shown).filter(|(_, s)| **s).map(|(c, _)| c.min + 1).sum();
            w.saturating_sub(1)
        };
        for prio in 1..=8 {
            for (i, c) in cols.iter().enumerate() {
                if c.prio == prio && !c.wide_only && !shown[i] {
                    shown[i] = true;
                    if used(&shown) > width {
                        shown[i] = false;
                    }
                }
            }
        }
        let mut widths: Vec<Option<usize>> =
            cols.iter().zip(&shown).map(|(c, s)| s.then_some(c.min)).collect();
        let last = shown.iter().rposition(|s| *s);
        // Spare width: grow columns towards their max, in display order; the
        // last column takes what remains.
        let mut spare = width.saturating_sub(used(&shown));
        for (i, c) in cols.iter().enumerate() {
            if Some(i) == last {
                continue;
            }
            if let Some(w) = widths[i].as_mut() {
                let add = (c.max - *w).min(spare);
                *w += add;
                spare -= add;
            }
        }
        let last_cut = last.map(|i| cols[i].min + spare);
        if let (Some(i), Some(w)) = (last, last_cut) {
            widths[i] = Some(w);
        }
        Self { widths, last_cut, verdict_col, color }
    }

    pub fn header(&self, cols: &[Col]) -> String {
        let cells: Vec<String> = cols.iter().map(|c| c.name.to_string()).collect();
        self.render(&cells, None)
    }

    /// One line from cells given for every column (hidden ones are skipped).
    pub fn render(&self, cells: &[String], verdict: Option<Verdict>) -> String {
        let last = self.widths.iter().rposition(Option::is_some);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&self.widths).enumerate() {
            let Some(w) = *w else { continue };
            if !out.is_empty() {
                out.push(' ');
            }
            let is_last = Some(i) == last;
            let cell = printable(cell);
            let text =
                if is_last && self.last_cut.is_none() { cell.into_owned() } else { fit(&cell, w) };
            let pad = if is_last { 0 } else { w.saturating_sub(text.chars().count()) };
            match (self.color, verdict, Some(i) == self.verdict_col) {
                (true, Some(v), true) => out.push_str(&format!("{}{text}\x1b[0m", ansi(v))),
                _ => out.push_str(&text),
            }
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out
    }
}

/// Characters that must not reach a terminal as they are: C0 and C1
/// controls, DEL, and the bidirectional formatting characters (which reorder
/// what is displayed after them).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character escaped: `\x1b` for ASCII controls,
/// `\u{202e}` for the others. Borrowed when there is none (the usual case).
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn ansi(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "\x1b[32m",
        Verdict::Failed => "\x1b[1;31m",
        Verdict::Degraded => "\x1b[33m",
        Verdict::Unknown => "\x1b[2m",
    }
}

fn opt(s: Option<&str>) -> String {
    s.unwrap_or("-").to_string()
}

fn who(pod: Option<&str>, unit: Option<&str>, uid: Option<&str>) -> String {
    opt(pod.or(unit).or(uid))
}

/// Cells of a flow record, one per [`FLOW_COLS`] entry.
pub fn flow_cells(r: &FlowRecord) -> Vec<String> {
    vec![
        r.time.get(11..23).unwrap_or(&r.time).to_string(),
        opt(r.namespace.as_deref()),
        who(r.pod.as_deref(), r.unit.as_deref(), r.pod_uid.as_deref()),
        r.pid.to_string(),
        r.comm.clone(),
        addr(r.src),
        r.dst_name.clone().unwrap_or_else(|| addr(r.dst)),
        addr(r.dst_actual),
        addr(r.snat),
        opt(r.hop.as_deref()),
        // A TLS flow without a CONNECT line: its server name.
        opt(r.target.as_deref().or(r.sni.as_deref())),
        r.proxy_status.map_or_else(|| "-".into(), |s| s.to_string()),
        r.verdict.as_str().to_string(),
        latency(r.latency_ms),
        r.retransmits.to_string(),
        opt(r.chain_id.as_deref()),
        opt(r.reason.map(|x| x.as_str())),
    ]
}

/// Cells of a counted row (clean flows of one owner to one destination,
/// counted in the kernel) in the flow table's columns: no pid or comm (the
/// kernel counts by cgroup), the verdict with its count (`ok ×123`).
pub fn aggregate_cells(a: &AggregateRecord) -> Vec<String> {
    vec![
        a.time.get(11..23).unwrap_or(&a.time).to_string(),
        opt(a.namespace.as_deref()),
        who(a.pod.as_deref(), a.unit.as_deref(), a.pod_uid.as_deref()),
        "-".to_string(),
        "-".to_string(),
        "-".to_string(),
        a.dst_name.clone().unwrap_or_else(|| addr(a.dst)),
        addr(a.dst),
        "-".to_string(),
        opt(a.hop.as_deref()),
        "-".to_string(),
        "-".to_string(),
        format!("{} ×{}", a.verdict.as_str(), a.count.max(a.closes)),
        latency(a.latency_ms),
        "0".to_string(),
        "-".to_string(),
        opt(a.reason.map(|x| x.as_str())),
    ]
}

/// Cells of a DNS record, one per [`DNS_COLS`] entry.
pub fn dns_cells(d: &DnsRecord) -> Vec<String> {
    vec![
        d.time.get(11..23).unwrap_or(&d.time).to_string(),
        opt(d.namespace.as_deref()),
        who(d.pod.as_deref(), d.unit.as_deref(), d.pod_uid.as_deref()),
        d.name.clone(),
        d.qtype.to_string(),
        d.rcode.to_string(),
        d.server.map_or_else(|| "-".to_string(), |a| a.to_string()),
        latency(d.latency_ms),
        opt(d.hop.as_deref()),
        d.verdict.as_str().to_string(),
        opt(d.reason.map(|x| x.as_str())),
    ]
}

/// `gke-squid[200] > gce-proxy[403]`: each leg's hop and its proxy status,
/// or its verdict/reason when the proxy never answered.
pub fn via(c: &ChainRecord) -> String {
    c.legs
        .iter()
        .map(|l| {
            let what = l.proxy_status.map_or_else(
                || {
                    l.reason
                        .map_or_else(|| l.verdict.as_str().to_string(), |r| r.as_str().to_string())
                },
                |s| s.to_string(),
            );
            format!("{}[{what}]", l.hop)
        })
        .collect::<Vec<_>>()
        .join(" > ")
}

/// Cells of a chain record, one per [`CHAIN_COLS`] entry.
pub fn chain_cells(c: &ChainRecord) -> Vec<String> {
    vec![
        c.time.get(11..23).unwrap_or(&c.time).to_string(),
        opt(c.namespace.as_deref()),
        opt(c
            .pod
            .as_deref()
            .or(c.unit.as_deref())
            .or_else(|| Some(c.comm.as_str()).filter(|s| !s.is_empty()))),
        opt(c.target.as_deref()),
        via(c),
        c.verdict.as_str().to_string(),
        opt(c.failed_hop.as_deref()),
        c.chain_id.clone(),
        opt(c.reason.map(|x| x.as_str())),
    ]
}

/// The terminal's width: the tty's size, else $COLUMNS, else 200.
pub fn terminal_width() -> usize {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills a winsize; stdout may not be a tty (then it fails).
    if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{LegSummary, Reason};

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert!(matches!(printable("curl"), Cow::Borrowed("curl")));
        assert_eq!(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(printable("x\ry\nz\u{7f}\u{9b}"), "x\\x0dy\\x0az\\x7f\\u{9b}");
        assert_eq!(printable("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(printable("zürich ✓"), "zürich ✓");
        // Every text cell of every record kind, in table and wide output.
        let evil = "\x1b]0;pwned\x07\x1b[31m";
        let f = FlowRecord {
            comm: evil.into(),
            pod: Some(format!("p{evil}")),
            namespace: Some(format!("n{evil}")),
            target: Some(format!("{evil}.test:443")),
            hop: Some(format!("h{evil}")),
            dst_name: Some(format!("d{evil}")),
            chain_id: Some(format!("c{evil}")),
            ..rec()
        };
        let c = ChainRecord {
            comm: evil.into(),
            target: Some(evil.into()),
            failed_hop: Some(evil.into()),
            legs: vec![LegSummary { hop: evil.into(), ..LegSummary::default() }],
            ..ChainRecord::default()
        };
        let d = DnsRecord { name: evil.into(), pod: Some(evil.into()), ..DnsRecord::default() };
        for wide in [false, true] {
            for (cols, cells) in [
                (&FLOW_COLS[..], flow_cells(&f)),
                (&CHAIN_COLS[..], chain_cells(&c)),
                (&DNS_COLS[..], dns_cells(&d)),
            ] {
                let row = Table::new(cols, 400, wide, false).render(&cells, None);
                assert!(!row.chars().any(unsafe_char), "{row:?}");
                assert!(row.contains("\\x1b]0;pwned\\x07"), "{row:?}");
            }
        }
        // Colour is the table's own escape, and the only one.
        let row = Table::new(&FLOW_COLS, 400, false, true).render(&flow_cells(&f), Some(f.verdict));
        assert_eq!(row.matches('\x1b').count(), 2, "{row:?}");
    }

    #[test]
    fn fit_marks_cuts() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("abc", 0), "");
    }

    fn rec() -> FlowRecord {
        FlowRecord {
            time: "2026-11-21T22:01:02.345Z".into(),
            pid: 4242,
            comm: "curl".into(),
            namespace: Some("intra-proxy".into()),
            pod: Some("squid-7d9f-a-very-long-generated-pod-name-x".into()),
            dst: Some("10.96.0.10:3128".parse().expect("a")),
            dst_name: Some("intra-proxy/squid-proxy-service-with-a-long-name:3128".into()),
            hop: Some("gke-squid".into()),
            target: Some("login.microsoftonline.example.com:443".into()),
            verdict: Verdict::Failed,
            reason: Some(Reason::ProxyUpstreamError),
            latency_ms: 3012.5,
            ..FlowRecord::default()
        }
    }

    fn starts(header: &str) -> Vec<usize> {
        let b = header.as_bytes();
        (0..b.len()).filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' ')).collect()
    }

    #[test]
    fn fits_80_and_200_columns_and_lines_up() {
        for width in [80, 120, 200] {
            let t = Table::new(&FLOW_COLS, width, false, false);
            let h = t.header(&FLOW_COLS);
            let row = t.render(&flow_cells(&rec()), Some(Verdict::Failed));
            assert!(
                h.chars().count() <= width && row.chars().count() <= width,
                "{width}:\n{h}\n{row}"
            );
            for at in starts(&h) {
                assert!(
                    at == 0 || row.chars().nth(at - 1) == Some(' '),
                    "{width}: column at {at} misaligned:\n{h}\n{row}"
                );
            }
            let names: Vec<&str> = h.split_whitespace().collect();
            for must in ["TIME", "DST", "VERDICT", "REASON", "POD/UNIT", "LAT"] {
                assert!(names.contains(&must), "{width}: {must} missing: {h}");
            }
            if width == 200 {
                assert_eq!(
                    names,
                    [
                        "TIME",
                        "NAMESPACE",
                        "POD/UNIT",
                        "PID",
                        "COMM",
                        "DST",
                        "HOP",
                        "TARGET",
                        "VERDICT",
                        "LAT",
                        "RETX",
                        "REASON"
                    ]
                );
            }
        }
    }

    #[test]
    fn colour_does_not_move_columns() {
        let plain = Table::new(&FLOW_COLS, 120, false, false)
            .render(&flow_cells(&rec()), Some(Verdict::Failed));
        let col = Table::new(&FLOW_COLS, 120, false, true)
            .render(&flow_cells(&rec()), Some(Verdict::Failed));
        assert!(col.contains("\x1b[1;31mfailed\x1b[0m"), "{col}");
        assert_eq!(col.replace("\x1b[1;31m", "").replace("\x1b[0m", ""), plain);
    }

    #[test]
    fn wide_shows_everything_uncut() {
        let t = Table::new(&FLOW_COLS, 80, true, false);
        let h = t.header(&FLOW_COLS);
        assert_eq!(h.split_whitespace().count(), FLOW_COLS.len());
        assert!(t.render(&flow_cells(&rec()), None).ends_with("proxy_upstream_error"));
    }

    #[test]
    fn a_tls_flow_shows_its_server_name_as_target() {
        let tls = FlowRecord {
            sni: Some("api.example.test".into()),
            reason: Some(Reason::TlsFailed),
            ..FlowRecord::default()
        };
        let cells = flow_cells(&tls);
        assert!(cells.contains(&"api.example.test".to_string()), "{cells:?}");
        assert_eq!(cells.last().map(String::as_str), Some("tls_failed"));
        let both = FlowRecord { target: Some("a.test:443".into()), ..tls };
        assert!(flow_cells(&both).contains(&"a.test:443".to_string()), "the CONNECT target first");
    }

    #[test]
    fn chain_via_column() {
        let leg = |hop: &str, status, reason| LegSummary {
            hop: hop.into(),
            proxy_status: status,
            reason,
            verdict: Verdict::Failed,
            ..LegSummary::default()
        };
        let c = ChainRecord {
            time: "2026-11-21T22:01:02.345Z".into(),
            target: Some("a.test:443".into()),
            verdict: Verdict::Failed,
            legs: vec![
                leg("gke-squid", Some(503), None),
                leg("gce-proxy", None, Some(Reason::Timeout)),
            ],
            failed_hop: Some("gce-proxy".into()),
            reason: Some(Reason::Timeout),
            ..ChainRecord::default()
        };
        assert_eq!(via(&c), "gke-squid[503] > gce-proxy[timeout]");
        let t = Table::new(&CHAIN_COLS, 80, false, false);
        let row = t.render(&chain_cells(&c), Some(c.verdict));
        assert!(
            row.chars().count() <= 80 && row.contains("gce-proxy") && row.ends_with("timeout"),
            "{row}"
        );
    }
}
