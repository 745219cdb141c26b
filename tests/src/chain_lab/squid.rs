//! Real Squid processes for the chain lab: configuration files, start inside
//! a namespace (optionally inside a cgroup before it does anything), wait until
//! it listens, stop by PID.
use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChainLabConfig, Hop};
use crate::Netns;

/// Squid's files for one hop, under the lab's temporary directory.
#[derive(Debug, Clone)]
pub(crate) struct SquidFiles {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub access_log: PathBuf,
    pub cache_log: PathBuf,
    pub pid_file: PathBuf,
    pub stdio_log: PathBuf,
}

impl SquidFiles {
    pub fn new(root: &Path, hop: Hop) -> anyhow::Result<Self> {
        let dir = root.join(hop.label());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Squid starts as root and drops to `proxy`, which must write its logs here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        Ok(Self::at(dir))
    }

    /// The files under `dir`, on whichever machine (nothing is created).
    pub fn at(dir: PathBuf) -> Self {
        Self {
            conf: dir.join("squid.conf"),
            access_log: dir.join("access.log"),
            cache_log: dir.join("cache.log"),
            pid_file: dir.join("squid.pid"),
            stdio_log: dir.join("squid.out"),
            dir,
        }
    }

    /// The (empty) hosts file Squid reads instead of /etc/hosts.
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
}

