//! The agent's container image and podman on this kind of machine: the
//! podman invocation (shared by `cargo xtask image` and the image test), and
//! the DaemonSet's pod spec turned into `podman run` flags, read from the
//! manifest, so the image runs with exactly the privileges it is deployed
//! with and a new security setting in the manifest cannot be left out
//! silently (an unknown one is an error).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::manifests::{deploy_dir, yaml_docs};

/// Repository part of the image name (the DaemonSet's `image:` without tag).
pub const REPOSITORY: &str = "egress-observer/egress-agent";
/// Label holding the hash of what the image was built from (see `cargo xtask image`).
pub const INPUTS_LABEL: &str = "io.egress-observer.inputs";

/// `egress-observer/egress-agent:<workspace version>`.
pub fn tag() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// `podman` with the global options this kind of machine needs: vfs storage
/// (no overlay in a nested container), cgroupfs (no systemd as cgroup
/// manager) and runc (crun refuses the hybrid cgroup mount).
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]);
    c
}

/// Explicit rlimits for `podman run`: root here lacks CAP_SYS_RESOURCE, so
/// the runtime cannot raise the limits to podman's defaults.
pub const ULIMITS: [&str; 4] = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"];

/// `podman image inspect` of `tag`: None when there is no such image.
pub fn inspect(tag: &str) -> Option<Value> {
    let out = podman().args(["image", "inspect", tag]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout).ok()?.as_array()?.first().cloned()
}

/// The base DaemonSet.
pub fn daemonset() -> anyhow::Result<Value> {
    let path = deploy_dir().join("kubernetes/base/daemonset.yaml");
    yaml_docs(&path)?
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in daemonset.yaml")
}

/// What the test supplies for the volumes a node would supply.
pub struct Volumes {
    /// Directory standing in for each `configMap` volume (by volume name).
    pub config_maps: Vec<(String, PathBuf)>,
    /// Directory standing in for each `emptyDir` volume (by volume name):
    /// a host directory, so the test can reach what the agent puts there.
    pub empty_dirs: Vec<(String, PathBuf)>,
    /// Directory standing in for each `secret` volume (by volume name).
    pub secrets: Vec<(String, PathBuf)>,
    /// `spec.nodeName` for `fieldRef` environment variables.
    pub node_name: String,
    /// `status.hostIP` for `fieldRef` environment variables.
    pub host_ip: String,
}

/// The container's run options, taken from a DaemonSet.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// `podman run` flags (no image, no command arguments).
    pub flags: Vec<String>,
    /// The container's `args` (arguments after the entrypoint).
    pub args: Vec<String>,
    /// The uid the agent runs as (`runAsUser`, else the image's 0).
    pub uid: u32,
    /// The seccomp profile file the manifest names (`Localhost`), if any.
    pub seccomp_file: Option<PathBuf>,
}

const POD_SECURITY_KEYS: &[&str] = &["seccompProfile", "runAsUser", "runAsGroup", "runAsNonRoot"];
const CONTAINER_SECURITY_KEYS: &[&str] = &[
    "capabilities",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "allowPrivilegeEscalation",
    "seccompProfile",
];
/// Pod-spec keys with no bearing on the container's privileges or mounts
/// (scheduling, identity, lifecycle), or handled below.
const POD_KEYS: &[&str] = &[
    "serviceAccountName",
    "automountServiceAccountToken",
    "priorityClassName",
    "tolerations",
    "hostNetwork",
    "dnsPolicy",
    "hostPID",
    "hostIPC",
    "securityContext",
    "terminationGracePeriodSeconds",
    "containers",
    "volumes",
];
const CONTAINER_KEYS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "securityContext",
    "resources",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "volumeMounts",
];

fn unknown_keys(v: &Value, known: &[&str], what: &str) -> anyhow::Result<()> {
    if let Some(map) = v.as_object() {
        let extra: Vec<&String> = map.keys().filter(|k| !known.contains(&k.as_str())).collect();
        if !extra.is_empty() {
            bail!("{what}: {extra:?} not translated to podman (extend tests/src/image.rs)");
        }
    }
    Ok(())
}

