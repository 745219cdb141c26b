//! What the deploy/ files say, read from the files themselves, so tests run
//! the agent the way it is deployed and the manifests cannot drift from what
//! the tests proved.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of `path` as JSON values.
pub fn yaml_docs(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The agent container of the base DaemonSet.
pub fn daemonset_container() -> anyhow::Result<Value> {
    let path = deploy_dir().join("kubernetes/base/daemonset.yaml");
    let ds =
        yaml_docs(&path)?.into_iter().find(|d| d["kind"] == "DaemonSet").context("no DaemonSet")?;
    Ok(ds["spec"]["template"]["spec"]["containers"][0].clone())
}

/// `securityContext.capabilities` of the agent container: (drop, add), as
/// written (`BPF`, `NET_ADMIN`, …).
pub fn daemonset_capabilities() -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let c = daemonset_container()?;
    let caps = &c["securityContext"]["capabilities"];
    let list = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
    };
    Ok((list(&caps["drop"]), list(&caps["add"])))
}

/// `CapabilityBoundingSet` of the VM's systemd unit, without the `CAP_` prefix.
pub fn unit_capabilities() -> anyhow::Result<Vec<String>> {
    let unit = std::fs::read_to_string(deploy_dir().join("gce/egress-agent.service"))?;
    Ok(unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| {
            v.split_whitespace()
                .map(|c| c.trim_start_matches("CAP_").to_string())
                .collect::<Vec<_>>()
        })
        .collect())
}

/// `setpriv` arguments that leave a root process exactly `caps` (as in a
/// container: bounding = permitted = effective, nothing inheritable or
/// ambient, no_new_privs as `allowPrivilegeEscalation: false`), up to `--`.
pub fn setpriv_args(caps: &[String]) -> Vec<String> {
    let mut set = String::from("-all");
    for c in caps {
        set.push_str(&format!(",+{}", c.to_ascii_lowercase()));
    }
    [
        "setpriv",
        "--bounding-set",
        &set,
        "--inh-caps",
        "-all",
        "--ambient-caps",
        "-all",
        "--no-new-privs",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn setpriv_args_keep_only_the_listed_caps() {
        let a = super::setpriv_args(&["BPF".into(), "NET_ADMIN".into()]);
        assert_eq!(a[1..3], ["--bounding-set".to_string(), "-all,+bpf,+net_admin".to_string()]);
        assert_eq!(a.last().map(String::as_str), Some("--"));
    }

    #[test]
    fn daemonset_drops_all_and_adds_some() {
        let (drop, add) = super::daemonset_capabilities().expect("daemonset");
        assert_eq!(drop, ["ALL"]);
        assert!(!add.is_empty());
    }
}