fn write_world_readable(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Write squid.conf (and the hosts file) for `hop`.
///
/// Hop 1 is the Squid pod: ACL on the pod range and its domain list, every
/// request to the parent (`never_direct`). Hop 2 is the VM Squid: ACL on the
/// source range and its own domain list; it resolves origin names with the
/// lab's resolver (`dns_nameservers`), as the VM's Squid does.
pub(super) fn write_conf(cfg: &ChainLabConfig, hop: Hop, files: &SquidFiles) -> anyhow::Result<()> {
    write_world_readable(&files.conf, &conf_text(cfg, hop, files))?;
    // Names come from DNS only (an empty hosts file, not the host's /etc/hosts).
    write_world_readable(&files.hosts(), "")
}

/// squid.conf of `hop` (see [`write_conf`]), its files at `files`.
pub(crate) fn conf_text(cfg: &ChainLabConfig, hop: Hop, files: &SquidFiles) -> String {
    let hosts = files.hosts();
    let timeout = cfg.connect_timeout.as_secs().max(1);
    let mut c = String::new();
    let _ = writeln!(c, "# egress-observer chain lab: {} ({})", hop.label(), hop.role());
    let _ = writeln!(c, "http_port {}", cfg.proxy_port);
    let _ = writeln!(c, "visible_hostname {}", cfg.squid_hostname(hop));
    let _ = writeln!(c, "acl SSL_ports port {}", cfg.origin_port);
    let _ = writeln!(c, "acl Safe_ports port {}", cfg.origin_port);
    let _ = writeln!(c, "acl CONNECT method CONNECT");
    match hop {
        Hop::One => {
            let _ = writeln!(c, "acl localnet src {}", cfg.pod_range);
            let _ = writeln!(c, "acl allowed_domains dstdomain {}", cfg.hop1_domains().join(" "));
            let _ = writeln!(c, "http_access deny !Safe_ports");
            let _ = writeln!(c, "http_access deny CONNECT !SSL_ports");
            let _ = writeln!(c, "http_access allow localnet allowed_domains");
            let _ = writeln!(c, "http_access deny all");
            let _ = writeln!(
                c,
                "cache_peer {} parent {} 0 no-query default connect-fail-limit={}",
                cfg.gce_ip, cfg.proxy_port, cfg.peer_connect_fail_limit
            );
            let _ = writeln!(c, "never_direct allow all");
        }
        Hop::Two => {
            let _ = writeln!(c, "acl gke_cluster src {}", cfg.hop2_src());
            let _ = writeln!(c, "acl allowed_domains dstdomain {}", cfg.hop2_domains().join(" "));
            let _ = writeln!(c, "http_access deny !Safe_ports");
            let _ = writeln!(c, "http_access deny CONNECT !SSL_ports");
            let _ = writeln!(c, "http_access allow gke_cluster allowed_domains");
            let _ = writeln!(c, "http_access deny all");
        }
    }
    let _ = writeln!(c, "cache deny all");
    let _ = writeln!(c, "cache_mem 8 MB");
    let _ = writeln!(c, "max_filedescriptors 4096");
    let _ = writeln!(c, "hosts_file {}", hosts.display());
    match hop {
        // never_direct: hop 1 resolves nothing itself (no server there).
        Hop::One => {
            let _ = writeln!(c, "dns_nameservers 127.0.0.1");
        }
        Hop::Two => {
            let _ = writeln!(c, "dns_nameservers {}", cfg.dns_ip);
            // Faults are short: a removed name must not linger in Squid's caches.
            let _ = writeln!(c, "negative_dns_ttl {} seconds", super::SQUID_DNS_TTL.as_secs());
            let _ = writeln!(c, "positive_dns_ttl {} seconds", super::SQUID_DNS_TTL.as_secs());
            let _ = writeln!(c, "dns_timeout {timeout} seconds");
        }
    }
    let _ = writeln!(c, "connect_timeout {timeout} seconds");
    let _ = writeln!(c, "peer_connect_timeout {timeout} seconds");
    let _ = writeln!(c, "forward_timeout {timeout} seconds");
    if let Some(idle) = cfg.squid_idle {
        let _ = writeln!(c, "pconn_timeout {} seconds", idle.pconn.as_secs().max(1));
        let _ = writeln!(c, "client_idle_pconn_timeout {} seconds", idle.pconn.as_secs().max(1));
        let _ = writeln!(c, "read_timeout {} seconds", idle.read.as_secs().max(1));
    }
    let _ = writeln!(c, "shutdown_lifetime 0 seconds");
    let _ = writeln!(c, "pinger_enable off");
    let _ = writeln!(c, "cache_effective_user proxy");
    let _ = writeln!(c, "pid_filename {}", files.pid_file.display());
    let _ = writeln!(c, "cache_log {}", files.cache_log.display());
    let _ = writeln!(c, "access_log stdio:{} squid", files.access_log.display());
    let _ = writeln!(c, "coredump_dir {}", files.dir.display());
    let _ = writeln!(c, "logfile_rotate 0");
    c
}

/// One running Squid (`squid -N` inside a namespace); killed by PID on drop.
pub(super) struct SquidProc {
    child: Child,
}

impl SquidProc {
    /// Start Squid in `ns`; when `cgroup` is set the process joins it before
    /// it runs any Squid code. Returns once Squid listens on `port`.
    pub fn start(
        ns: &Netns,
        files: &SquidFiles,
        service: &str,
        port: u16,
        cgroup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        // A stale pid file (left by a SIGKILL) would make Squid refuse to start
        // if its PID were reused.
        let _ = fs::remove_file(&files.pid_file);
        let out = fs::File::create(&files.stdio_log)?;
        let conf = files.conf.to_string_lossy().into_owned();
        // `ip netns exec` and `sh` exec in place: the PID stays Squid's.
        let child = ns
            .command(&[
                "sh",
                "-c",
                "read -r _ || exit 125; exec \"$@\"",
                "eo-gate",
                "squid",
                "-N",
                "-n",
                service,
                "-f",
                &conf,
            ])
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning squid")?;
        let pid = child.id();
        let mut proc_ = Self { child };
        if let Some(cg) = cgroup {
            fs::write(cg.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving squid {pid} into {}", cg.display()))?;
        }
        let mut stdin = proc_.child.stdin.take().context("squid stdin")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        proc_.wait_listening(ns, files, port)?;
        Ok(proc_)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self, ns: &Netns, files: &SquidFiles, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "squid exited ({st}) before listening; cache.log:\n{}\noutput:\n{}",
                    tail(&files.cache_log, 20),
                    tail(&files.stdio_log, 20)
                );
            }
            let out = ns.run(&["ss", "-Hltn", &filter])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "squid did not listen on :{port} within 10 s; cache.log:\n{}",
                    tail(&files.cache_log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL by PID and reap (bounded). The listening socket goes at once.
    pub fn kill(mut self) {
        self.kill_inner();
    }

    fn kill_inner(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own child's PID, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SquidProc {
    fn drop(&mut self) {
        self.kill_inner();
    }
}

/// The last `lines` lines of a file (for error messages); empty if unreadable.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
