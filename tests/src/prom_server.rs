//! A real Prometheus server (Debian's `prometheus` package) as a child
//! process: loopback only, a temporary config, rule file and TSDB directory,
//! killed by PID and its directory removed on drop.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::agent::{free_port, http_get};

pub struct PromServer {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// The rule file with every `for:` set to `for_` (so a test sees an alert
/// fire within seconds rather than minutes). Nothing else is changed.
pub fn rules_with_short_for(rules: &str, for_: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: {for_}", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl PromServer {
    /// Start Prometheus scraping `target` as job `job` every `every`, and
    /// evaluating `rules` (file text) at the same interval.
    pub fn start(target: SocketAddr, job: &str, rules: &str, every: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "eo-prometheus-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(dir.join("rules.yml"), rules)?;
        let config = format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: {job:?}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            dir.join("rules.yml").display().to_string()
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("prometheus.log"))?))
            .spawn()
            .context("starting prometheus (Debian package prometheus)")?;
        let mut me = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/-/ready").is_err() {
            if let Some(st) = me.child.try_wait()? {
                bail!("prometheus exited ({st}):\n{}", me.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 30 s:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(me)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` of a `"status":"success"` answer.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let body = http_get(self.addr, path)?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        if v["status"] != "success" {
            bail!("{path}: {body}");
        }
        Ok(v["data"].clone())
    }

    /// `/api/v1/alerts`: every alert, pending or firing.
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.api("/api/v1/alerts")?["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Instant query (`q` URL-safe: letters, digits, `_{}="`, no spaces).
    pub fn query(&self, q: &str) -> anyhow::Result<Vec<Value>> {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        Ok(self.api(&format!("/api/v1/query?query={enc}"))?["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_for_lines_change() {
        let r = "groups:\n  - rules:\n      - alert: A\n        expr: x > 0\n        for: 5m\n        labels:\n          for_what: y\n";
        let out = super::rules_with_short_for(r, "5s");
        assert_eq!(out, r.trim_end().replace("for: 5m", "for: 5s"));
    }
}
