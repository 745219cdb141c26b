//! One machine of the multi-machine lab, wherever it runs: the host (its
//! "root" network namespace is one of the lab's, its processes the host's)
//! or a VM (driven through its control daemon). Roles are written once
//! against this: run a command in the machine's root namespace or in a pod
//! namespace inside it, start and stop processes (in a cgroup), read and
//! write its files, run its agent.
use std::{
    collections::HashMap,
    fs::OpenOptions,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::vm::Vm;
use crate::{Netns, sh};

pub enum Kind {
    /// On the host: the machine's root namespace, and its pod namespaces by name.
    Host {
        root: Netns,
        pods: Mutex<HashMap<String, Netns>>,
        dir: PathBuf,
    },
    Vm(Vm),
}

/// What a command printed and how it ended (`code` None: killed).
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct Machine {
    /// Its host name (`node-a`, `node-b`, `gce-vm`), also its agent's node name.
    pub name: String,
    pub kind: Kind,
    /// Processes started on the host, by PID.
    host_children: Mutex<HashMap<u32, Child>>,
}

impl Machine {
    pub fn host(name: &str, root: Netns, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            name: name.into(),
            kind: Kind::Host { root, pods: Mutex::new(HashMap::new()), dir },
            host_children: Mutex::new(HashMap::new()),
        })
    }

    pub fn vm(name: &str, vm: Vm) -> Self {
        Self { name: name.into(), kind: Kind::Vm(vm), host_children: Mutex::new(HashMap::new()) }
    }

    /// `host (6.18…)` or `VM 6.12`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Host { .. } => format!(
                "host, kernel {}",
                std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
            ),
            Kind::Vm(v) => format!("VM, kernel {}", v.kernel),
        }
    }

    pub fn is_vm(&self) -> bool {
        matches!(self.kind, Kind::Vm(_))
    }

    /// A path for a file of this machine's (its own /tmp in a VM).
    pub fn path(&self, file: &str) -> String {
        match &self.kind {
            Kind::Host { dir, .. } => dir.join(file).display().to_string(),
            Kind::Vm(_) => format!("/tmp/{file}"),
        }
    }

    /// The host's name of a namespace of this machine (None: its root).
    fn host_ns(&self, ns: Option<&str>) -> anyhow::Result<String> {
        let Kind::Host { root, pods, .. } = &self.kind else { bail!("not on the host") };
        Ok(match ns {
            None => root.name.clone(),
            Some(n) => pods
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(n)
                .map(|p| p.name.clone())
                .with_context(|| format!("{}: no namespace {n}", self.name))?,
        })
    }

    /// `/run/netns/…` of a namespace of this machine (the host only).
    pub fn netns_path(&self, ns: Option<&str>) -> anyhow::Result<String> {
        Ok(match &self.kind {
            Kind::Host { .. } => format!("/run/netns/{}", self.host_ns(ns)?),
            Kind::Vm(_) => match ns {
                Some(n) => format!("/run/netns/{n}"),
                None => "/proc/1/ns/net".into(),
            },
        })
    }

    /// A pod's network namespace inside this machine, named `name`.
    pub fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Host { pods, .. } => {
                let ns = Netns::new(name)?;
                pods.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(name.into(), ns);
                Ok(())
            }
            Kind::Vm(_) => {
                self.run(None, &["ip", "netns", "add", name])?;
                self.run(Some(name), &["ip", "link", "set", "lo", "up"]).map(|_| ())
            }
        }
    }

    /// The name `ip link … netns NAME` takes for a namespace of this machine.
    pub fn ns_arg(&self, ns: &str) -> anyhow::Result<String> {
        match &self.kind {
            Kind::Host { .. } => self.host_ns(Some(ns)),
            Kind::Vm(_) => Ok(ns.into()),
        }
    }

    fn full_args(&self, ns: Option<&str>, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        match &self.kind {
            Kind::Host { .. } => {
                a.extend(["ip".into(), "netns".into(), "exec".into(), self.host_ns(ns)?]);
            }
            Kind::Vm(_) => {
                if let Some(n) = ns {
                    a.extend(["ip".into(), "netns".into(), "exec".into(), n.to_string()]);
                }
            }
        }
        a.extend(args.iter().map(|s| s.to_string()));
        Ok(a)
    }

    /// Run `args` (in pod namespace `ns`, or the root one) and wait.
    pub fn exec(
        &self,
        ns: Option<&str>,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let a = self.full_args(ns, args)?;
        match &self.kind {
            Kind::Host { .. } => {
                let mut c = Command::new(&a[0]);
                c.args(&a[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
                let mut child = c.spawn().with_context(|| format!("spawning {a:?}"))?;
                let out = crate::chain_lab::wait_output(&mut child, timeout)?;
                Ok(Output { code: out.exit_code(), stdout: out.stdout, stderr: out.stderr })
            }
            Kind::Vm(vm) => {
                let v = vm.request(
                    &json!({"op": "exec", "argv": a, "timeout_ms": timeout.as_millis() as u64}),
                )?;
                Ok(Output {
                    code: v["code"].as_i64().map(|c| c as i32),
                    stdout: v["stdout"].as_str().unwrap_or_default().into(),
                    stderr: v["stderr"].as_str().unwrap_or_default().into(),
                })
            }
        }
    }

    /// Run and require exit 0; its stdout.
    pub fn run(&self, ns: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
        let o = self.exec(ns, args, Duration::from_secs(60))?;
        if o.code != Some(0) {
            bail!("{}: {args:?} failed ({:?}): {}", self.name, o.code, o.stderr.trim());
        }
        Ok(o.stdout)
    }

    /// Start `args`, stdout/stderr to the machine's files `out`/`err`,
    /// inside `cgroup` (a directory of its cgroup v2 tree) before it execs.
    pub fn spawn(
        &self,
        ns: Option<&str>,
        args: &[&str],
        cgroup: Option<&str>,
        out: &str,
        err: &str,
    ) -> anyhow::Result<u32> {
        let a = self.full_args(ns, args)?;
        match &self.kind {
            Kind::Host { .. } => {
                let mut c = Command::new(&a[0]);
                c.args(&a[1..])
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(out)?)
                    .stderr(std::fs::File::create(err)?);
                let procs = cgroup
                    .map(|cg| OpenOptions::new().write(true).open(format!("{cg}/cgroup.procs")))
                    .transpose()
                    .context("opening cgroup.procs")?;
                if let Some(fd) = procs.as_ref().map(|f| f.as_raw_fd()) {
                    // SAFETY: after fork, before exec: only write(2) on an fd
                    // opened before the fork ("0": the writing process).
                    unsafe {
                        c.pre_exec(move || {
                            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                }
                let child = c.spawn().with_context(|| format!("spawning {a:?}"))?;
                let pid = child.id();
                self.host_children
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(pid, child);
                Ok(pid)
            }
            Kind::Vm(vm) => {
                let mut req = json!({"op": "spawn", "argv": a, "out": out, "err": err});
                if let Some(cg) = cgroup {
                    req["cgroup"] = json!(cg);
                }
                let v = vm.request(&req)?;
                v["pid"].as_u64().map(|p| p as u32).context("spawn answered no pid")
            }
        }
    }

    /// Wait up to `timeout` for `pid`: Some(exit code) when it ended.
    pub fn wait(&self, pid: u32, timeout: Duration) -> anyhow::Result<Option<Option<i32>>> {
        match &self.kind {
            Kind::Host { .. } => {
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    let mut m =
                        self.host_children.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let c = m.get_mut(&pid).with_context(|| format!("no child {pid}"))?;
                    if let Some(st) = c.try_wait()? {
                        m.remove(&pid);
                        return Ok(Some(st.code()));
                    }
                    drop(m);
                    if std::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Kind::Vm(vm) => {
                let v = vm.request(
                    &json!({"op": "wait", "pid": pid, "timeout_ms": timeout.as_millis() as u64}),
                )?;
                Ok((v["running"] == false).then(|| v["code"].as_i64().map(|c| c as i32)))
            }
        }
    }

    /// SIGKILL a process this machine started, and reap it.
    pub fn kill(&self, pid: u32) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Host { .. } => {
                let c = self
                    .host_children
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .remove(&pid);
                if let Some(mut c) = c {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Ok(())
            }
            Kind::Vm(vm) => vm.request(&json!({"op": "kill", "pid": pid})).map(|_| ()),
        }
    }

    /// Bytes of a file from `offset` (whole lines only with `lines`): the
    /// text and how many bytes it was.
    pub fn read(&self, path: &str, offset: u64, lines: bool) -> anyhow::Result<(String, u64)> {
        match &self.kind {
            Kind::Host { .. } => {
                let data = std::fs::read(path).unwrap_or_default();
                let mut b = &data[(offset as usize).min(data.len())..];
                if lines {
                    b = &b[..b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1)];
                }
                Ok((String::from_utf8_lossy(b).into_owned(), b.len() as u64))
            }
            Kind::Vm(vm) => {
                let v = vm.request(
                    &json!({"op": "read", "path": path, "offset": offset, "lines": lines}),
                )?;
                Ok((v["data"].as_str().unwrap_or_default().into(), v["n"].as_u64().unwrap_or(0)))
            }
        }
    }

    pub fn write(&self, path: &str, text: &str, mode: u32) -> anyhow::Result<()> {
        match &self.kind {
            Kind::Host { .. } => {
                use std::os::unix::fs::PermissionsExt as _;
                if let Some(d) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(path, text)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(())
            }
            Kind::Vm(vm) => vm
                .request(&json!({"op": "write", "path": path, "data": text, "mode": mode}))
                .map(|_| ()),
        }
    }

    /// Create a cgroup (relative to the cgroup2 root) and return its path.
    pub fn cgroup(&self, rel: &str) -> anyhow::Result<String> {
        let root = match &self.kind {
            Kind::Host { .. } => crate::cgroups::v2_root()?.display().to_string(),
            Kind::Vm(_) => "/sys/fs/cgroup".into(),
        };
        let path = format!("{root}/{rel}");
        match &self.kind {
            Kind::Host { .. } => sh(&mut crate::cmd("mkdir", &["-p", &path]))?,
            Kind::Vm(_) => self.run(None, &["mkdir", "-p", &path])?,
        };
        Ok(path)
    }

    /// Whether something listens on TCP `port` in namespace `ns`
    /// (/proc/net/tcp of that namespace: no `ss` needed in a VM).
    pub fn listening(&self, ns: Option<&str>, port: u16) -> anyhow::Result<bool> {
        // Squid listens on `[::]`: tcp6 holds it.
        let text = self
            .exec(ns, &["cat", "/proc/net/tcp", "/proc/net/tcp6"], Duration::from_secs(10))?
            .stdout;
        let want = format!(":{port:04X}");
        Ok(text.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
        }))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(mut m) = self.host_children.lock() {
            for (_, mut c) in m.drain() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
