//! Results from the consoles (`EGRESS-KT …` markers) and the printed
//! matrix: kernel × test, then verifier instruction counts per program.
use std::collections::BTreeMap;

const MARK: &str = "EGRESS-KT ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Pass(String),
    Fail(String),
    Skip(String),
}

/// One kernel's column.
#[derive(Debug, Default, Clone)]
pub struct Column {
    pub kernel: String,
    pub release: String,
    /// Test order as reported.
    pub tests: Vec<(String, Cell)>,
    /// program → (verified insns, xlated insns, status)
    pub insns: BTreeMap<String, (String, String, String)>,
}

impl Column {
    pub fn failed(&self) -> bool {
        self.tests.iter().any(|(_, c)| matches!(c, Cell::Fail(_)))
    }
}

/// Parse a console; `problem` (timeout, no end marker) becomes a failing `boot` row.
pub fn parse(kernel: &str, text: &str, problem: Option<String>) -> Column {
    let mut col = Column { kernel: kernel.to_string(), ..Column::default() };
    let mut done = false;
    for line in text.lines() {
        let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else { continue };
        let mut w = rest.splitn(2, ' ');
        match (w.next(), w.next().unwrap_or("")) {
            (Some("kernel"), r) => col.release = r.trim().to_string(),
            (Some("done"), _) => done = true,
            (Some("result"), r) => {
                let mut f = r.splitn(3, ' ');
                let (test, word, detail) = (
                    f.next().unwrap_or("?"),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or("").to_string(),
                );
                let cell = match word {
                    "pass" => Cell::Pass(detail),
                    "skip" => Cell::Skip(detail),
                    _ => Cell::Fail(detail),
                };
                col.tests.push((test.to_string(), cell));
            }
            (Some("insns"), r) => {
                let mut f = r.splitn(4, ' ');
                let prog = f.next().unwrap_or("?").to_string();
                let v = f.next().unwrap_or("-").to_string();
                let x = f.next().unwrap_or("-").to_string();
                col.insns.insert(prog, (v, x, f.next().unwrap_or("").to_string()));
            }
            _ => {}
        }
    }
    let problem = problem
        .or_else(|| (!done).then(|| "no end marker on the console (crash or panic?)".to_string()));
    if let Some(p) = problem {
        let tail: Vec<&str> =
            text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        col.tests.insert(
            0,
            ("boot".to_string(), Cell::Fail(format!("{p}; console tail: {}", tail.join(" | ")))),
        );
    }
    col
}

fn word(c: &Cell) -> &'static str {
    match c {
        Cell::Pass(_) => "pass",
        Cell::Fail(_) => "FAIL",
        Cell::Skip(_) => "skip",
    }
}

/// The matrix as text.
pub fn render(cols: &[Column]) -> String {
    let mut out = String::new();
    let mut tests: Vec<String> = Vec::new();
    for c in cols {
        for (t, _) in &c.tests {
            if !tests.contains(t) {
                tests.push(t.clone());
            }
        }
    }
    let w = 10;
    out.push_str(&format!("{:<22}", "TEST \\ KERNEL"));
    for c in cols {
        out.push_str(&format!(" {:<w$}", c.kernel));
    }
    out.push('\n');
    for t in &tests {
        out.push_str(&format!("{t:<22}"));
        for c in cols {
            let cell = c.tests.iter().find(|(n, _)| n == t).map_or("-", |(_, c)| word(c));
            out.push_str(&format!(" {cell:<w$}"));
        }
        out.push('\n');
    }
    out.push_str("\nverifier instructions per program (verified_insns, Linux 5.16+; `Nx` = xlated length where the kernel has no verified count; `skip` = not loaded)\n");
    let mut progs: Vec<&String> = cols.iter().flat_map(|c| c.insns.keys()).collect();
    progs.sort();
    progs.dedup();
    out.push_str(&format!("{:<22}", "PROGRAM \\ KERNEL"));
    for c in cols {
        out.push_str(&format!(" {:<w$}", c.kernel));
    }
    out.push('\n');
    for p in progs {
        out.push_str(&format!("{p:<22}"));
        for c in cols {
            let cell = match c.insns.get(p) {
                None => "-".to_string(),
                Some((v, _, s)) if v != "-" && !s.starts_with("skipped") => v.clone(),
                Some((_, x, s)) if x != "-" && !s.starts_with("skipped") => format!("{x}x"),
                Some(_) => "skip".to_string(),
            };
            out.push_str(&format!(" {cell:<w$}"));
        }
        out.push('\n');
    }
    out.push_str("\ndetails:\n");
    for c in cols {
        out.push_str(&format!(
            "  [{}] {}\n",
            c.kernel,
            if c.release.is_empty() { "?" } else { &c.release }
        ));
        for (t, cell) in &c.tests {
            let (Cell::Pass(d) | Cell::Fail(d) | Cell::Skip(d)) = cell;
            out.push_str(&format!("    {t:<20} {:<4} {d}\n", word(cell)));
        }
        for (p, (_, _, s)) in &c.insns {
            if s.starts_with("skipped") || s.starts_with("standby") {
                out.push_str(&format!("    program {p}: {s}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_and_flags_missing_end() {
        let text = "noise\n[ 1.0] EGRESS-KT kernel 5.10.0-46-cloud-amd64\nEGRESS-KT insns set_state 1200 900 loaded\nEGRESS-KT insns canary - - skipped: unknown func\nEGRESS-KT result check pass ok\nEGRESS-KT result ipv6 fail no record\nEGRESS-KT done\n";
        let c = parse("5.10", text, None);
        assert_eq!(c.release, "5.10.0-46-cloud-amd64");
        assert_eq!(c.tests.len(), 2);
        assert!(c.failed());
        assert_eq!(c.insns["set_state"].0, "1200");
        let m = render(&[c]);
        assert!(
            m.contains("ipv6") && m.contains("FAIL") && m.contains("1200") && m.contains("skip")
        );
        let cut = parse("6.1", "EGRESS-KT result check pass ok\n", None);
        assert!(cut.failed());
        assert_eq!(cut.tests[0].0, "boot");
    }
}
