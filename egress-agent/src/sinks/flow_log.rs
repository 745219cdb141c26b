//! The JSON flow log (`run --log-flows`): every record shown to people, one
//! JSON line each on stdout, as the local API serves it.
use std::io::{Stdout, Write as _};

use crate::records::Record;

pub struct FlowLog {
    out: Stdout,
}

impl FlowLog {
    pub fn stdout() -> Self {
        Self { out: std::io::stdout() }
    }

    /// One line, flushed (a closed stdout is not the agent's problem).
    pub fn write(&self, r: &Record) {
        let mut o = self.out.lock();
        // A closed or full stdout must not stop the agent: the line is lost.
        let _ = writeln!(o, "{}", r.json_line()).and_then(|()| o.flush());
    }
}
