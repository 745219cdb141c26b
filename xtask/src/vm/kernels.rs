//! The kernels of the matrix: pinned Debian cloud images, fetched once into
//! a cache (old versions leave the archive), extracted with `dpkg-deb -x`,
//! modules indexed with `depmod -b`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Where a pinned package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The machine's own apt sources (bookworm, bookworm-security).
    Machine,
    /// bullseye-security, through a private sources list whose URI is the
    /// machine's own `debian-security` one (the machine's sources are not touched).
    BullseyeSecurity,
}

#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// Short name used on the command line and in the matrix.
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub source: Source,
}

/// The pins, in one place. To move one: `apt-cache policy <package>` (for
/// 5.10 against bullseye-security) and change the version here.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        package: "linux-image-5.10.0-46-cloud-amd64",
        version: "5.10.262-1",
        source: Source::BullseyeSecurity,
    },
    Kernel {
        name: "6.1",
        package: "linux-image-6.1.0-56-cloud-amd64",
        version: "6.1.192-2",
        source: Source::Machine,
    },
    Kernel {
        name: "6.12",
        package: "linux-image-6.12.117+deb12-cloud-amd64",
        version: "6.12.117-1~deb12u1",
        source: Source::Machine,
    },
];

/// Modules the suite needs (their dependencies are added from modules.dep).
pub const MODULES: &[&str] = &[
    "veth",
    "sch_netem",
    "nf_conntrack_netlink",
    "iptable_filter",
    "iptable_nat",
    "xt_nat",
    "xt_tcpudp",
    "ipt_REJECT",
    "xt_statistic",
];

pub fn find(name: &str) -> anyhow::Result<Kernel> {
    KERNELS.iter().copied().find(|k| k.name == name).with_context(|| {
        format!(
            "unknown kernel {name:?}; known: {}",
            KERNELS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )
    })
}

/// `$XDG_CACHE_HOME/egress-observer/kernels`, else `~/.cache/…`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
    });
    base.join("egress-observer/kernels")
}

/// An extracted kernel: its image and its module tree.
#[derive(Debug, Clone)]
pub struct Extracted {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The cached .deb, downloaded when absent.
pub fn fetch(k: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let deb = dir.join(format!("{}_{}_amd64.deb", k.package, k.version));
    if deb.exists() {
        return Ok(deb);
    }
    println!("vm: downloading {}={} into {}", k.package, k.version, dir.display());
    let pin = format!("{}={}", k.package, k.version);
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&dir);
    if k.source == Source::BullseyeSecurity {
        cmd.args(private_apt(&dir.join("apt-bullseye-security"))?);
    }
    cmd.args(["download", &pin]);
    run(&mut cmd).with_context(|| format!("{pin} may have left the archive: move the pin in xtask/src/vm/kernels.rs (see `apt-cache policy {}`)", k.package))?;
    if !deb.exists() {
        bail!("apt-get download {pin} did not leave {}", deb.display());
    }
    Ok(deb)
}

/// apt options for a private bullseye-security sources list (own lists and
/// cache dirs, `apt-get update` run on it), built from the machine's
/// debian-security source.
fn private_apt(root: &Path) -> anyhow::Result<Vec<String>> {
    let (uri, keyring) = security_source()?;
    for d in ["lists/partial", "cache/archives/partial", "parts"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let list = root.join("sources.list");
    std::fs::write(&list, format!("deb [signed-by={keyring}] {uri} bullseye-security main\n"))?;
    let opts: Vec<String> = [
        format!("Dir::Etc::SourceList={}", list.display()),
        format!("Dir::Etc::SourceParts={}", root.join("parts").display()),
        format!("Dir::State::Lists={}", root.join("lists").display()),
        format!("Dir::Cache={}", root.join("cache").display()),
        "APT::Architectures=amd64".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))
        .context("apt-get update on the private bullseye-security list")?;
    Ok(opts)
}

