//! The soak's samples, the slopes fitted to them and the verdict: an upward
//! RSS slope after warm-up (least squares over the samples, more than
//! 1 MiB per 10 minutes), file descriptors that keep growing, or metric
//! label values that keep appearing (what makes series unbounded: a new
//! pod or unit name per series) fail the soak; series as such may grow by
//! a fiftieth (new combinations of known values: a rare verdict met late). Windows shorter than seven minutes (the CI form)
//! cannot tell a slope of that size from the history and the NAT table
//! filling: there bounds hold instead (RSS under 128 MiB, fds +16, series
//! +10 %).
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// One look at the agent.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the soak started.
    pub at: Duration,
    /// Agent runs so far (1 + restarts): samples of one run only are fitted.
    pub run: u32,
    pub rss: u64,
    pub fds: u64,
    pub tracked: f64,
    /// Active-open TCP sockets that exist on the host (every network
    /// namespace, not TIME-WAIT): what the tracked flows should follow.
    pub open: u64,
    pub conntrack: f64,
    pub series: usize,
    /// Distinct (label, value) pairs over every series (histogram `le`
    /// aside): what grows when a label carries unbounded values (pod
    /// names, unit instances), while new series of known values are only
    /// combinations, bounded by the vocabulary.
    pub label_values: usize,
    /// Events lost in any stage but the DNS budget.
    pub lost: f64,
    /// DNS messages cut by the per-cgroup budget (`stage="dns_budget"`):
    /// counted on purpose, one tenant's flood, not a loss of the pipeline.
    pub dns_cut: f64,
    pub produced: f64,
    pub connections: f64,
    pub pods: f64,
}

