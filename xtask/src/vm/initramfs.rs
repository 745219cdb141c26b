//! One initramfs per kernel: busybox-static, the static (musl) agent and
//! suite, `ip`/`tc`/`iptables-legacy` from the host with the libraries `ldd`
//! names, the needed modules (decompressed) and an `/init` that mounts,
//! loads the modules in dependency order, runs the suite and powers off.
//! Written as an uncompressed newc cpio archive by this module.
use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Host tools copied in (glibc, with their libraries).
const HOST_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/tc", "/usr/sbin/xtables-legacy-multi"];
/// iptables extensions are dlopen()ed: copied as a directory.
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
const BUSYBOX: &str = "/bin/busybox";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "EGRESS-KT result modules fail insmod $m"
done
echo "EGRESS-KT booted $(cut -d' ' -f1 /proc/uptime)s"
EGRESS_AGENT_BIN=/bin/egress-agent EGRESS_AGENT_READY_SECS=240 /bin/egress-kernel-suite
echo "EGRESS-KT exit $? at $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
"#;

/// newc archive writer.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn new() -> Self {
        Self { out: Vec::new(), ino: 1, dirs: BTreeSet::new() }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.out.extend_from_slice(hdr.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Parent directories of `path`, each once.
    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            acc.push('/');
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.entry(&a, 0o040755, &[]);
            }
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(&format!("{path}/x"));
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100000 | mode, data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, target.as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Shared contents (everything but the modules), built once.
pub struct Base {
    files: Vec<(String, u32, Vec<u8>)>,
    links: Vec<(String, String)>,
}

/// What an initramfs holds besides busybox, the host tools of [`HOST_TOOLS`]
/// and the modules.
pub struct Contents {
    pub init: String,
    /// (path in the image, static binary on the host): stripped.
    pub bins: Vec<(String, PathBuf)>,
    /// More host programs, copied with the libraries `ldd` names.
    pub tools: Vec<String>,
    /// Host directories copied whole (files, symlinks; `.so` files with
    /// their libraries).
    pub trees: Vec<String>,
    /// Literal files: (path, mode, content).
    pub files: Vec<(String, u32, Vec<u8>)>,
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Libraries `ldd` names for `bin` (absolute paths, including the loader).
fn ldd(bin: &str) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd").arg(bin).output().with_context(|| format!("ldd {bin}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split("=>").nth(1).unwrap_or(l).split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect())
}

/// A stripped copy of a static binary (the debug info would weigh 150+ MB).
fn stripped(bin: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = bin.with_extension("vm-stripped");
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(bin)
        .status()
        .context("running strip")?;
    if !st.success() {
        bail!("strip {} failed", bin.display());
    }
    let data = read(&tmp)?;
    std::fs::remove_file(&tmp)?;
    Ok(data)
}

impl Base {
    /// The kernel matrix's: the suite runs at boot.
    pub fn new(agent: &Path, suite: &Path) -> anyhow::Result<Self> {
        Self::build(Contents {
            init: INIT.to_string(),
            bins: vec![
                ("/bin/egress-agent".into(), agent.to_path_buf()),
                ("/bin/egress-kernel-suite".into(), suite.to_path_buf()),
            ],
            tools: Vec::new(),
            trees: Vec::new(),
            files: Vec::new(),
        })
    }

    pub fn build(c: Contents) -> anyhow::Result<Self> {
        let mut files = vec![
            ("/init".to_string(), 0o755, c.init.into_bytes()),
            (BUSYBOX.to_string(), 0o755, read(Path::new(BUSYBOX))?),
        ];
        for (dest, bin) in &c.bins {
            files.push((dest.clone(), 0o755, stripped(bin)?));
        }
        let mut links = Vec::new();
        let mut libs = BTreeSet::new();
        for tool in HOST_TOOLS.iter().copied().chain(c.tools.iter().map(String::as_str)) {
            files.push((tool.to_string(), 0o755, read(Path::new(tool))?));
            libs.extend(ldd(tool)?);
        }
        for tree in std::iter::once(XTABLES_DIR).chain(c.trees.iter().map(String::as_str)) {
            copy_tree(Path::new(tree), &mut files, &mut links, &mut libs)?;
        }
        for lib in libs {
            let real = std::fs::canonicalize(&lib).with_context(|| format!("resolving {lib}"))?;
            files.push((lib, 0o755, read(&real)?));
        }
        files.extend(c.files);
        Ok(Self { files, links })
    }

    /// Write the initramfs for one kernel's module list.
    pub fn pack(&self, modules: &[PathBuf], out: &Path) -> anyhow::Result<()> {
        let mut c = Cpio::new();
        for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/modules"] {
            c.dir(d);
        }
        for (path, mode, data) in &self.files {
            c.file(path, *mode, data);
        }
        for (path, target) in &self.links {
            c.symlink(path, target);
        }
        c.symlink("/usr/sbin/iptables", "xtables-legacy-multi");
        let mut order = String::new();
        for (i, m) in modules.iter().enumerate() {
            let name = format!("{i:02}-{}.ko", super::kernels::mod_name(&m.to_string_lossy()));
            c.file(&format!("/modules/{name}"), 0o644, &module_bytes(m)?);
            order.push_str(&name);
            order.push('\n');
        }
        c.file("/modules/order", 0o644, order.as_bytes());
        let mut f =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        f.write_all(&c.finish())?;
        Ok(())
    }
}

/// Every file (with the libraries of `.so` files) and symlink under `dir`.
fn copy_tree(
    dir: &Path,
    files: &mut Vec<(String, u32, Vec<u8>)>,
    links: &mut Vec<(String, String)>,
    libs: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let ps = p.to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.file_type().is_symlink() {
            links.push((ps, std::fs::read_link(&p)?.to_string_lossy().into_owned()));
        } else if meta.is_dir() {
            copy_tree(&p, files, links, libs)?;
        } else {
            if ps.ends_with(".so") {
                libs.extend(ldd(&ps)?);
            }
            files.push((ps, 0o644, read(&p)?));
        }
    }
    Ok(())
}

/// Module bytes, decompressed (busybox insmod takes plain ELF).
fn module_bytes(p: &Path) -> anyhow::Result<Vec<u8>> {
    let s = p.to_string_lossy();
    let tool = if s.ends_with(".xz") {
        "xz"
    } else if s.ends_with(".zst") {
        "zstd"
    } else if s.ends_with(".gz") {
        "gzip"
    } else {
        return read(p);
    };
    let out =
        Command::new(tool).arg("-dc").arg(p).output().with_context(|| format!("{tool} -dc {s}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {s} failed");
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    #[test]
    fn newc_layout() {
        let mut c = super::Cpio::new();
        c.file("/a/b", 0o644, b"xyz");
        let out = c.finish();
        // dir "a", file "a/b", trailer; every header starts 4-aligned with the magic.
        assert_eq!(out.windows(6).filter(|w| w == b"070701").count(), 3);
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("a/b\0"));
        assert!(s.contains("xyz"));
        assert!(s.contains("TRAILER!!!"));
    }
}
