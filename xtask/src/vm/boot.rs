//! Boot one kernel + initramfs under QEMU (TCG: KVM aborts with these
//! kernels on the hosts we run on) with a wall-clock limit; the serial
//! console is the result channel.
use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// What came back from one VM.
pub struct Console {
    pub text: String,
    pub timed_out: bool,
    pub seconds: f64,
}

pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<Console> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = egress_tests::qemu::Spec::new(vmlinuz, initramfs)
        .command()
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() > limit {
            // Our own child, by pid.
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = String::from_utf8_lossy(&std::fs::read(log)?).replace('\r', "");
    Ok(Console { text, timed_out, seconds: start.elapsed().as_secs_f64() })
}
