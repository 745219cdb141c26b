//! The lab's resolver: real dnsmasq in its own namespace (the CoreDNS pod's
//! stand-in), authoritative for the lab's names from a hosts file, NXDOMAIN
//! for other names in the lab's domains, forwarding nothing. Records can be
//! removed and the server stopped (faults); started and stopped by PID.
use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::Netns;

pub(crate) struct Resolver {
    hosts: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    ip: Ipv4Addr,
    domains: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl Resolver {
    pub fn new(dir: &Path, ip: Ipv4Addr, domains: Vec<String>) -> anyhow::Result<Self> {
        let dir = dir.join("dns");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // dnsmasq drops to `nobody` and rereads the hosts file on SIGHUP.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            hosts: dir.join("hosts"),
            pid_file: dir.join("dnsmasq.pid"),
            log: dir.join("dnsmasq.out"),
            ip,
            domains,
            child: Mutex::new(None),
        })
    }

    /// Write the hosts file (and make a running server reread it).
    pub fn set_records(&self, records: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
        let text: String = records.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
        fs::write(&self.hosts, text)
            .with_context(|| format!("writing {}", self.hosts.display()))?;
        fs::set_permissions(&self.hosts, fs::Permissions::from_mode(0o644))?;
        if let Some(c) = self.child.lock().expect("resolver").as_ref() {
            // SAFETY: kill(2) on our own child's PID: SIGHUP rereads the hosts file.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGHUP) };
        }
        Ok(())
    }

    /// Ask the server (from inside its namespace `ns`) for `name`'s A record:
    /// Some(true) it resolves, Some(false) NXDOMAIN (or another error rcode),
    /// None no answer within 1 s.
    pub fn resolves(&self, ns: &Netns, name: &str) -> anyhow::Result<Option<bool>> {
        let server = std::net::SocketAddr::from((self.ip, 53));
        let query = a_query(name, 0x4242)?;
        ns.within("eo-dns-check", move || -> anyhow::Result<Option<bool>> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.send_to(&query, server)?;
            let mut buf = [0u8; 512];
            match s.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == [0x42, 0x42] => {
                    let rcode = buf[3] & 0x0f;
                    let answers = u16::from_be_bytes([buf[6], buf[7]]);
                    Ok(Some(rcode == 0 && answers > 0))
                }
                Ok(_) => Ok(Some(false)),
                Err(_) => Ok(None),
            }
        })?
    }

    /// Wait (at most 5 s) until the server answers `name` as `resolves`:
    /// a hosts-file change is in effect once dnsmasq says so, not after a
    /// guessed delay.
    pub fn wait_for(&self, ns: &Netns, name: &str, resolves: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.resolves(ns, name)? == Some(resolves) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "resolver still answers {name} as {} after 5 s",
                    if resolves { "unknown" } else { "known" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start dnsmasq in `ns` if it is not running; returns once it listens.
    pub fn start(&self, ns: &Netns) -> anyhow::Result<()> {
        let mut child = self.child.lock().expect("resolver");
        if child.is_some() {
            return Ok(());
        }
        let _ = fs::remove_file(&self.pid_file);
        let mut args: Vec<String> = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--no-negcache",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={}", self.ip));
        args.push(format!("--addn-hosts={}", self.hosts.display()));
        args.push(format!("--pid-file={}", self.pid_file.display()));
        args.extend(self.domains.iter().map(|d| format!("--local=/{d}/")));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fs::File::create(&self.log)?;
        let mut c = ns
            .command(&refs)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning dnsmasq")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "dnsmasq exited ({st}): {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if !ns.run(&["ss", "-Hlun", "sport = :53"])?.trim().is_empty() {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child's PID.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
                let _ = c.wait();
                bail!("dnsmasq did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *child = Some(c);
        Ok(())
    }

    /// Stop dnsmasq (SIGKILL by PID): queries get ICMP port unreachable.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().expect("resolver").take() {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.lock().expect("resolver").is_some()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `/etc/netns/<ns>/resolv.conf`: `ip netns exec` bind-mounts it over
/// /etc/resolv.conf, so the namespace's processes ask the lab's resolver.
/// Removed on drop.
pub(crate) struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    /// For the namespace named `ns`.
    pub fn new(ns: &str, server: Ipv4Addr) -> anyhow::Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(ns);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let me = Self(dir);
        // One try of 1 s: a lookup that gets no answer fails fast and visibly.
        fs::write(
            me.0.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:1\n"),
        )?;
        Ok(me)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A DNS query for `name`'s A record (RD set), id `id`.
fn a_query(name: &str, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        anyhow::ensure!(!label.is_empty() && label.len() < 64, "bad DNS name {name:?}");
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}
