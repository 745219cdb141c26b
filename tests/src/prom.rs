//! Scrapes of the real agent turned into a `promtool test rules` file.
//!
//! A [`Recording`] holds one sample per scrape attempt (the exposition, or
//! nothing when the scrape failed, as for a down target) and the phases of
//! the run with the alerts each phase must fire. [`Recording::promtool_test`]
//! writes every recorded series as promtool `input_series` with the labels
//! Prometheus would add (`job`, `instance`) plus `up`, and one
//! `alert_rule_test` per alert and checkpoint: the expected alerts with their
//! labels and their annotations rendered from the rule file, `[]` for every
//! alert the phase must not fire.
//!
//! Time: sample `i` is put at `i × interval` of promtool time, whatever the
//! real time between scrapes was (a few seconds). Values are the real
//! counters; only the clock is compressed, so rules must not depend on the
//! absolute per-second rate (ours compare counts and ratios).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

pub type Labels = BTreeMap<String, String>;

/// `k=v` pairs as labels.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// An alert that must fire: its name and the labels of the alert (without
/// `alertname`; the rule's own labels such as `severity` are added from the
/// rule file).
#[derive(Debug, Clone)]
pub struct Expected {
    pub alert: String,
    pub labels: Labels,
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    /// First sample of the phase.
    pub start: usize,
    /// One past the last sample.
    pub end: usize,
    pub expect: Vec<Expected>,
    /// Samples (absolute index) at which the alerts are checked.
    pub checks: Vec<usize>,
}

/// One alerting rule of a rule file: its labels and annotation templates.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
}

/// Alerting rules of a Prometheus rule file, in file order.
pub fn alert_rules(path: &Path) -> anyhow::Result<Vec<AlertRule>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let map = |x: &Value| -> Labels {
        x.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect()
    };
    let mut out = Vec::new();
    for g in v["groups"].as_array().context("no groups")? {
        for r in g["rules"].as_array().into_iter().flatten() {
            if let Some(name) = r["alert"].as_str() {
                out.push(AlertRule {
                    name: name.to_string(),
                    labels: map(&r["labels"]),
                    annotations: map(&r["annotations"]),
                });
            }
        }
    }
    Ok(out)
}

/// Render a template that uses only `{{ $labels.NAME }}` (a missing label is
/// empty, as in Prometheus). Anything else (`$value`, functions) is an error:
/// such annotations cannot be asserted by a test.
pub fn render(template: &str, labels: &Labels) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").context("unclosed {{")? + i;
        let inner = rest[i + 2..end].trim();
        let Some(name) = inner.strip_prefix("$labels.") else {
            bail!("template {{{{ {inner} }}}} is not $labels.NAME: {template}")
        };
        out.push_str(labels.get(name).map_or("", String::as_str));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Exposition text → series (`name{labels}` with `extra` labels merged in,
/// sorted) → value, for metric names `keep` accepts.
pub fn parse_exposition(
    text: &str,
    extra: &Labels,
    keep: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, inner) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        if !keep(name) {
            continue;
        }
        let mut pairs: Vec<String> = split_labels(inner);
        for (k, v) in extra {
            pairs.push(format!("{k}=\"{v}\""));
        }
        pairs.sort();
        out.insert(format!("{name}{{{}}}", pairs.join(",")), value);
    }
    out
}

/// `a="x",b="y,z"` → [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn split_labels(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for c in inner.chars() {
        match c {
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            _ => {}
        }
        escaped = c == '\\' && !escaped;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.into_iter().filter(|p| p.contains('=') && !p.ends_with("=\"\"")).collect()
}

/// Scrapes of one target, and the phases of the run.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub job: String,
    pub instance: String,
    /// Per scrape attempt: the series, or None if the scrape failed.
    pub samples: Vec<Option<BTreeMap<String, f64>>>,
    pub phases: Vec<Phase>,
    /// Real seconds since the start of the recording, per sample.
    pub real_s: Vec<f64>,
    /// The last successful scrape, verbatim.
    pub last_scrape: String,
}

impl Recording {
    pub fn new(job: &str, instance: &str) -> Self {
        Self { job: job.into(), instance: instance.into(), ..Self::default() }
    }

    fn target_labels(&self) -> Labels {
        labels(&[("job", &self.job), ("instance", &self.instance)])
    }

    /// Add one scrape attempt (None = the target did not answer).
    pub fn push(&mut self, scrape: Option<&str>, real_s: f64, keep: &dyn Fn(&str) -> bool) {
        let extra = self.target_labels();
        if let Some(t) = scrape {
            self.last_scrape = t.to_string();
        }
        self.samples.push(scrape.map(|t| parse_exposition(t, &extra, keep)));
        self.real_s.push(real_s);
    }

    /// Value of `series` (as stored) at sample `i`.
    pub fn value(&self, i: usize, series: &str) -> Option<f64> {
        self.samples.get(i)?.as_ref()?.get(series).copied()
    }

