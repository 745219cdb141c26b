//! One kernel user at a time across processes: every root test, the lab
//! demo, each benchmark trial and the kernel suite's host column hold
//! `/tmp/egress-kernel.lock` (flock) while they run. Every agent sees the
//! whole host's traffic (its cgroup_skb programs sit on the cgroup root,
//! beside any other agent's: tests/tests/upgrade.rs), so two checkouts
//! testing at once would see each other's flows.
//!
//! Re-entrant inside one process: a holder that takes it again (a test that
//! runs a benchmark trial) shares the hold instead of deadlocking on its own
//! second open file description.
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::{Mutex, MutexGuard, PoisonError},
};

use anyhow::{Context as _, bail};

pub const KERNEL_LOCK: &str = "/tmp/egress-kernel.lock";

/// The process's hold: the locked file and how many guards share it.
static HOLD: Mutex<(usize, Option<File>)> = Mutex::new((0, None));

fn hold() -> MutexGuard<'static, (usize, Option<File>)> {
    HOLD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Exclusive hold of the shared kernel lock, released when the last guard
/// of this process drops.
#[must_use = "the lock is released when the guard drops"]
pub struct KernelLock(());

impl KernelLock {
    /// Block until the lock is this process's (or share the hold it has).
    pub fn take() -> anyhow::Result<Self> {
        Self::take_at(KERNEL_LOCK)
    }

    fn take_at(path: &str) -> anyhow::Result<Self> {
        let mut h = hold();
        if h.0 == 0 {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| path.to_string())?;
            // SAFETY: valid fd; blocks until the lock is ours.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("flock {path}: {}", std::io::Error::last_os_error());
            }
            h.1 = Some(f);
        }
        h.0 += 1;
        Ok(Self(()))
    }
}

impl Drop for KernelLock {
    fn drop(&mut self) {
        let mut h = hold();
        h.0 = h.0.saturating_sub(1);
        if h.0 == 0 {
            // Closing the file releases the flock.
            h.1 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentrant_in_one_process() {
        // A lock file of its own: the machine's may be held by a kernel test.
        let path = std::env::temp_dir().join(format!("eo-lock-test-{}", std::process::id()));
        let path = path.to_string_lossy().into_owned();
        let a = KernelLock::take_at(&path).expect("first");
        let b = KernelLock::take_at(&path).expect("second does not deadlock");
        drop(a);
        assert_eq!(hold().0, 1);
        drop(b);
        assert!(hold().1.is_none(), "released with the last guard");
        let _ = std::fs::remove_file(&path);
    }
}
