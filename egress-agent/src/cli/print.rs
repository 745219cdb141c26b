//! Writing records to stdout in the format the user chose, for `watch` and
//! `flows` alike. A closed pipe (`| head`) ends output quietly.
use std::io::{IsTerminal as _, Write as _};

use super::table::{
    CHAIN_COLS, Col, DNS_COLS, FLOW_COLS, Table, aggregate_cells, chain_cells, dns_cells,
    flow_cells, terminal_width,
};
use crate::records::{Record, Verdict};

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
            Self::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Which records a printer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Flows,
    Chains,
    Dns,
}

impl Kind {
    /// The kind of records `r` is.
    pub fn of(r: &Record) -> Self {
        match r {
            Record::Flow(_) | Record::Aggregate(_) => Self::Flows,
            Record::Chain(_) => Self::Chains,
            Record::Dns(_) => Self::Dns,
        }
    }

    fn cols(self) -> &'static [Col] {
        match self {
            Self::Flows => &FLOW_COLS,
            Self::Chains => &CHAIN_COLS,
            Self::Dns => &DNS_COLS,
        }
    }
}

pub struct Printer {
    kind: Kind,
    table: Option<Table>,
    /// `-o json` on a snapshot: one JSON array.
    array: bool,
    printed: usize,
    pub broken: bool,
}

impl Printer {
    /// `snapshot`: the output ends (an array for `-o json`); else a stream.
    pub fn new(format: Format, kind: Kind, color: bool, snapshot: bool) -> Self {
        let cols = kind.cols();
        let table = match format {
            Format::Table => Some(Table::new(cols, terminal_width(), false, color)),
            Format::Wide => Some(Table::new(cols, usize::MAX, true, color)),
            _ => None,
        };
        Self { kind, table, array: snapshot && format == Format::Json, printed: 0, broken: false }
    }

    fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        let mut o = std::io::stdout().lock();
        self.broken = writeln!(o, "{s}").and_then(|_| o.flush()).is_err();
    }

    pub fn header(&mut self) {
        if let Some(t) = &self.table {
            let h = t.header(self.kind.cols());
            self.line(&h);
        } else if self.array {
            self.line("[");
        }
    }

    fn json_text(&mut self, l: &str) {
        if self.array {
            let sep = if self.printed > 0 { "," } else { " " };
            self.line(&format!("{sep}{l}"));
        } else {
            self.line(l);
        }
        self.printed += 1;
    }

    /// A record, when it is of the kind this printer shows.
    pub fn record(&mut self, r: &Record) {
        if Kind::of(r) != self.kind {
            return;
        }
        let Some(t) = &self.table else {
            self.json_text(&r.json_line());
            return;
        };
        let l = match r {
            Record::Flow(f) => t.render(&flow_cells(f), Some(f.verdict)),
            Record::Aggregate(a) => t.render(&aggregate_cells(a), Some(a.verdict)),
            Record::Chain(c) => t.render(&chain_cells(c), Some(c.verdict)),
            // A lookup is ok or failed; nothing else is coloured.
            Record::Dns(d) => {
                t.render(&dns_cells(d), (d.verdict != Verdict::Degraded).then_some(d.verdict))
            }
        };
        self.line(&l);
        self.printed += 1;
    }

    /// End of a snapshot. Returns how many records were printed.
    pub fn finish(&mut self) -> usize {
        if self.array {
            self.line("]");
        }
        if self.printed == 0 && self.table.is_some() {
            eprintln!(
                "no matching {} records",
                match self.kind {
                    Kind::Flows => "flow",
                    Kind::Chains => "chain",
                    Kind::Dns => "DNS",
                }
            );
        }
        self.printed
    }
}
