//! Writing records to stdout in the format the user chose, for `watch` and
//! `flows` alike. A closed pipe (`| head`) ends output quietly.
use std::io::Write as _;

use crate::{
    api::RecordRef,
    chains::ChainRecord,
    output::{
        Format, record_line,
        table::{CHAIN_COLS, FLOW_COLS, Table, chain_cells, flow_cells},
    },
    record::FlowRecord,
};

pub struct Printer {
    /// Print chain records (else flow records).
    chains: bool,
    table: Option<Table>,
    /// `-o json` on a snapshot: one JSON array.
    array: bool,
    printed: usize,
    pub broken: bool,
}

impl Printer {
    /// `snapshot`: the output ends (an array for `-o json`); else a stream.
    pub fn new(format: Format, chains: bool, color: bool, snapshot: bool) -> Self {
        let cols: &[_] = if chains { &CHAIN_COLS } else { &FLOW_COLS };
        let table = match format {
            Format::Table => Some(Table::new(cols, crate::output::terminal_width(), false, color)),
            Format::Wide => Some(Table::new(cols, usize::MAX, true, color)),
            _ => None,
        };
        Self { chains, table, array: snapshot && format == Format::Json, printed: 0, broken: false }
    }

    fn line(&mut self, s: &str) {
        if self.broken {
            return;
        }
        let mut o = std::io::stdout().lock();
        self.broken = writeln!(o, "{s}").and_then(|_| o.flush()).is_err();
    }

    pub fn header(&mut self) {
        let cols: &[_] = if self.chains { &CHAIN_COLS } else { &FLOW_COLS };
        if let Some(t) = &self.table {
            let h = t.header(cols);
            self.line(&h);
        } else if self.array {
            self.line("[");
        }
    }

    fn json(&mut self, r: RecordRef<'_>) {
        let l = record_line(r);
        if self.array {
            let sep = if self.printed > 0 { "," } else { " " };
            self.line(&format!("{sep}{l}"));
        } else {
            self.line(&l);
        }
        self.printed += 1;
    }

    pub fn flow(&mut self, r: &FlowRecord) {
        if self.chains {
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
        if !self.chains {
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

    /// End of a snapshot. Returns how many records were printed.
    pub fn finish(&mut self) -> usize {
        if self.array {
            self.line("]");
        }
        if self.printed == 0 && self.table.is_some() {
            eprintln!("no matching {} records", if self.chains { "chain" } else { "flow" });
        }
        self.printed
    }
}
