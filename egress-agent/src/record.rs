//! The flow record: what sinks (watch, JSON log, API) see. Field names are
//! stable and snake_case.
use std::{net::SocketAddr, time::{Duration, SystemTime, UNIX_EPOCH}};

use serde::{Deserialize, Serialize};

use crate::{
    remote::DstClass,
    verdict::{Reason, Verdict},
};

/// When in a flow's life the record was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The connect resolved: established or failed.
    #[default]
    Connect,
    /// An established flow closed with a verdict worse than at connect.
    Close,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRecord {
    /// RFC 3339 UTC, millisecond precision.
    pub time: String,
    pub phase: Phase,
    /// Process id (tgid) of the task that called connect().
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// cgroup v2 path of the connecting task.
    pub cgroup: Option<String>,
    pub netns: u32,
    /// From the cgroup path alone (filled without Kubernetes access).
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// From the Kubernetes index.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// Owning workload as `Kind/name` (Deployment resolved through its ReplicaSet).
    pub workload: Option<String>,
    /// systemd unit of a host process.
    pub unit: Option<String>,
    /// Labels of the pod (for hop matching; not shown).
    #[serde(skip)]
    pub pod_labels: Option<std::collections::BTreeMap<String, String>>,
    pub src: Option<SocketAddr>,
    /// The destination the application asked for (its connect() sockaddr).
    pub dst: Option<SocketAddr>,
    /// `namespace/service:port`, `namespace/pod`, or `node/name` when known.
    pub dst_name: Option<String>,
    pub dst_class: Option<DstClass>,
    /// Where the connection really went: after socket-level load balancing
    /// or DNAT (conntrack reply source).
    pub dst_actual: Option<SocketAddr>,
    /// The source address NAT put on the connection, when it did.
    pub snat: Option<SocketAddr>,
    pub verdict: Verdict,
    pub reason: Option<Reason>,
    /// errno of the failure (sk_err), 0 if none.
    pub errno: i32,
    /// Time from SYN_SENT to ESTABLISHED or to the failure.
    pub latency_ms: f64,
    pub retransmits: u32,
    pub syn_retransmits: u32,
    /// The hop this flow goes to: a hop name, `internet` past the last hop,
    /// `direct` for egress that bypassed the chain.
    pub hop: Option<String>,
    /// `client->A`, `A->B`, `A->internet` or `direct`.
    pub leg: Option<String>,
    /// CONNECT target (`host:port`) of a tunnel through a proxy.
    pub target: Option<String>,
    /// The proxy's answer: status code, and its error tag / answering host.
    pub proxy_status: Option<u16>,
    pub proxy_error: Option<String>,
    pub proxy_via: Option<String>,
    /// Established lifetime, on close records.
    pub duration_ms: Option<f64>,
    /// Stable id of the flow in this agent: `<socket address>-<start ns>` in hex.
    pub flow_id: String,
    /// Chain this flow is the client leg of (set when the chain is stitched).
    pub chain_id: Option<String>,
    /// Made by the agent's own prober (its process opened the flow).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub synthetic: bool,
    /// CLOCK_MONOTONIC ns of the flow's start and of this record (for stitching).
    #[serde(skip)]
    pub start_mono_ns: u64,
    #[serde(skip)]
    pub record_mono_ns: u64,
    /// Set once the NAT join was attempted and found its entry.
    #[serde(skip)]
    pub nat_checked: Option<bool>,
    /// A close record that repeats the connect verdict: counted in metrics,
    /// not shown (one line per flow unless it got worse).
    #[serde(skip)]
    pub quiet: bool,
}

/// Converts kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime − monotonic, in ns, sampled at start.
    offset_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let mut mono = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
        let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mono_ns = mono.tv_sec as i128 * 1_000_000_000 + mono.tv_nsec as i128;
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
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = &s[19..s.len() - 1];
    let millis = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.len() <= 9 => f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32) / 1_000_000,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_305_600_123)), "2026-11-22T00:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0u64, 951_782_400_000, 1_795_305_600_123, 1_700_000_000_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{ms}");
        }
        assert_eq!(parse_rfc3339("2026-11-21T22:01:02Z"), Some(UNIX_EPOCH + Duration::from_secs(1_795_298_462)));
        assert!(parse_rfc3339("2026-13-21T22:01:02Z").is_none() && parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn clock_maps_monotonic_to_now() {
        let c = Clock::new();
        let mut mono = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
        let ns = mono.tv_sec as u64 * 1_000_000_000 + mono.tv_nsec as u64;
        let skew = SystemTime::now().duration_since(c.wall(ns)).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
