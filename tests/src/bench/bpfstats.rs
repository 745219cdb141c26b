//! What eBPF programs cost, from the kernel's own accounting: while
//! `bpf_stats` is enabled, every program run adds its duration to the
//! program's `run_time_ns` and one to its `run_cnt`. Enabled only for a
//! measuring window ([`StatsWindow`]) and restored when the window ends (the
//! accounting itself costs two clock reads per run, so the throughput
//! trials run without it).
//!
//! The programs of one process (the agent, bpftrace) are the `bpf-prog`
//! fds it holds: their ids come from `/proc/<pid>/fdinfo`, their names and
//! counters from `BPF_OBJ_GET_INFO_BY_FD`.
use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `bpf(cmd, attr, size)`.
fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> libc::c_long {
    // SAFETY: `attr` is a valid, writable buffer of the size passed; the
    // kernel reads (and for info, writes through) no more than that.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) }
}

/// Run-time accounting on for as long as this lives: a `BPF_ENABLE_STATS`
/// fd (Linux 5.8+: the kernel turns it off when the fd closes, also if the
/// bench dies), else the sysctl, set and restored on drop.
pub struct StatsWindow {
    _fd: Option<OwnedFd>,
    restore: Option<String>,
}

impl StatsWindow {
    pub fn enable() -> anyhow::Result<Self> {
        let mut attr = [0u64; 1];
        attr[0] = u64::from(BPF_STATS_RUN_TIME);
        let fd = bpf(BPF_ENABLE_STATS, &mut attr);
        if fd >= 0 {
            // SAFETY: the kernel returned a new fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            return Ok(Self { _fd: Some(fd), restore: None });
        }
        let was = fs::read_to_string(SYSCTL).context(SYSCTL)?.trim().to_string();
        fs::write(SYSCTL, "1").with_context(|| format!("enabling {SYSCTL}"))?;
        Ok(Self { _fd: None, restore: Some(was) })
    }
}

impl Drop for StatsWindow {
    fn drop(&mut self) {
        if let Some(was) = &self.restore {
            let _ = fs::write(SYSCTL, was);
        }
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStat {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Program ids held by process `pid` (its `bpf-prog` fds), deduplicated.
pub fn prog_ids(pid: u32) -> anyhow::Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| dir.clone())? {
        let Ok(text) = fs::read_to_string(e?.path()) else { continue };
        if let Some(id) = parse_prog_id(&text)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn parse_prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
}

/// Size of the `bpf_prog_info` prefix read (up to `recursion_misses`).
const INFO_BYTES: usize = 216;
const INFO_NAME: usize = 64;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;

/// Name and counters of program `id`.
pub fn prog_stat(id: u32) -> anyhow::Result<ProgStat> {
    let mut attr = [0u64; 2];
    attr[0] = u64::from(id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        bail!("BPF_PROG_GET_FD_BY_ID {id}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel returned.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u64; INFO_BYTES / 8];
    // attr.info: bpf_fd u32, info_len u32, info u64 (pointer).
    let mut attr = [0u64; 2];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((INFO_BYTES as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
        bail!("BPF_OBJ_GET_INFO_BY_FD {id}: {}", std::io::Error::last_os_error());
    }
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(parse_info(id, &bytes))
}

fn parse_info(id: u32, b: &[u8]) -> ProgStat {
    let u64_at =
        |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_ne_bytes);
    let name = b.get(INFO_NAME..INFO_NAME + 16).unwrap_or_default();
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    ProgStat {
        id,
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        run_time_ns: u64_at(INFO_RUN_TIME_NS),
        run_cnt: u64_at(INFO_RUN_CNT),
    }
}

/// Counters of every program process `pid` holds.
pub fn snapshot(pid: u32) -> anyhow::Result<Vec<ProgStat>> {
    prog_ids(pid)?.into_iter().map(prog_stat).collect()
}

/// What each program ran between two snapshots: (name, ns, runs), busiest
/// first; programs that did not run are left out.
pub fn delta(before: &[ProgStat], after: &[ProgStat]) -> Vec<(String, u64, u64)> {
    let mut d: Vec<(String, u64, u64)> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            (
                a.name.clone(),
                a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns)),
                a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt)),
            )
        })
        .filter(|(_, _, runs)| *runs > 0)
        .collect();
    d.sort_by_key(|p| std::cmp::Reverse(p.1));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_and_info() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\tab\nprog_id:\t4711\nrun_time_ns:\t9\n";
        assert_eq!(parse_prog_id(fdinfo), Some(4711));
        assert_eq!(parse_prog_id("pos:\t0\nmap_id:\t3\n"), None);
        let mut b = vec![0u8; INFO_BYTES];
        b[INFO_NAME..INFO_NAME + 5].copy_from_slice(b"hello");
        b[INFO_RUN_TIME_NS..INFO_RUN_TIME_NS + 8].copy_from_slice(&1234u64.to_ne_bytes());
        b[INFO_RUN_CNT..INFO_RUN_CNT + 8].copy_from_slice(&7u64.to_ne_bytes());
        let s = parse_info(3, &b);
        assert_eq!((s.name.as_str(), s.run_time_ns, s.run_cnt), ("hello", 1234, 7));
    }

    #[test]
    fn delta_keeps_what_ran_busiest_first() {
        let p =
            |id, ns, cnt| ProgStat { id, name: format!("p{id}"), run_time_ns: ns, run_cnt: cnt };
        let d = delta(&[p(1, 100, 1), p(2, 0, 0)], &[p(1, 150, 3), p(2, 500, 5), p(3, 0, 0)]);
        assert_eq!(d, vec![("p2".into(), 500, 5), ("p1".into(), 50, 2)]);
    }
}
