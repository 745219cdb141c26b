//! Network namespaces and veth pairs, created with iproute2 and removed on drop.
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::{cmd, sh};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace named `eo<pid>-<role>-<n>` with loopback up.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name =
            format!("eo{}-{role}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        sh(&mut cmd("ip", &["netns", "add", &name]))?;
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A Command that runs `args` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(&mut self.command(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Run `f` on a new thread that has entered this namespace; sockets it
    /// creates stay in the namespace. `thread_name` becomes the task's comm.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(std::thread::Builder::new().name(thread_name.to_string()).spawn(move || {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })?)
    }

    /// `spawn` and wait.
    pub fn within<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        self.spawn(thread_name, f)?.join().map_err(|_| anyhow::anyhow!("thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive but not its name.
        let _ = cmd("ip", &["netns", "del", &self.name]).output();
    }
}

/// A veth pair between two namespaces, with addresses; gone with its namespaces.
#[derive(Debug, Clone)]
pub struct Veth {
    pub a_if: String,
    pub b_if: String,
}

impl Veth {
    /// Link `a` and `b`; `a_addrs`/`b_addrs` are CIDRs (v4 and/or v6).
    pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> anyhow::Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // Interface names: ≤ 15 bytes, unique per pair.
        let (a_if, b_if) = (
            format!("eoa{}x{n}", std::process::id() % 100_000),
            format!("eob{}x{n}", std::process::id() % 100_000),
        );
        sh(&mut cmd(
            "ip",
            &[
                "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
                "netns", &b.name,
            ],
        ))?;
        for (ns, ifname, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
            for addr in addrs {
                let fam = if addr.contains(':') { "-6" } else { "-4" };
                let mut args = vec![fam, "addr", "add", addr, "dev", ifname];
                if fam == "-6" {
                    args.push("nodad");
                }
                let mut full = vec!["ip"];
                full.extend(args);
                ns.run(&full)?;
            }
            ns.run(&["ip", "link", "set", ifname, "up"])?;
        }
        Ok(Self { a_if, b_if })
    }
}

/// An iptables rule added in a namespace and deleted on drop.
pub struct Rule<'a> {
    ns: &'a Netns,
    v6: bool,
    table: String,
    spec: Vec<String>,
}

impl<'a> Rule<'a> {
    pub fn add(ns: &'a Netns, v6: bool, table: &str, spec: &[&str]) -> anyhow::Result<Self> {
        let bin = if v6 { "ip6tables" } else { "iptables" };
        let mut args = vec![bin, "-w", "-t", table, "-A"];
        args.extend_from_slice(spec);
        ns.run(&args)?;
        Ok(Self {
            ns,
            v6,
            table: table.to_string(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        })
    }
}

impl Drop for Rule<'_> {
    fn drop(&mut self) {
        let bin = if self.v6 { "ip6tables" } else { "iptables" };
        let mut args =
            vec![bin.to_string(), "-w".into(), "-t".into(), self.table.clone(), "-D".into()];
        args.extend(self.spec.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = self.ns.command(&refs).output();
    }
}