/// Kubernetes quantity → podman `--memory` value (`256Mi` → `256m`).
fn memory(q: &str) -> anyhow::Result<String> {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(n) = q.strip_suffix(suffix) {
            return Ok(format!("{n}{unit}"));
        }
    }
    if q.chars().all(|c| c.is_ascii_digit()) {
        return Ok(format!("{q}b"));
    }
    bail!("memory quantity {q:?} not understood")
}

/// Kubernetes CPU quantity → podman `--cpus` value (`500m` → `0.5`).
fn cpus(q: &str) -> anyhow::Result<String> {
    match q.strip_suffix('m') {
        Some(m) => Ok(format!("{}", m.parse::<f64>().context("cpu")? / 1000.0)),
        None => Ok(q.to_string()),
    }
}

/// The `podman run` flags that reproduce `ds`'s agent container: host
/// namespaces, the merged pod/container securityContext (capabilities,
/// privileged, read-only root, user, no_new_privs, seccomp), every volume
/// mount (hostPath at its mountPath with its readOnly flag and propagation),
/// the environment and the resource limits.
pub fn run_spec(ds: &Value, vols: &Volumes) -> anyhow::Result<RunSpec> {
    let pod = &ds["spec"]["template"]["spec"];
    unknown_keys(pod, POD_KEYS, "pod spec")?;
    let containers = pod["containers"].as_array().context("containers")?;
    anyhow::ensure!(containers.len() == 1, "one container expected, found {}", containers.len());
    let c = &containers[0];
    unknown_keys(c, CONTAINER_KEYS, "container")?;
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    unknown_keys(psc, POD_SECURITY_KEYS, "pod securityContext")?;
    unknown_keys(csc, CONTAINER_SECURITY_KEYS, "container securityContext")?;
    // The container's value wins over the pod's, as in Kubernetes.
    let merged = |k: &str| if csc[k].is_null() { psc[k].clone() } else { csc[k].clone() };
    let mut f: Vec<String> = Vec::new();
    let mut push = |a: &[&str]| f.extend(a.iter().map(|s| s.to_string()));

    if pod["hostNetwork"] == true {
        push(&["--network", "host"]);
    }
    if pod["hostPID"] == true {
        push(&["--pid", "host"]);
    }
    if pod["hostIPC"] == true {
        push(&["--ipc", "host"]);
    }
    if csc["privileged"] == true {
        push(&["--privileged"]);
    }
    for cap in csc["capabilities"]["drop"].as_array().into_iter().flatten() {
        push(&["--cap-drop", cap.as_str().context("capability")?]);
    }
    for cap in csc["capabilities"]["add"].as_array().into_iter().flatten() {
        push(&["--cap-add", cap.as_str().context("capability")?]);
    }
    if csc["readOnlyRootFilesystem"] == true {
        // Kubernetes mounts no tmpfs of its own on a read-only root; podman
        // would add /tmp, /var/tmp and /run unless told not to.
        push(&["--read-only", "--read-only-tmpfs=false"]);
    }
    // Kubernetes: allowPrivilegeEscalation unset means true.
    if csc["allowPrivilegeEscalation"] == false {
        push(&["--security-opt", "no-new-privileges"]);
    }
    // The scratch image has `USER 0:0`.
    let uid = merged("runAsUser").as_u64().unwrap_or(0) as u32;
    let gid = merged("runAsGroup").as_u64().unwrap_or(0) as u32;
    if !merged("runAsUser").is_null() || !merged("runAsGroup").is_null() {
        push(&["--user", &format!("{uid}:{gid}")]);
    }
    if merged("runAsNonRoot") == true && uid == 0 {
        bail!("runAsNonRoot: true with uid 0: the kubelet would refuse to start this container");
    }
    let seccomp = merged("seccompProfile");
    let mut seccomp_file = None;
    match seccomp["type"].as_str() {
        Some("Localhost") => {
            // The kubelet resolves it under its seccomp directory
            // (/var/lib/kubelet/seccomp), where deploy/seccomp/ is installed.
            let name = seccomp["localhostProfile"]
                .as_str()
                .context("Localhost seccomp without localhostProfile")?;
            let file = deploy_dir().join("seccomp").join(name);
            anyhow::ensure!(
                file.is_file(),
                "seccomp profile {} named by the manifest does not exist",
                file.display()
            );
            push(&["--security-opt", &format!("seccomp={}", file.display())]);
            seccomp_file = Some(file);
        }
        Some("Unconfined") => push(&["--security-opt", "seccomp=unconfined"]),
        // podman's default profile, which is NOT the kubelet runtime's.
        Some("RuntimeDefault") | None => {}
        Some(other) => bail!("seccompProfile type {other:?} not translated"),
    }

    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        unknown_keys(
            m,
            &["name", "mountPath", "readOnly", "recursiveReadOnly", "mountPropagation"],
            "volumeMount",
        )?;
        let name = m["name"].as_str().context("volumeMount name")?;
        let target = m["mountPath"].as_str().context("mountPath")?;
        let v = volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("volume {name} not declared"))?;
        let mut opts = vec![if m["readOnly"] == true { "ro" } else { "rw" }];
        opts.push(match m["mountPropagation"].as_str() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(p) => bail!("mountPropagation {p:?}"),
        });
        let source: PathBuf = if let Some(hp) = v.get("hostPath") {
            let path = PathBuf::from(hp["path"].as_str().context("hostPath.path")?);
            match hp["type"].as_str() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
                Some("Directory") => anyhow::ensure!(
                    path.is_dir(),
                    "hostPath {} (type Directory) is not a directory here",
                    path.display()
                ),
                None | Some("") => {}
                Some(t) => bail!("hostPath type {t:?} not translated"),
            }
            path
        } else if v.get("configMap").is_some() {
            vols.config_maps
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no directory given for configMap volume {name}"))?
        } else if v.get("emptyDir").is_some() {
            vols.empty_dirs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no directory given for emptyDir volume {name}"))?
        } else if v.get("secret").is_some() {
            vols.secrets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p.clone())
                .with_context(|| format!("no directory given for secret volume {name}"))?
        } else {
            bail!("volume {name}: only hostPath, configMap, secret and emptyDir are translated");
        };
        push(&["--volume", &format!("{}:{target}:{}", source.display(), opts.join(","))]);
        match m["recursiveReadOnly"].as_str() {
            None | Some("Disabled") => {}
            // Possible here (kernel >= 5.12, runc >= 1.1). podman 4.3 has no
            // `rro` option: every mount below the source is bound read-only
            // over its place in the rbind, which is what `rro` amounts to.
            Some("Enabled" | "IfPossible") => {
                anyhow::ensure!(
                    m["readOnly"] == true,
                    "recursiveReadOnly without readOnly: the API server refuses it"
                );
                for sub in submounts(&source)? {
                    let rel = sub.strip_prefix(&source).context("submount")?;
                    push(&[
                        "--volume",
                        &format!(
                            "{}:{}:ro,rprivate",
                            sub.display(),
                            Path::new(target).join(rel).display()
                        ),
                    ]);
                }
            }
            Some(r) => bail!("recursiveReadOnly {r:?}"),
        }
    }
    // Kubernetes expands `$(NAME)` in a value with the variables defined
    // before it in the list (dependent environment variables).
    let mut defined: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env name")?;
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => {
                defined.iter().fold(v.clone(), |v, (n, val)| v.replace(&format!("$({n})"), val))
            }
            (_, Value::String(p)) if p == "spec.nodeName" => vols.node_name.clone(),
            (_, Value::String(p)) if p == "status.hostIP" => vols.host_ip.clone(),
            _ => bail!(
                "env {name}: only literal values and fieldRef spec.nodeName / status.hostIP are translated"
            ),
        };
        push(&["--env", &format!("{name}={value}")]);
        defined.push((name.to_string(), value));
    }
    if let Some(m) = c["resources"]["limits"]["memory"].as_str() {
        push(&["--memory", &memory(m)?]);
    }
    if let Some(cpu) = c["resources"]["limits"]["cpu"].as_str() {
        push(&["--cpus", &cpus(cpu)?]);
    }
    if let Some(cmd) = c["command"].as_array() {
        anyhow::ensure!(cmd.len() == 1, "command with arguments: {cmd:?}");
        push(&["--entrypoint", cmd[0].as_str().context("command")?]);
    }
    let args = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    Ok(RunSpec { flags: f, args, uid, seccomp_file })
}

