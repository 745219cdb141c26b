//! Time as records carry it: kernel CLOCK_MONOTONIC stamps mapped to wall
//! time, and RFC 3339 text (written and read without a date crate).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime − monotonic, in ns, sampled at start.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mono_ns = i128::from(mono_now_ns());
        let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self { offset_ns: real.as_nanos() as i128 - mono_ns }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digit by digit: one allocation, no formatting machinery (one call per record).
    let mut s = String::with_capacity(24);
    let mut put = |v: i64, width: u32, sep: char| {
        for i in (0..width).rev() {
            s.push(char::from(b'0' + (v / 10_i64.pow(i) % 10) as u8));
        }
        if sep != '\0' {
            s.push(sep);
        }
    };
    put(year.clamp(0, 9999), 4, '-');
    put(month, 2, '-');
    put(day, 2, 'T');
    put(rem / 3600, 2, ':');
    put(rem % 3600 / 60, 2, ':');
    put(rem % 60, 2, '.');
    put(i64::from(d.subsec_millis()), 3, 'Z');
    s
}

/// Parse what [`rfc3339`] writes (`YYYY-MM-DDTHH:MM:SS[.fff]Z`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || !s.ends_with('Z')
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = &s[19..s.len() - 1];
    let millis = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.len() <= 9 => {
            f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32) / 1_000_000
        }
        None if frac.is_empty() => 0,
        _ => return None,
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn mono_now_ns() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_305_600_123)),
            "2026-11-22T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0u64, 951_782_400_000, 1_795_305_600_123, 1_700_000_000_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{ms}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-21T22:01:02Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_298_462))
        );
        assert!(
            parse_rfc3339("2026-13-21T22:01:02Z").is_none() && parse_rfc3339("yesterday").is_none()
        );
    }

    #[test]
    fn clock_maps_monotonic_to_now() {
        let c = Clock::new();
        let ns = mono_now_ns();
        let skew = SystemTime::now().duration_since(c.wall(ns)).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