/// URI and keyring of the machine's debian-security apt source.
fn security_source() -> anyhow::Result<(String, String)> {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                    texts.push(std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts
        .iter()
        .find_map(|t| parse_security_source(t))
        .context("no debian-security source in /etc/apt: cannot fetch bullseye-security kernels")
}

const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// First `*-security` suite's URI, from deb822 stanzas or one-line entries.
pub fn parse_security_source(text: &str) -> Option<(String, String)> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
            && suites.split_whitespace().any(|s| s.ends_with("-security"))
            && let Some(uri) = uris.split_whitespace().next()
        {
            return Some((
                uri.to_string(),
                field("Signed-By:").unwrap_or_else(|| DEFAULT_KEYRING.into()),
            ));
        }
    }
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
        (words.next()? == "deb").then_some(())?;
        let uri = words.next()?;
        words.next()?.ends_with("-security").then(|| (uri.to_string(), DEFAULT_KEYRING.to_string()))
    })
}

/// Extract once (dpkg-deb -x, depmod -b) into the cache.
pub fn extract(k: &Kernel, deb: &Path) -> anyhow::Result<Extracted> {
    let dir = cache_dir().join(format!("{}_{}", k.package, k.version));
    if !dir.join(".done").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        let release = release_of(&dir)?;
        run(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
        std::fs::write(dir.join(".done"), "")?;
    }
    let release = release_of(&dir)?;
    Ok(Extracted {
        vmlinuz: dir.join(format!("boot/vmlinuz-{release}")),
        modules: dir.join("lib/modules").join(&release),
        release,
    })
}

fn release_of(dir: &Path) -> anyhow::Result<String> {
    let m = dir.join("lib/modules");
    let first = std::fs::read_dir(&m)
        .with_context(|| format!("reading {}", m.display()))?
        .flatten()
        .next()
        .context("no module tree")?;
    Ok(first.file_name().to_string_lossy().into_owned())
}

/// Module files to insmod, dependencies first, for `wanted`.
pub fn load_order(modules_dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dep = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .context("modules.dep (depmod -b)")?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let index = parse_deps(&dep);
    let mut order = Vec::new();
    for w in wanted {
        if !index.contains_key(*w) {
            if builtin.lines().any(|l| mod_name(l) == *w) {
                continue;
            }
            bail!("module {w} is neither a module nor built in");
        }
        visit(&index, w, &mut order, 0)?;
    }
    Ok(order.into_iter().map(|rel| modules_dir.join(rel)).collect())
}

fn visit(
    index: &HashMap<String, (String, Vec<String>)>,
    name: &str,
    order: &mut Vec<String>,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 32 {
        bail!("module dependency loop at {name}");
    }
    let (path, deps) =
        index.get(name).with_context(|| format!("module {name} missing from modules.dep"))?;
    if order.contains(path) {
        return Ok(());
    }
    for d in deps {
        visit(index, &mod_name(d), order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// `kernel/net/foo-bar.ko.xz` → `foo_bar`.
pub fn mod_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// name → (relative path, dependency paths).
fn parse_deps(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            Some((
                mod_name(path),
                (path.to_string(), deps.split_whitespace().map(str::to_string).collect()),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_source_from_deb822_and_one_line() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /k.gpg\n";
        assert_eq!(
            parse_security_source(deb822),
            Some(("http://mirror.example/debian-security".into(), "/k.gpg".into()))
        );
        let one = "deb http://mirror.example/debian bookworm main\ndeb [arch=amd64] http://mirror.example/sec bookworm-security main\n";
        assert_eq!(
            parse_security_source(one),
            Some(("http://mirror.example/sec".into(), DEFAULT_KEYRING.into()))
        );
        assert_eq!(parse_security_source("deb http://mirror.example/debian bookworm main\n"), None);
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("eo-moddep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/a/nf_nat.ko.xz: kernel/a/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko\nkernel/a/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko\nkernel/lib/libcrc32c.ko:\nkernel/n/veth.ko:\n",
        )
        .expect("write");
        let order = load_order(&dir, &["nf_nat", "veth", "nf_conntrack"]).expect("order");
        let names: Vec<String> = order.iter().map(|p| mod_name(&p.to_string_lossy())).collect();
        assert_eq!(names, ["libcrc32c", "nf_conntrack", "nf_nat", "veth"]);
        assert!(load_order(&dir, &["nope"]).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