    /// Sum of every series of `name` whose labels include `want`, at sample `i`.
    pub fn sum(&self, i: usize, name: &str, want: &[(&str, &str)]) -> f64 {
        let Some(Some(s)) = self.samples.get(i) else { return 0.0 };
        s.iter()
            .filter(|(k, _)| {
                k.split_once('{').is_some_and(|(n, l)| {
                    n == name && want.iter().all(|(a, b)| l.contains(&format!("{a}=\"{b}\"")))
                })
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The promtool unit-test file. `rule_file` as it should appear in
    /// `rule_files` (relative to the test file, or absolute); `rules` the
    /// alerting rules of that file (for labels and annotations).
    pub fn promtool_test(
        &self,
        rule_file: &str,
        rules: &[AlertRule],
        header: &str,
    ) -> anyhow::Result<String> {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut y = String::new();
        for l in header.lines() {
            y.push_str(&format!("# {l}\n"));
        }
        y.push_str(
            "#\n# Phases (sample = minute of promtool time; real seconds since the start):\n",
        );
        for p in &self.phases {
            let real = |i: usize| self.real_s.get(i).copied().unwrap_or(0.0);
            let exp: Vec<String> =
                p.expect.iter().map(|e| format!("{}{:?}", e.alert, e.labels)).collect();
            y.push_str(&format!(
                "#   {:>3}m-{:>3}m  real {:>6.1}s-{:>6.1}s  {:<34} fires: {}\n",
                p.start,
                p.end - 1,
                real(p.start),
                real(p.end - 1),
                p.name,
                if exp.is_empty() { "nothing".into() } else { exp.join(", ") }
            ));
        }
        y.push_str(&format!("rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n", q(rule_file)));
        let mut all: BTreeSet<&String> = BTreeSet::new();
        for s in self.samples.iter().flatten() {
            all.extend(s.keys());
        }
        let target = self.target_labels();
        let up_series = format!(
            "up{{{}}}",
            target.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(",")
        );
        let ups: Vec<&str> =
            self.samples.iter().map(|s| if s.is_some() { "1" } else { "0" }).collect();
        y.push_str(&format!(
            "      - series: {}\n        values: {}\n",
            q(&up_series),
            q(&ups.join(" "))
        ));
        for series in all {
            let vals: Vec<String> = self
                .samples
                .iter()
                .map(|s| {
                    s.as_ref()
                        .and_then(|m| m.get(series))
                        .map_or_else(|| "_".into(), |v| format!("{v}"))
                })
                .collect();
            y.push_str(&format!(
                "      - series: {}\n        values: {}\n",
                q(series),
                q(&vals.join(" "))
            ));
        }
        y.push_str("    alert_rule_test:\n");
        for p in &self.phases {
            for &at in &p.checks {
                y.push_str(&format!("      # phase {:?}, sample {at}\n", p.name));
                for rule in rules {
                    y.push_str(&format!(
                        "      - eval_time: {at}m\n        alertname: {}\n",
                        rule.name
                    ));
                    let mine: Vec<&Expected> =
                        p.expect.iter().filter(|e| e.alert == rule.name).collect();
                    if mine.is_empty() {
                        y.push_str("        exp_alerts: []\n");
                        continue;
                    }
                    y.push_str("        exp_alerts:\n");
                    for e in mine {
                        let mut l = e.labels.clone();
                        l.extend(rule.labels.clone());
                        y.push_str("          - exp_labels:\n");
                        for (k, v) in &l {
                            y.push_str(&format!("              {k}: {}\n", q(v)));
                        }
                        let mut render_labels = l.clone();
                        render_labels.insert("alertname".into(), rule.name.clone());
                        y.push_str("            exp_annotations:\n");
                        for (k, t) in &rule.annotations {
                            y.push_str(&format!(
                                "              {k}: {}\n",
                                q(&render(t, &render_labels)?)
                            ));
                        }
                    }
                }
            }
        }
        Ok(y)
    }
}

/// `promtool test rules FILE`: Ok(output) if it passed.
pub fn promtool_test_rules(file: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(file)
        .output()
        .context("promtool (Debian package prometheus)")?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("promtool test rules {} failed:\n{text}", file.display());
    }
    Ok(text)
}

/// `promtool check metrics` on an exposition: Ok(output) if it passed.
pub fn promtool_check_metrics(exposition: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("promtool")?;
    child.stdin.take().context("stdin")?.write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("promtool check metrics failed:\n{text}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_gets_target_labels_and_drops_empty_ones() {
        let t = "# HELP x y\nx{a=\"1\",b=\"\",c=\"p,q\"} 3\nz 4\nother 1\n";
        let m = parse_exposition(t, &labels(&[("job", "j")]), &|n| n != "other");
        assert_eq!(m.get("x{a=\"1\",c=\"p,q\",job=\"j\"}"), Some(&3.0));
        assert_eq!(m.get("z{job=\"j\"}"), Some(&4.0));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn render_substitutes_labels_only() {
        let l = labels(&[("hop", "gce-proxy")]);
        assert_eq!(
            render("hop {{ $labels.hop }} {{$labels.none}}!", &l).expect("ok"),
            "hop gce-proxy !"
        );
        assert!(render("{{ $value }}", &l).is_err());
    }

    #[test]
    fn test_file_lists_failed_scrapes_as_gaps_and_up_0() {
        let mut r = Recording::new("egress-agent", "n:1");
        r.push(Some("m 1\n"), 0.0, &|_| true);
        r.push(None, 1.0, &|_| true);
        r.phases.push(Phase {
            name: "p".into(),
            start: 0,
            end: 2,
            expect: vec![],
            checks: vec![1],
        });
        let rules =
            vec![AlertRule { name: "A".into(), labels: Labels::new(), annotations: Labels::new() }];
        let y = r.promtool_test("rules.yml", &rules, "h").expect("yaml");
        assert!(
            y.contains(
                "\"up{instance=\\\"n:1\\\",job=\\\"egress-agent\\\"}\"\n        values: \"1 0\""
            ),
            "{y}"
        );
        assert!(y.contains("values: \"1 _\""), "{y}");
        assert!(y.contains("eval_time: 1m\n        alertname: A\n        exp_alerts: []"), "{y}");
    }
}