/// Least-squares slope of y over x.
pub fn least_squares(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Theil–Sen slope (median of pairwise slopes): a spike cannot move it.
pub fn theil_sen(points: &[(f64, f64)]) -> f64 {
    let mut s: Vec<f64> = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if b.0 != a.0 {
                s.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

const MIB: f64 = 1024.0 * 1024.0;
/// The RSS slope that fails a long soak.
pub const RSS_SLOPE_LIMIT_MIB_PER_10MIN: f64 = 1.0;
/// Below [`SLOPE_WINDOW`] the RSS must stay under this (the history and the
/// NAT table are still filling: a rise says nothing yet).
pub const SHORT_RSS_CEILING_MIB: f64 = 128.0;
/// A window at least this long is judged by its slope (a 12-minute soak
/// fits 7.5 minutes: restarts at 1 and 2, warm-up 2, last sample at 11.5).
pub const SLOPE_WINDOW: Duration = Duration::from_secs(420);

/// New (label, value) pairs per 10 minutes that fail a long soak.
pub const LABEL_VALUES_SLOPE_LIMIT: f64 = 2.0;

/// The (label, value) pairs of one series as the text format writes it
/// (`name{a="x",b="y\"z"}`), histogram `le` left out.
pub fn label_pairs(series: &str) -> Vec<(String, String)> {
    let Some(body) = series.split_once('{').and_then(|(_, b)| b.strip_suffix('}')) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        let name = name.trim_start_matches(',').trim();
        if name != "le" {
            out.push((name.to_string(), value));
        }
        rest = &after[end..];
    }
    out
}

/// Distinct (label, value) pairs over `series`.
pub fn label_values(series: &[String]) -> usize {
    let set: std::collections::HashSet<(String, String)> =
        series.iter().flat_map(|s| label_pairs(s)).collect();
    set.len()
}

/// The fitted numbers of the window after warm-up in the last agent run.
#[derive(Debug, Clone, Default)]
pub struct Fit {
    pub window: Duration,
    pub samples: usize,
    pub rss_first_mib: f64,
    pub rss_last_mib: f64,
    pub rss_slope_mib_per_10min: f64,
    pub rss_theil_sen_mib_per_10min: f64,
    pub fds_first: u64,
    pub fds_last: u64,
    pub fds_slope_per_10min: f64,
    pub series_first: usize,
    pub series_last: usize,
    pub series_slope_per_10min: f64,
    pub label_values_first: usize,
    pub label_values_last: usize,
    pub label_values_slope_per_10min: f64,
    pub tracked_first: f64,
    pub tracked_last: f64,
    pub tracked_slope_per_10min: f64,
}

/// Fit the samples of the last run taken at or after `from`; the failures.
pub fn judge(samples: &[Sample], from: Duration) -> (Fit, Vec<String>) {
    let last_run = samples.last().map_or(0, |s| s.run);
    let w: Vec<&Sample> = samples.iter().filter(|s| s.run == last_run && s.at >= from).collect();
    let mut failures = Vec::new();
    let (Some(first), Some(last)) = (w.first(), w.last()) else {
        return (Fit::default(), vec!["no sample after warm-up".into()]);
    };
    let per10 = |f: &dyn Fn(&Sample) -> f64| {
        let pts: Vec<(f64, f64)> = w.iter().map(|s| (s.at.as_secs_f64() / 600.0, f(s))).collect();
        (least_squares(&pts), theil_sen(&pts))
    };
    let (rss_ls, rss_ts) = per10(&|s| s.rss as f64 / MIB);
    let fit = Fit {
        window: last.at.saturating_sub(first.at),
        samples: w.len(),
        rss_first_mib: first.rss as f64 / MIB,
        rss_last_mib: last.rss as f64 / MIB,
        rss_slope_mib_per_10min: rss_ls,
        rss_theil_sen_mib_per_10min: rss_ts,
        fds_first: first.fds,
        fds_last: last.fds,
        fds_slope_per_10min: per10(&|s| s.fds as f64).0,
        series_first: first.series,
        series_last: last.series,
        series_slope_per_10min: per10(&|s| s.series as f64).0,
        label_values_first: first.label_values,
        label_values_last: last.label_values,
        label_values_slope_per_10min: per10(&|s| s.label_values as f64).0,
        tracked_first: first.tracked,
        tracked_last: last.tracked,
        tracked_slope_per_10min: per10(&|s| s.tracked).0,
    };
    if fit.window >= SLOPE_WINDOW {
        if fit.rss_slope_mib_per_10min > RSS_SLOPE_LIMIT_MIB_PER_10MIN {
            failures.push(format!(
                "RSS grows {:.2} MiB per 10 min after warm-up (least squares over {} samples; limit {RSS_SLOPE_LIMIT_MIB_PER_10MIN})",
                fit.rss_slope_mib_per_10min, fit.samples
            ));
        }
        if fit.fds_slope_per_10min > 2.0 {
            failures
                .push(format!("fds grow {:.1} per 10 min after warm-up", fit.fds_slope_per_10min));
        }
        // Unbounded series come with unbounded label values; a rare verdict
        // met late (a reset at one hop) adds series of values already known.
        if fit.label_values_slope_per_10min > LABEL_VALUES_SLOPE_LIMIT {
            failures.push(format!(
                "label values grow {:.1} per 10 min after warm-up ({} → {}; limit {LABEL_VALUES_SLOPE_LIMIT})",
                fit.label_values_slope_per_10min, fit.label_values_first, fit.label_values_last
            ));
        }
    } else if let Some(peak) = w.iter().map(|s| s.rss).max()
        && peak as f64 / MIB > SHORT_RSS_CEILING_MIB
    {
        failures.push(format!(
            "RSS reached {:.1} MiB (short window: ceiling {SHORT_RSS_CEILING_MIB} MiB, half the DaemonSet's limit)",
            peak as f64 / MIB
        ));
    }
    if fit.fds_last > fit.fds_first + 16 {
        failures.push(format!("fds {} → {} after warm-up", fit.fds_first, fit.fds_last));
    }
    // Label sets first met late (a rare verdict: one histogram label set is
    // 23 series) are not growth; a long window judges the slope, a short
    // one allows a tenth more.
    let series_room = if fit.window >= SLOPE_WINDOW {
        (fit.series_first / 50).max(30)
    } else {
        (fit.series_first / 10).max(50)
    };
    if fit.series_last > fit.series_first + series_room {
        failures.push(format!(
            "metric series {} → {} after warm-up (room {series_room})",
            fit.series_first, fit.series_last
        ));
    }
    (fit, failures)
}

/// Series present at the end but not at the start of the window, per
/// metric name (how many, and the series themselves).
pub fn new_series(before: &[String], after: &[String]) -> BTreeMap<String, Vec<String>> {
    let old: std::collections::HashSet<&String> = before.iter().collect();
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in after.iter().filter(|s| !old.contains(s)) {
        let name = s.split('{').next().unwrap_or(s).to_string();
        by_name.entry(name).or_default().push(s.clone());
    }
    by_name
}

pub const TABLE_HEADER: &str = "| t (min) | run | RSS (MiB) | fds | tracked flows | open sockets | conntrack entries | series | label values | lost events | DNS budget cuts | events produced | connections counted | pods |";

/// The samples as a Markdown table.
pub fn table(samples: &[Sample]) -> String {
    let mut t = format!("{TABLE_HEADER}\n|{}\n", "---|".repeat(14));
    for s in samples {
        let _ = writeln!(
            t,
            "| {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64() / 60.0,
            s.run,
            s.rss as f64 / MIB,
            s.fds,
            s.tracked,
            s.open,
            s.conntrack,
            s.series,
            s.label_values,
            s.lost + 0.0,
            s.dns_cut + 0.0,
            s.produced + 0.0,
            s.connections + 0.0,
            s.pods + 0.0
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(min: f64, rss_mib: f64, fds: u64, series: usize) -> Sample {
        Sample {
            at: Duration::from_secs_f64(min * 60.0),
            run: 1,
            rss: (rss_mib * MIB) as u64,
            fds,
            tracked: 0.0,
            open: 0,
            conntrack: 0.0,
            series,
            label_values: series / 10,
            lost: 0.0,
            dns_cut: 0.0,
            produced: 0.0,
            connections: 0.0,
            pods: 0.0,
        }
    }

    #[test]
    fn slopes() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 * i as f64 + 1.0)).collect();
        assert!((least_squares(&pts) - 2.0).abs() < 1e-9);
        assert!((theil_sen(&pts) - 2.0).abs() < 1e-9);
        let mut spiky = pts;
        spiky[5].1 = 100.0;
        assert!((theil_sen(&spiky) - 2.0).abs() < 1e-9, "one spike does not move it");
    }

    #[test]
    fn a_flat_soak_passes_and_a_leak_fails() {
        let flat: Vec<Sample> =
            (0..30).map(|m| s(m as f64, 40.0 + (m % 3) as f64 * 0.2, 30, 500)).collect();
        let (fit, failures) = judge(&flat, Duration::from_secs(300));
        assert!(failures.is_empty(), "{failures:?} {fit:?}");
        assert!(fit.window >= SLOPE_WINDOW);
        // 2 MiB per 10 min: fails.
        let leak: Vec<Sample> =
            (0..30).map(|m| s(m as f64, 40.0 + m as f64 * 0.2, 30, 500)).collect();
        let (fit, failures) = judge(&leak, Duration::from_secs(300));
        assert!((fit.rss_slope_mib_per_10min - 2.0).abs() < 0.01, "{fit:?}");
        assert_eq!(failures.len(), 1, "{failures:?}");
        // Series +10 a minute with a new unit name each (the transient-unit
        // finding): fails on the label values and on the series' room.
        let series: Vec<Sample> = (0..30)
            .map(|m| {
                let mut x = s(m as f64, 40.0, 30, 500 + 10 * m);
                x.label_values = 50 + 10 * m;
                x
            })
            .collect();
        let (_, failures) = judge(&series, Duration::from_secs(300));
        assert!(failures.iter().any(|f| f.contains("label values")), "{failures:?}");
        assert!(failures.iter().any(|f| f.contains("metric series")), "{failures:?}");
        // Rare verdicts met late: +9 series of known values in 20 minutes
        // (the 30-minute soak of 922689f) pass.
        let late: Vec<Sample> = (0..30usize)
            .map(|m| {
                let mut x = s(m as f64, 40.0, 30, 323 + (m.saturating_sub(10) * 9 / 20));
                x.label_values = 60;
                x
            })
            .collect();
        let (_, failures) = judge(&late, Duration::from_secs(600));
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn only_the_last_run_after_warm_up_counts() {
        let mut v: Vec<Sample> = (0..5).map(|m| s(m as f64, 100.0, 30, 500)).collect();
        v.extend((5..20).map(|m| {
            let mut x = s(m as f64, 40.0, 30, 500);
            x.run = 2;
            x
        }));
        let (fit, failures) = judge(&v, Duration::from_secs(360));
        assert_eq!(fit.samples, 14);
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn label_pairs_of_the_text_format() {
        let p = label_pairs(r#"x_bucket{hop="a,b",le="0.5",w="q\"u\\o"}"#);
        assert_eq!(p, vec![("hop".into(), "a,b".into()), ("w".into(), "q\"u\\o".into())]);
        assert!(label_pairs("plain_counter").is_empty());
        let v = vec![
            r#"a{r="x",w="1"}"#.to_string(),
            r#"a{r="y",w="1"}"#.to_string(),
            r#"b{r="x"}"#.to_string(),
        ];
        assert_eq!(label_values(&v), 3);
    }

    #[test]
    fn new_series_by_name() {
        let before = vec!["a{x=\"1\"}".to_string(), "b".to_string()];
        let after = vec![
            "a{x=\"1\"}".into(),
            "a{x=\"2\"}".into(),
            "a{x=\"3\"}".into(),
            "b".into(),
            "c".into(),
        ];
        let n = new_series(&before, &after);
        assert_eq!(n.get("a").map(Vec::len), Some(2));
        assert_eq!(n.get("c").map(Vec::len), Some(1));
    }
}
