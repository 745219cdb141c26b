//! `deploy/validate.py` keeps the least-exposure decisions from coming back:
//! on a copy of deploy/, each regression below (a host /sys/fs/bpf mount,
//! a privileged base, an unused RBAC verb, a seccomp profile other than the
//! shipped one, an extra capability, a host mount read-only only at its top,
//! the metrics port on every address or without client certificates, a
//! probe on plain HTTP, a surging rollout, a monitor or the VM's scrape job
//! without TLS or without Prometheus' certificate, the VM's agent on every
//! address, a profile that allows mount()) makes it fail, naming the check.
use std::{path::Path, process::Command};

use egress_tests::{image::TempDir, manifests::deploy_dir, require_root};

/// Copy deploy/ (and the workspace Cargo.toml it reads the version from).
fn copy_deploy(to: &Path) {
    let st =
        Command::new("cp").arg("-r").arg(deploy_dir()).arg(to.join("deploy")).status().expect("cp");
    assert!(st.success());
    std::fs::copy(deploy_dir().join("../Cargo.toml"), to.join("Cargo.toml")).expect("Cargo.toml");
}

/// Replace `from` by `to` in `file` (under the copy); the text must be there.
fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let p = root.join("deploy").join(file);
    let text = std::fs::read_to_string(&p).expect("read");
    assert!(text.contains(from), "{file} no longer contains {from:?}: update this test");
    std::fs::write(&p, text.replacen(from, to, 1)).expect("write");
}

fn validate(root: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(root.join("deploy/validate.py"))
        .output()
        .expect("python3 deploy/validate.py");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

/// (file under deploy/, text, replacement)
type Edit = (&'static str, &'static str, &'static str);

#[test]
fn validate_fails_when_an_exposure_comes_back() {
    require_root!();
    let tmp = TempDir::new("least-exposure").expect("tmp");
    let ds = "kubernetes/base/daemonset.yaml";
    let cases: Vec<(&str, Vec<Edit>, &str)> = vec![
        ("unchanged", vec![], ""),
        (
            "host /sys/fs/bpf mounted again",
            vec![
                (
                    ds,
                    "          volumeMounts:\n",
                    "          volumeMounts:\n            - name: bpffs\n              mountPath: /sys/fs/bpf\n",
                ),
                (
                    ds,
                    "      volumes:\n",
                    "      volumes:\n        - name: bpffs\n          hostPath:\n            path: /sys/fs/bpf\n            type: DirectoryOrCreate\n",
                ),
            ],
            "host mounts are exactly",
        ),
        (
            "privileged base",
            vec![(ds, "            privileged: false", "            privileged: true")],
            "agent container is not privileged",
        ),
        (
            "an RBAC verb never used",
            vec![(
                "kubernetes/base/rbac.yaml",
                "verbs: [\"list\", \"watch\"]",
                "verbs: [\"get\", \"list\", \"watch\"]",
            )],
            "ClusterRole verbs",
        ),
        (
            "seccomp RuntimeDefault",
            vec![(
                ds,
                "              type: Localhost\n              localhostProfile: egress-agent.json",
                "              type: RuntimeDefault",
            )],
            "container seccompProfile",
        ),
        (
            "an extra capability",
            vec![(
                ds,
                "                - NET_ADMIN\n",
                "                - NET_ADMIN\n                - SYS_ADMIN\n",
            )],
            "capabilities: add exactly",
        ),
        (
            "cgroup mount read-only at its top only",
            vec![(
                ds,
                "              mountPath: /sys/fs/cgroup\n              readOnly: true\n              recursiveReadOnly: IfPossible\n",
                "              mountPath: /sys/fs/cgroup\n              readOnly: true\n",
            )],
            "recursively read-only",
        ),
        (
            "metrics served on every address",
            vec![(ds, "            - $(HOST_IP):9464\n", "            - 0.0.0.0:9464\n")],
            "bound to the node's IP only",
        ),
        (
            "metrics without client certificates",
            vec![(
                ds,
                "            - --metrics-client-ca\n            - /etc/egress-agent-tls/ca.crt\n",
                "",
            )],
            "/metrics authenticated",
        ),
        (
            "a probe on plain HTTP",
            vec![(ds, "              scheme: HTTPS\n", "              scheme: HTTP\n")],
            "HTTPS on an unauthenticated path",
        ),
        (
            "a surging rollout",
            vec![(ds, "      maxSurge: 0\n", "      maxSurge: 1\n")],
            "maxSurge 0",
        ),
        (
            "ServiceMonitor over http",
            vec![(
                "kubernetes/monitoring/servicemonitor.yaml",
                "      scheme: https\n",
                "      scheme: http\n",
            )],
            "scheme https",
        ),
        (
            "PodMonitor without Prometheus' certificate",
            vec![(
                "kubernetes/monitoring/podmonitor/podmonitor.yaml",
                "        cert:\n          secret:\n            name: egress-agent-metrics-scrape\n            key: tls.crt\n",
                "",
            )],
            "presents what the agent asks for",
        ),
        (
            "the VM's agent on every address",
            vec![(
                "gce/egress-agent.env",
                "EGRESS_METRICS_ADDR=10.128.2.100:9464",
                "EGRESS_METRICS_ADDR=0.0.0.0:9464",
            )],
            "bound to the VM's address",
        ),
        (
            "the VM scraped over http",
            vec![("prometheus/prometheus.yml", "    scheme: https\n", "    scheme: http\n")],
            "scrapes https",
        ),
        // One more name at the head of the first (allow) rule.
        (
            "profile allows mount()",
            vec![(
                "seccomp/egress-agent.json",
                "\"names\": [\n",
                "\"names\": [\n        \"mount\",\n",
            )],
            "forbidden",
        ),
    ];
    for (name, edits, expect) in cases {
        let root = tmp.path().join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
        std::fs::create_dir_all(&root).expect("dir");
        copy_deploy(&root);
        for (file, from, to) in &edits {
            edit(&root, file, from, to);
        }
        let (ok, out) = validate(&root);
        let fails: Vec<&str> = out.lines().filter(|l| l.contains("FAIL")).collect();
        if edits.is_empty() {
            assert!(ok, "the unchanged copy validates:\n{out}");
            continue;
        }
        assert!(!ok, "{name}: validate.py passes:\n{out}");
        assert!(
            fails.iter().any(|l| l.contains(expect)),
            "{name}: no FAIL line naming {expect:?}:\n{}",
            fails.join("\n")
        );
        eprintln!("{name}: {}", fails.join(" | "));
    }
}
