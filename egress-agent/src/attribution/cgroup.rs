//! Local attribution: the cgroup v2 id captured at connect → cgroup path →
//! kubelet pod UID and container ID, or the systemd unit of a host process.
//!
//! The id is the inode number of the cgroup's directory. Paths are found by
//! walking the hierarchy once and again on a miss (rate-limited), so a pod
//! created a moment ago is found on its first connection.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

/// What a cgroup path says about its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupInfo {
    /// Path relative to the cgroup v2 root, starting with `/`.
    pub path: String,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// systemd unit (`squid.service`) of a host process.
    pub unit: Option<String>,
}

/// Parse a cgroup path as kubelet (systemd or cgroupfs driver) or systemd lays it out.
pub fn parse(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo { path: path.to_string(), ..CgroupInfo::default() };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(kube_at) =
        segments.iter().position(|s| s.starts_with("kubepods") || s.contains("-kubepods"))
    else {
        // Host process: the innermost .service (or .scope) unit.
        info.unit = segments
            .iter()
            .rev()
            .find(|s| {
                s.ends_with(".service") || (s.ends_with(".scope") && !s.starts_with("session-"))
            })
            .map(|s| s.to_string());
        return info;
    };
    let rest = &segments[kube_at..];
    for (i, seg) in rest.iter().enumerate() {
        if let Some(uid) = pod_uid(seg) {
            info.pod_uid = Some(uid);
            info.container_id = rest.get(i + 1).and_then(|c| container_id(c));
            break;
        }
    }
    info
}

/// `kubepods-burstable-pod<uid_with_underscores>.slice` or `pod<uid>`.
fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let idx = seg.rfind("pod")?;
    if idx > 0 && !seg[..idx].ends_with('-') {
        return None;
    }
    let uid = &seg[idx + 3..];
    let uid = uid.replace('_', "-");
    let valid = uid.len() >= 32 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, or a bare `<id>`.
fn container_id(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = seg.rsplit('-').next().unwrap_or(seg);
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// The cgroup v2 mount point of this mount namespace, from /proc/self/mountinfo.
pub fn find_root() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// An id that a walk did not find is not searched for again this soon.
const MISS_TTL: Duration = Duration::from_secs(2);

/// id → path cache over one cgroup v2 hierarchy.
pub struct CgroupResolver {
    root: Option<PathBuf>,
    by_id: HashMap<u64, Arc<CgroupInfo>>,
    /// Ids not found by a walk, and when: not searched again for a while.
    misses: HashMap<u64, Instant>,
    last_scan: Option<Instant>,
    /// Walks are at least this far apart: 10× the last walk's duration, at
    /// least 10 ms, so a burst of unknown ids cannot turn into a busy loop.
    min_rescan: Duration,
    /// Directories seen in the last walk (to bound memory).
    pub entries: usize,
}

impl CgroupResolver {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            misses: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_millis(10),
            entries: 0,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Attribution of a cgroup id; walks the hierarchy again on a miss.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some(i) = self.by_id.get(&id) {
            return Some(i.clone());
        }
        if self.misses.get(&id).is_some_and(|t| t.elapsed() < MISS_TTL)
            || self.last_scan.is_some_and(|t| t.elapsed() < self.min_rescan)
        {
            return None;
        }
        self.rescan();
        let found = self.by_id.get(&id).cloned();
        if found.is_none() {
            if self.misses.len() > 4096 {
                self.misses.retain(|_, t| t.elapsed() < MISS_TTL);
            }
            self.misses.insert(id, Instant::now());
        }
        found
    }

    fn rescan(&mut self) {
        let started = Instant::now();
        self.last_scan = Some(started);
        let Some(root) = self.root.clone() else { return };
        let mut found = HashMap::with_capacity(self.by_id.len().max(64));
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else { continue };
            let rel = dir
                .strip_prefix(&root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_else(|_| "/".into());
            let info = self
                .by_id
                .get(&meta.ino())
                .filter(|i| i.path == rel)
                .cloned()
                .unwrap_or_else(|| Arc::new(parse(&rel)));
            found.insert(meta.ino(), info);
            if let Ok(rd) = fs::read_dir(&dir) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        self.entries = found.len();
        self.by_id = found;
        self.min_rescan = (started.elapsed() * 10).max(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const CID: &str = "5d41402abc4b2a76b9719d911017c592ae1e7f5c8b0fa2a1f2d3e4b5c6d7e8f9";

    #[test]
    fn systemd_driver_layouts() {
        let u = UID.replace('-', "_");
        for (qos, prefix) in [
            ("burstable", "kubepods-burstable.slice/"),
            ("besteffort", "kubepods-besteffort.slice/"),
        ] {
            for rt in ["cri-containerd", "crio", "docker"] {
                let p =
                    format!("/kubepods.slice/{prefix}kubepods-{qos}-pod{u}.slice/{rt}-{CID}.scope");
                let i = parse(&p);
                assert_eq!(i.pod_uid.as_deref(), Some(UID), "{p}");
                assert_eq!(i.container_id.as_deref(), Some(CID), "{p}");
                assert_eq!(i.unit, None);
            }
        }
        // Guaranteed QoS: no qos level.
        let i = parse(&format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id.as_deref()), (Some(UID), Some(CID)));
        // Pod-level cgroup (pause-less runtimes, or the pod's own processes).
        let i = parse(&format!("/kubepods.slice/kubepods-pod{u}.slice"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id), (Some(UID), None));
    }

    #[test]
    fn cgroupfs_driver_layouts() {
        let i = parse(&format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id.as_deref()), (Some(UID), Some(CID)));
        let i = parse(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!((i.pod_uid.as_deref(), i.container_id.as_deref()), (Some(UID), Some(CID)));
        // Nested under another slice (kind, k3s, systemd in a container).
        let i = parse(&format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!((i.pod_uid.as_deref(), i.container_id.as_deref()), (Some(UID), Some(CID)));
    }

    #[test]
    fn host_processes() {
        assert_eq!(parse("/system.slice/squid.service").unit.as_deref(), Some("squid.service"));
        assert_eq!(
            parse("/system.slice/docker-abc.scope").unit.as_deref(),
            Some("docker-abc.scope")
        );
        assert_eq!(parse("/user.slice/user-0.slice/session-3.scope").unit, None);
        assert_eq!(parse("/").unit, None);
        let i = parse("/kubepods.slice/not-a-pod.slice");
        assert_eq!((i.pod_uid, i.container_id), (None, None));
        assert_eq!(parse("/kubepods/burstable/podNOTHEX/x").pod_uid, None);
    }

    #[test]
    fn resolves_real_directories_by_inode() {
        let dir = std::env::temp_dir().join(format!("eo-cg-{}", std::process::id()));
        let leaf = dir.join(format!("kubepods/burstable/pod{UID}/{CID}"));
        fs::create_dir_all(&leaf).expect("mkdir");
        let mut r = CgroupResolver::new(Some(dir.clone()));
        let ino = fs::metadata(&leaf).expect("stat").ino();
        let info = r.resolve(ino).expect("found");
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.path, format!("/kubepods/burstable/pod{UID}/{CID}"));
        // A directory created after the first walk is found on its first miss
        // (once the rescan interval has passed).
        let late = dir.join("system.slice/squid.service");
        fs::create_dir_all(&late).expect("mkdir");
        std::thread::sleep(r.min_rescan);
        let ino = fs::metadata(&late).expect("stat").ino();
        assert_eq!(r.resolve(ino).and_then(|i| i.unit.clone()).as_deref(), Some("squid.service"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
