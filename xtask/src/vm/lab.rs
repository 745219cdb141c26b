//! Machines of the multi-machine lab (`cargo xtask lab --multinode`): the
//! kernels of the matrix, booted with an initramfs that holds the static
//! agent, real Squid (the host's binary, its libraries, its error pages and
//! mime table), curl, iproute2/iptables, and an `/init` that runs the lab's
//! control daemon (tests/src/bin/egress-lab-node) on the second serial
//! port. The harness (egress_tests::multinode) boots them itself, each
//! with a tap NIC inside the lab's own network namespaces.
use std::path::PathBuf;

use anyhow::Context as _;

use super::{initramfs, kernels};

const LAB_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm /dev/pts && mount -t tmpfs shm /dev/shm
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /var/run /var/log /var/spool/squid /etc/netns
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "EGRESS-LAB insmod $m failed"
done
for a in $(cat /proc/cmdline); do
  case "$a" in eo.hostname=*) hostname "${a#eo.hostname=}" ;; esac
done
ip link set lo up
stty -F /dev/ttyS1 raw -echo
echo "EGRESS-LAB booted $(cut -d' ' -f1 /proc/uptime)s as $(hostname)"
/bin/egress-lab-node /dev/ttyS1
echo "EGRESS-LAB control exited $? at $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
"#;

/// Modules a lab machine needs beyond the matrix's: its NIC, the iptables
/// matches and tables the faults use.
const LAB_MODULES: &[&str] =
    &["virtio_pci", "virtio_net", "xt_comment", "iptable_mangle", "xt_conntrack"];

/// Squid's `proxy` user, as Debian has it; names resolve from files only.
const ETC: &[(&str, &str)] = &[
    (
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nproxy:x:13:13:proxy:/bin:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    ("/etc/group", "root:x:0:\nproxy:x:13:\nnogroup:x:65534:\n"),
    ("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
    ("/etc/hosts", "127.0.0.1 localhost\n"),
];

/// A kernel of the lab: its image and the lab initramfs for it.
pub struct LabImage {
    pub kernel: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// Build the static binaries and one lab initramfs per kernel in `wanted`.
pub fn images(wanted: &[String]) -> anyhow::Result<Vec<LabImage>> {
    let bin_dir = super::build_static(&["egress-agent", "egress-tests"], false)?;
    let base = initramfs::Base::build(initramfs::Contents {
        init: LAB_INIT.to_string(),
        bins: vec![
            ("/bin/egress-agent".into(), bin_dir.join("egress-agent")),
            ("/bin/egress-lab-node".into(), bin_dir.join("egress-lab-node")),
        ],
        // unlinkd: Squid will not start without it, even with no cache dir.
        tools: vec!["/usr/sbin/squid".into(), "/usr/lib/squid/unlinkd".into(), "/usr/bin/curl".into()],
        trees: vec![
            "/usr/share/squid".into(),
            "/usr/share/squid-langpack".into(),
            "/etc/squid".into(),
        ],
        files: ETC.iter().map(|(p, t)| (p.to_string(), 0o644, t.as_bytes().to_vec())).collect(),
    })
    .context("collecting the lab initramfs contents (squid and curl must be installed: cargo xtask setup)")?;
    let work = super::super::root().join("target/vm");
    std::fs::create_dir_all(&work)?;
    let mut out = Vec::new();
    for name in wanted {
        let k = kernels::find(name)?;
        let deb = kernels::fetch(&k)?;
        let x = kernels::extract(&k, &deb)?;
        let wanted_mods: Vec<&str> = kernels::MODULES.iter().chain(LAB_MODULES).copied().collect();
        let mods = kernels::load_order(&x.modules, &wanted_mods)?;
        let img = work.join(format!("lab-initramfs-{}.cpio", k.name));
        base.pack(&mods, &img)?;
        println!("lab: {} ({}) packed with {} modules", k.name, x.release, mods.len());
        out.push(LabImage { kernel: k.name.to_string(), vmlinuz: x.vmlinuz, initramfs: img });
    }
    Ok(out)
}
