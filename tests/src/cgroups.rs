//! Kubelet-shaped cgroup trees under the real cgroup v2 hierarchy, with real
//! processes moved into them. Removed (leaf first) on drop.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn v2_root() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or("")))
        })
        .context("no cgroup2 mount")
}

#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// kubelet with the systemd cgroup driver and containerd.
    Systemd { qos: Option<&'static str> },
    /// kubelet with the cgroupfs driver.
    Cgroupfs { qos: Option<&'static str> },
    /// A systemd service on a host (the VM proxy).
    Unit,
}

/// A created cgroup path (leaf) and every directory created for it.
pub struct TestCgroup {
    pub leaf: PathBuf,
    created: Vec<PathBuf>,
    pub pod_uid: String,
    pub container_id: String,
    pub unit: String,
}

fn pseudo_hex(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

/// The directories of a cgroup of `layout` (relative to the cgroup2 root),
/// its pod UID, container id and unit name.
fn layout_path(layout: Layout, seed: u64) -> (Vec<String>, String, String, String) {
    let h = pseudo_hex(seed ^ u64::from(std::process::id()), 32);
    let pod_uid =
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
    let container_id = pseudo_hex(seed.wrapping_add(7) ^ u64::from(std::process::id()), 64);
    // `w{seed}`, not a bare number: the metrics' unit label keeps it (ids
    // such as the pid become `*`), so each test unit stays its own workload.
    let unit = format!("eo-test-{}-w{seed}.service", std::process::id());
    let u = pod_uid.replace('-', "_");
    let rel: Vec<String> = match layout {
        Layout::Systemd { qos: Some(q) } => vec![
            "kubepods.slice".into(),
            format!("kubepods-{q}.slice"),
            format!("kubepods-{q}-pod{u}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ],
        Layout::Systemd { qos: None } => vec![
            "kubepods.slice".into(),
            format!("kubepods-pod{u}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ],
        Layout::Cgroupfs { qos: Some(q) } => {
            vec!["kubepods".into(), q.into(), format!("pod{pod_uid}"), container_id.clone()]
        }
        Layout::Cgroupfs { qos: None } => {
            vec!["kubepods".into(), format!("pod{pod_uid}"), container_id.clone()]
        }
        Layout::Unit => vec!["system.slice".into(), unit.clone()],
    };
    (rel, pod_uid, container_id, unit)
}

impl TestCgroup {
    /// The path a cgroup of `layout` has, relative to the cgroup2 root (for
    /// another machine's tree).
    pub fn relative(layout: Layout, seed: u64) -> Vec<String> {
        layout_path(layout, seed).0
    }

    pub fn new(layout: Layout, seed: u64) -> anyhow::Result<Self> {
        let root = v2_root()?;
        let (rel, pod_uid, container_id, unit) = layout_path(layout, seed);
        let mut created = Vec::new();
        let mut path = root;
        for seg in rel {
            path.push(seg);
            if !path.exists() {
                fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
                created.push(path.clone());
            }
        }
        Ok(Self { leaf: path, created, pod_uid, container_id, unit })
    }

    /// Move process `pid` into the leaf cgroup.
    pub fn enter(&self, pid: u32) -> anyhow::Result<()> {
        fs::write(self.leaf.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.leaf.display()))
    }

    pub fn path(&self) -> &Path {
        &self.leaf
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Processes we moved have exited by now (tests wait for them); a
        // non-empty cgroup cannot be removed and says so in rmdir's error.
        for dir in self.created.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