/// Mount points strictly below `dir` in this mount namespace, parents first.
pub fn submounts(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    out.sort_by_key(|p| p.components().count());
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container started by a test, removed by its id on drop, also when the
/// test fails (`podman rm --force --time 2 <id>`). Pass [`Self::run_args`]
/// to `podman run`: a unique name, and a cidfile podman writes the id to.
pub struct ContainerGuard {
    pub name: String,
    cidfile: PathBuf,
}

impl ContainerGuard {
    pub fn new(what: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("egress-test-{what}-{}-{n}", std::process::id());
        let cidfile = std::env::temp_dir().join(format!("{name}.cid"));
        let _ = std::fs::remove_file(&cidfile);
        Self { name, cidfile }
    }

    /// `--name NAME --cidfile FILE`
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "--name".into(),
            self.name.clone(),
            "--cidfile".into(),
            self.cidfile.display().to_string(),
        ]
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Ok(id) = std::fs::read_to_string(&self.cidfile) {
            let _ = podman().args(["rm", "--force", "--ignore", "--time", "2", id.trim()]).output();
        }
        let _ = std::fs::remove_file(&self.cidfile);
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!("eo-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols() -> Volumes {
        Volumes {
            config_maps: vec![("config".into(), "/tmp/c".into())],
            empty_dirs: vec![("run".into(), "/tmp/r".into())],
            secrets: vec![
                ("metrics-tls".into(), "/tmp/s".into()),
                ("peer-tls".into(), "/tmp/p".into()),
            ],
            node_name: "n1".into(),
            host_ip: "192.0.2.7".into(),
        }
    }

    #[test]
    fn the_daemonset_translates() {
        let spec = run_spec(&daemonset().expect("daemonset"), &vols()).expect("translates");
        let f = spec.flags.join(" ");
        assert!(f.contains("--cap-drop ALL"), "{f}");
        assert!(f.contains("--network host"), "{f}");
        assert!(f.contains("--volume /sys/kernel/tracing:/sys/kernel/tracing:ro,rprivate"), "{f}");
        assert!(f.contains("--env NODE_NAME=n1"), "{f}");
        assert!(f.contains("--env HOST_IP=192.0.2.7"), "{f}");
        assert!(f.contains("--env EGRESS_PEER_ADDR=192.0.2.7:9465"), "$(HOST_IP) expanded: {f}");
        assert!(f.contains("--volume /tmp/s:/etc/egress-agent-tls:ro,rprivate"), "{f}");
        assert!(spec.args.first().is_some_and(|a| a == "run"), "{:?}", spec.args);
    }

    #[test]
    fn settings_it_cannot_translate_are_errors() {
        let mut ds = daemonset().expect("daemonset");
        ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["procMount"] =
            "Unmasked".into();
        assert!(run_spec(&ds, &vols()).is_err());
        let mut ds = daemonset().expect("daemonset");
        ds["spec"]["template"]["spec"]["shareProcessNamespace"] = true.into();
        assert!(run_spec(&ds, &vols()).is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }

    #[test]
    fn quantities() {
        assert_eq!(memory("256Mi").expect("mem"), "256m");
        assert_eq!(cpus("500m").expect("cpu"), "0.5");
        assert_eq!(cpus("2").expect("cpu"), "2");
    }
}
