//! The `workload` label value of a host process: its systemd unit, kept
//! bounded. systemd names many units per run: `systemd-run` without
//! `--unit` makes `run-r<random>.scope` / `run-u<n>.service` /
//! `run-p<pid>-i<n>.scope`, template instances carry their instance
//! (`user@1000.service`, `sshd@3-10.0.0.1:22-10.0.0.9:51234.service`, one per
//! SSH connection), container runtimes outside Kubernetes make
//! `docker-<id>.scope`, `libpod-<id>.scope`. As label values each would be a
//! new series per run, never removed (a 25-minute soak gained ~10 series a
//! minute from such units). So, for the label only (records keep the unit):
//!
//! - `run-….scope` / `run-….service` → `run-*.scope` / `run-*.service`;
//! - `name@instance.suffix` → `name@.suffix` (the template);
//! - any run of 8+ hex digits (with a digit among them) or 3+ decimal digits
//!   in the name → `*` (`docker-*.scope`, `session-*.scope`), UUID groups
//!   included (`app-*.scope` for `app-0f1e…-….scope`);
//! - beyond [`MAX_UNITS`] distinct values per agent, `other` (the cap: what
//!   a naming scheme not foreseen here would otherwise grow without bound).
//!
//! `squid.service`, `cron.service`, `ntp2.service` stay as they are.
use std::{borrow::Cow, collections::HashSet, sync::Mutex};

/// Distinct unit label values one agent exports at most.
pub const MAX_UNITS: usize = 256;
/// The label value of units past the cap.
pub const OTHER: &str = "other";

/// The stable form of a unit name (see the module header).
pub fn stable(unit: &str) -> Cow<'_, str> {
    let (stem, suffix) = match unit.rsplit_once('.') {
        Some((s, x)) if !s.is_empty() => (s, Some(x)),
        _ => (unit, None),
    };
    let with = |s: String| match suffix {
        Some(x) => format!("{s}.{x}"),
        None => s,
    };
    if stem.starts_with("run-") {
        return Cow::Owned(with("run-*".into()));
    }
    if let Some((template, _)) = stem.split_once('@') {
        return Cow::Owned(with(format!("{template}@")));
    }
    let wild = wildcard_ids(stem);
    if wild == stem { Cow::Borrowed(unit) } else { Cow::Owned(with(wild)) }
}

