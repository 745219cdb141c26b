//! How the library's typed errors are shown where they end up in a log line
//! or a status field: each error says what its layer knows and hands the
//! rest on as its `source()`; [`Chain`] writes the whole chain on one line,
//! `outer: inner: innermost`, as the binary prints errors (`{e:#}`).
use std::{error::Error, fmt};

/// Displays an error followed by its sources.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading config x.yaml")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn one_line_outer_first() {
        let e = Outer { source: std::io::Error::other("no such file") };
        assert_eq!(Chain(&e).to_string(), "reading config x.yaml: no such file");
    }
}
