//! The one duration grammar, for the configuration file (`dns.timeout`,
//! `probes.interval`, …) and the command line (`--since`): a number and a
//! unit, or several in a row (`1h30m`); the number may have decimals
//! (`1.5s`); units `ms`, `s`, `m`, `h`, `d`; a bare number is seconds.
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (e.g. 30s, 1.5s, 500ms, 5m, 1h30m, 2d)")]
    Malformed(String),
    #[error("`{input}`: unknown unit `{unit}` (use ms, s, m, h, d)")]
    Unit { input: String, unit: String },
    #[error("`{0}` is out of range")]
    Range(String),
}

/// `90`, `1.5s`, `500ms`, `5m`, `1h30m`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let input = s.trim();
    let malformed = || DurationError::Malformed(input.to_string());
    let mut nanos = 0f64;
    let mut rest = input;
    if rest.is_empty() {
        return Err(malformed());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| malformed())?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            // A bare number is seconds, alone only (`1h30` is a typo).
            "" if num_end == input.len() => 1e9,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            "d" => 86_400e9,
            "" => return Err(malformed()),
            u => return Err(DurationError::Unit { input: input.to_string(), unit: u.to_string() }),
        };
        nanos += value * scale;
        rest = tail;
    }
    let nanos = nanos.round();
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(DurationError::Range(input.to_string()));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar() {
        let ok = |s: &str| parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1500ms"), Duration::from_millis(1500));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("2d"), Duration::from_secs(172_800));
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok("7.25"), Duration::from_millis(7250));
        assert_eq!(ok(" 5m "), Duration::from_secs(300));
        for bad in ["", "x", "m", "5x", "1h30", "1..5s", "-5s", "5 s", "1e3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse_duration("3w"), Err(DurationError::Unit { .. })));
        assert!(matches!(parse_duration("99999999999999d"), Err(DurationError::Range(_))));
    }
}