/// Replace id-like tokens (split at anything not alphanumeric) by `*`, runs
/// of `*` and separators collapsed to one `*`.
fn wildcard_ids(s: &str) -> String {
    let tokens: Vec<&str> = s.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let id = |t: &str| {
        let digits = t.bytes().filter(u8::is_ascii_digit).count();
        (t.len() >= 8 && digits > 0 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            || (t.len() >= 3 && digits == t.len())
    };
    // UUID groups shorter than 8 (`4b5a`) go with an id beside them (a
    // word of hex letters, `cafe`, does not).
    let mut wild: Vec<bool> = tokens.iter().map(|t| id(t)).collect();
    for _ in 0..tokens.len() {
        let mut changed = false;
        for i in 0..tokens.len() {
            let t = tokens[i].as_bytes();
            let hexish = t.len() >= 4
                && t.iter().all(u8::is_ascii_hexdigit)
                && t.iter().any(u8::is_ascii_digit);
            let beside = (i > 0 && wild[i - 1]) || wild.get(i + 1).copied().unwrap_or(false);
            if !wild[i] && hexish && beside {
                wild[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Rebuild with the original separators, one `*` per run of wild tokens.
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    let mut in_wild = false;
    for (t, w) in tokens.iter().zip(&wild) {
        let sep = if pos > 0 { s[pos - 1..].chars().next() } else { None };
        if *w {
            if !in_wild {
                if let Some(c) = sep {
                    out.push(c);
                }
                out.push('*');
            }
            in_wild = true;
        } else {
            if let Some(c) = sep {
                out.push(c);
            }
            out.push_str(t);
            in_wild = false;
        }
        pos += t.len() + 1;
    }
    out
}

/// The label values handed out so far, capped at [`MAX_UNITS`].
#[derive(Debug, Default)]
pub struct UnitLabels {
    seen: Mutex<HashSet<String>>,
}

impl UnitLabels {
    /// The label value for `unit`: its stable form, or [`OTHER`] once
    /// [`MAX_UNITS`] others are in use.
    pub fn label<'a>(&self, unit: &'a str) -> Cow<'a, str> {
        let stable = stable(unit);
        let Ok(mut seen) = self.seen.lock() else { return Cow::Borrowed(OTHER) };
        if seen.contains(stable.as_ref()) {
            return stable;
        }
        if seen.len() >= MAX_UNITS {
            return Cow::Borrowed(OTHER);
        }
        seen.insert(stable.to_string());
        stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_instance_names_become_stable() {
        for (unit, label) in [
            ("squid.service", "squid.service"),
            ("ntp2.service", "ntp2.service"),
            ("systemd-resolved.service", "systemd-resolved.service"),
            ("run-r3c7e1f0a9b2d4e6f8a1c3e5b7d9f0a2c.scope", "run-*.scope"),
            ("run-u1234.service", "run-*.service"),
            ("run-p48213-i48214.scope", "run-*.scope"),
            ("run-12.scope", "run-*.scope"),
            ("user@1000.service", "user@.service"),
            ("sshd@3-10.0.0.1:22-10.0.0.9:51234.service", "sshd@.service"),
            ("getty@tty1.service", "getty@.service"),
            (
                "docker-5d41402abc4b2a76b9719d911017c592ae1e7f5c8b0fa2a1f2d3e4b5c6d7e8f9.scope",
                "docker-*.scope",
            ),
            ("libpod-conmon-5d41402abc4b2a76b97.scope", "libpod-conmon-*.scope"),
            ("session-1234.scope", "session-*.scope"),
            (
                "app-gnome-firefox-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.scope",
                "app-gnome-firefox-*.scope",
            ),
            ("backup-20240101.service", "backup-*.service"),
            ("eo-test-4711-902.service", "eo-test-*.service"),
            ("cafe-20240101.service", "cafe-*.service"),
            ("cafe.service", "cafe.service"),
            ("deadbeef.service", "deadbeef.service"),
        ] {
            assert_eq!(stable(unit), label, "{unit}");
        }
    }

    #[test]
    fn a_thousand_transient_units_are_one_label() {
        let labels = UnitLabels::default();
        let mut values = HashSet::new();
        for i in 0..1000u64 {
            values.insert(labels.label(&format!("run-r{:032x}.scope", i * 7919)).into_owned());
            values.insert(labels.label(&format!("run-u{i}.service")).into_owned());
            values.insert(
                labels
                    .label(&format!("sshd@{i}-10.0.0.1:22-10.0.0.9:{}.service", 40000 + i))
                    .into_owned(),
            );
        }
        assert_eq!(values.len(), 3, "{values:?}");
    }

    #[test]
    fn the_flow_metrics_use_the_stable_value_and_records_keep_the_unit() {
        use crate::records::{FlowRecord, Verdict};
        let m = crate::sinks::Metrics::new(None).expect("metrics");
        for i in 0..50 {
            let r = FlowRecord {
                verdict: Verdict::Ok,
                unit: Some(format!("run-r{i:032x}.scope")),
                ..FlowRecord::default()
            };
            m.observe(&r);
        }
        let pod = FlowRecord {
            verdict: Verdict::Ok,
            workload: Some("Deployment/web".into()),
            unit: Some("run-u7.service".into()),
            ..FlowRecord::default()
        };
        m.observe(&pod);
        let text = m.render();
        let series: Vec<&str> =
            text.lines().filter(|l| l.starts_with("egress_connections_total{")).collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(
            series.iter().any(|l| l.contains("workload=\"run-*.scope\"") && l.ends_with(" 50"))
        );
        assert!(
            series.iter().any(|l| l.contains("workload=\"Deployment/web\"")),
            "a pod's workload wins"
        );
    }

    #[test]
    fn the_cap_holds_whatever_the_names() {
        let labels = UnitLabels::default();
        let mut values = HashSet::new();
        // Names no rule knows: each its own value until the cap.
        for i in 0..(MAX_UNITS + 100) {
            let name: String = format!("svc{i}")
                .chars()
                .map(|c| if c.is_ascii_digit() { (b'a' + c as u8 - b'0') as char } else { c })
                .collect();
            values.insert(labels.label(&format!("{name}.service")).into_owned());
        }
        assert_eq!(values.len(), MAX_UNITS + 1, "MAX_UNITS names and `other`");
        assert!(values.contains(OTHER));
        // One seen before the cap keeps its value.
        assert_eq!(labels.label("svcb.service"), "svcb.service");
    }
}
