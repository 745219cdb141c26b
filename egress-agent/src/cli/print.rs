//! Writing records to stdout in the format the user chose, for `watch` and
//! `flows` alike. A closed pipe (`| head`) ends output quietly.
use std::io::Write as _;

use crate::{
    api::RecordRef,
    chains::ChainRecord,
    output::{
        Format, record_line,
        table::{CHAIN_COLS, Col, DNS_COLS, FLOW_COLS, Table, chain_cells, dns_cells, flow_cells},
    },
    record::FlowRecord,
};

/// Which records a printer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Flows,
    Chains,
    Dns,
}

impl Kind {
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
            Format::Table => Some(Table::new(cols, crate::output::terminal_width(), false, color)),
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

    fn json(&mut self, r: RecordRef<'_>) {
        let l = record_line(r);
        self.json_text(l);
    }

    fn json_text(&mut self, l: String) {
        if self.array {
            let sep = if self.printed > 0 { "," } else { " " };
            self.line(&format!("{sep}{l}"));
        } else {
            self.line(&l);
        }
        self.printed += 1;
    }

    pub fn flow(&mut self, r: &FlowRecord) {
        if self.kind != Kind::Flows {
            return;
        }
        match &self.table {
            Some(t) => {
                let l = t.render(&flow_cells(r), Some(r.verdict));
                self.line(&l);
                self.printed += 1;
            }
            None => self.json(RecordRef::Flow(r)),
        }
    }

    pub fn chain(&mut self, c: &ChainRecord) {
        if self.kind != Kind::Chains {
            return;
        }
        match &self.table {
            Some(t) => {
                let l = t.render(&chain_cells(c), Some(c.verdict));
                self.line(&l);
                self.printed += 1;
            }
            None => self.json(RecordRef::Chain(c)),
        }
    }

    /// A DNS record, as the agent wrote it.
    pub fn dns(&mut self, d: &serde_json::Value) {
        if self.kind != Kind::Dns {
            return;
        }
        match &self.table {
            Some(t) => {
                let v = match d["verdict"].as_str() {
                    Some("failed") => Some(crate::verdict::Verdict::Failed),
                    Some("ok") => Some(crate::verdict::Verdict::Ok),
                    _ => None,
                };
                let l = t.render(&dns_cells(d), v);
                self.line(&l);
                self.printed += 1;
            }
            None => self.json_text(d.to_string()),
        }
    }

    /// End of a snapshot. Returns how many records were printed.
    pub fn finish(&mut self) -> usize {
        if self.array {
            self.line("]");
        }
        if self.printed == 0 && self.table.is_some() {
            eprintln!("no matching {} records", match self.kind { Kind::Flows => "flow", Kind::Chains => "chain", Kind::Dns => "DNS" });
        }
        self.printed
    }
}
