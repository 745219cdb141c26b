//! The QEMU command line of every VM the project boots (the kernel matrix
//! and the multi-machine lab): TCG only (KVM aborts with these kernels on
//! the hosts we run on), one CPU, the kernel and initramfs given directly,
//! the first serial port as the console on stdout.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A tap NIC: the tap device `ifname` is created in the network namespace
/// qemu runs in.
#[derive(Debug, Clone)]
pub struct Tap {
    pub ifname: String,
    pub mac: String,
}

/// One VM.
#[derive(Debug, Clone)]
pub struct Spec {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// Kernel command line after the console settings.
    pub append: String,
    pub memory_mb: u32,
    /// None: no network at all (`-nic none`).
    pub tap: Option<Tap>,
    /// A second serial port (ttyS1) on this unix socket, qemu listening.
    pub control: Option<PathBuf>,
}

impl Spec {
    pub fn new(vmlinuz: &Path, initramfs: &Path) -> Self {
        Self {
            vmlinuz: vmlinuz.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            append: String::new(),
            memory_mb: 1024,
            tap: None,
            control: None,
        }
    }

    /// `qemu-system-x86_64` with every argument (stdio not set).
    pub fn command(&self) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]);
        match &self.tap {
            Some(t) => {
                c.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={},script=no,downscript=no", t.ifname),
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={}", t.mac),
                ]);
            }
            None => {
                c.args(["-nic", "none"]);
            }
        }
        if let Some(sock) = &self.control {
            c.arg("-chardev")
                .arg(format!("socket,id=ctl,path={},server=on,wait=off", sock.display()))
                .args(["-serial", "chardev:ctl"]);
        }
        c.arg("-kernel").arg(&self.vmlinuz).arg("-initrd").arg(&self.initramfs);
        // no_timer_check: under TCG on a busy host the guest's IO-APIC timer
        // check can miss its ticks and panic 5.10 at boot ("IO-APIC + timer
        // doesn't work!"); the check proves nothing about a virtual timer.
        let append = format!(
            "console=ttyS0 panic=-1 oops=panic quiet loglevel=3 no_timer_check {}",
            self.append
        );
        c.args(["-append", append.trim()]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_tap_and_control_port() {
        let mut s = Spec::new(Path::new("/k"), Path::new("/i"));
        let args = |s: &Spec| {
            s.command().get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()
        };
        let a = args(&s);
        assert!(a.windows(2).any(|w| w == ["-machine", "q35,accel=tcg"]));
        assert!(a.windows(2).any(|w| w == ["-nic", "none"]));
        assert!(!a.iter().any(|x| x.contains("kvm")));
        s.tap = Some(Tap { ifname: "eot0".into(), mac: "52:54:00:00:00:01".into() });
        s.control = Some(PathBuf::from("/tmp/ctl.sock"));
        s.append = "eo.hostname=node-b".into();
        let a = args(&s);
        assert!(a.iter().any(|x| x == "tap,id=n0,ifname=eot0,script=no,downscript=no"));
        assert!(a.iter().any(|x| x == "socket,id=ctl,path=/tmp/ctl.sock,server=on,wait=off"));
        assert!(a.windows(2).any(|w| w == ["-serial", "chardev:ctl"]));
        assert!(a.last().is_some_and(|x| x.ends_with("eo.hostname=node-b")));
        assert!(!a.iter().any(|x| x.starts_with("user")), "never slirp");
    }
}
