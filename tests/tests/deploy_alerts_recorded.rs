//! The alert rules of deploy/prometheus/rules.yml against a recording of the
//! real agent in the chain lab (tests/src/alert_lab.rs): every fault fires
//! its alert, healthy traffic fires none, checked by `promtool test rules`
//! on series recorded in this very run. The last scrape also passes
//! `promtool check metrics` and contains every metric name the rules and the
//! dashboard use (deploy/validate.py --metrics-file).
//!
//! `EGRESS_UPDATE_FIXTURES=1` also writes the recording to
//! deploy/prometheus/tests/lab-recorded.test.yml (committed; checked by
//! promtool in every run, root or not, below and in deploy/validate.py).
use std::{path::PathBuf, process::Command};

use egress_tests::{
    alert_lab::{self, PHASE_SAMPLES, SCRAPE_EVERY},
    manifests::deploy_dir,
    prom::{alert_rules, promtool_check_metrics, promtool_test_rules},
    require_root,
};

fn header(rule_note: &str) -> String {
    format!(
        "promtool unit test RECORDED from a real run: tests/tests/deploy_alerts_recorded.rs\n\
         (tests/src/alert_lab.rs) drove the chain lab (real Squid x2, DNAT ClusterIP, NAT,\n\
         origins) with the real egress-agent, one fault per phase, and scraped /metrics\n\
         every {}s real time, {PHASE_SAMPLES} scrapes per phase. Regenerate with\n\
         EGRESS_UPDATE_FIXTURES=1 cargo test -p egress-tests --test deploy_alerts_recorded (as root).\n\
         \n\
         TIME IS COMPRESSED: scrape i is put at minute i of promtool time (interval 1m),\n\
         whatever the real time between scrapes. Values are the real counters; the\n\
         rules compare counts and ratios, which the mapping keeps. A failed scrape\n\
         (agent down) is up=0 and a gap (_) in every other series, as Prometheus sees it.\n\
         Series carry job/instance as Prometheus would add them for target lab-node:9464.\n\
         {rule_note}",
        SCRAPE_EVERY.as_secs()
    )
}

fn committed() -> PathBuf {
    deploy_dir().join("prometheus/tests/lab-recorded.test.yml")
}

#[test]
fn committed_recording_passes_promtool() {
    let out = promtool_test_rules(&committed()).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{out}");
}

#[test]
fn each_fault_fires_its_alert_and_healthy_traffic_none() {
    require_root!();
    let rules_path = deploy_dir().join("prometheus/rules.yml").canonicalize().expect("rules.yml");
    let rules_text = std::fs::read_to_string(&rules_path).expect("rules");
    let rules = alert_rules(&rules_path).expect("alert rules");
    let rec = alert_lab::record(&rules_text, true).expect("recording");

    let dir = std::env::temp_dir().join(format!("eo-alerts-recorded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let file = dir.join("lab-recorded.test.yml");
    let yaml = rec
        .promtool_test(&rules_path.display().to_string(), &rules, &header(""))
        .expect("test file");
    std::fs::write(&file, &yaml).expect("write");
    for p in &rec.phases {
        eprintln!(
            "{:<34} samples {:>3}..{:<3} expect {:?}",
            p.name,
            p.start,
            p.end,
            p.expect.iter().map(|e| (&e.alert, &e.labels)).collect::<Vec<_>>()
        );
    }
    let tested = promtool_test_rules(&file);
    if std::env::var("EGRESS_UPDATE_FIXTURES").is_ok_and(|v| v == "1") && tested.is_ok() {
        let y = rec
            .promtool_test(
                "../rules.yml",
                &rules,
                &header("Rule file: ../rules.yml (the real rules, unchanged)."),
            )
            .expect("test file");
        std::fs::create_dir_all(committed().parent().expect("dir")).expect("mkdir");
        std::fs::write(committed(), y).expect("write fixture");
        promtool_test_rules(&committed()).unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("wrote {}", committed().display());
    }
    match &tested {
        Ok(out) => eprintln!("promtool test rules (recorded this run):\n{out}"),
        Err(e) => {
            let keep = std::env::temp_dir().join("eo-alerts-recorded-failed.test.yml");
            let _ = std::fs::copy(&file, &keep);
            panic!("{e:#}\n(test file kept at {})", keep.display());
        }
    }

    // The real exposition: promtool-valid, and it has every name the rules
    // and the dashboard use (validate.py, with the names planned elsewhere).
    let scrape = dir.join("metrics.txt");
    std::fs::write(&scrape, &rec.last_scrape).expect("scrape");
    let out = promtool_check_metrics(&rec.last_scrape).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("promtool check metrics: ok {}", out.trim());
    let out = Command::new("python3")
        .arg(deploy_dir().join("validate.py"))
        .arg("--metrics-file")
        .arg(&scrape)
        .output()
        .expect("validate.py");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("== 6")
                || l.contains(": in the scrape")
                || l.contains("FAIL")
                || l.contains("validate:")
                || l.contains("note"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "deploy/validate.py --metrics-file (lab scrape) failed:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
