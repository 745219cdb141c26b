//! Offsets for the optional conntrack kprobe (`conntrack_confirm`), from
//! BTF: `struct nf_conn` is in vmlinux BTF where conntrack is built in, else
//! in the `nf_conntrack` module's split BTF (`/sys/kernel/btf/nf_conntrack`,
//! Linux 5.11+ with `CONFIG_DEBUG_INFO_BTF_MODULES`). Every one must resolve
//! or the probe stays off, with the reason.
use std::path::{Path, PathBuf};

use egress_common::{ConntrackOffsets, KOFF_UNKNOWN};

use super::{
    Btf,
    btf::{BtfError, BtfFileError},
};

/// Why the conntrack kprobe stays off: its `check` line.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackLayoutError {
    #[error("no kprobes on this kernel (no kprobe PMU, no kprobe_events)")]
    NoKprobes,
    #[error("no kernel BTF (/sys/kernel/btf/vmlinux)")]
    NoBtf,
    #[error("{}", path.display())]
    ModuleBtf { path: PathBuf, source: BtfFileError },
    #[error("no module BTF: {MODULE} is loaded but {} is absent (kernel without CONFIG_DEBUG_INFO_BTF_MODULES, e.g. before 5.11) and vmlinux BTF has no struct nf_conn", path.display())]
    NoModuleBtf { path: PathBuf },
    #[error(
        "{MODULE} is not loaded (no conntrack entries to watch) and vmlinux BTF has no struct nf_conn"
    )]
    NotLoaded,
    #[error("{member}")]
    Member { member: String, source: BtfError },
}

/// The module whose BTF holds `struct nf_conn` when conntrack is not built in.
pub const MODULE: &str = "nf_conntrack";
/// The kernel function the probe attaches to.
pub const CONFIRM_FN: &str = "__nf_conntrack_confirm";

/// Whether this kernel can take kprobes: the kprobe PMU (perf_event_open,
/// what aya uses first) or tracefs `kprobe_events`.
pub fn kprobes_available(tracefs_root: &Path) -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || tracefs_root.join("kprobe_events").exists()
}

/// The BTF that describes `struct nf_conn` on this machine, and where it
/// came from: vmlinux's, merged with the module's split BTF under `sys_btf`
/// (`/sys/kernel/btf`) whenever that exists (a broken module blob is not
/// fatal while vmlinux alone has the struct).
pub fn conntrack_btf(
    vmlinux: &Btf,
    sys_btf: &Path,
    sys_module: &Path,
) -> Result<(Option<Btf>, String), ConntrackLayoutError> {
    let in_vmlinux = vmlinux.has_struct("nf_conn");
    let blob = sys_btf.join(MODULE);
    if blob.exists() {
        match vmlinux.with_module_file(&blob) {
            Ok(btf) => {
                let added = btf.type_count() - vmlinux.type_count();
                let from = if in_vmlinux { "vmlinux BTF" } else { "module BTF" };
                return Ok((
                    Some(btf),
                    format!("{from} (vmlinux + split {}: {added} module types)", blob.display()),
                ));
            }
            Err(e) if in_vmlinux => {
                return Ok((
                    None,
                    format!(
                        "vmlinux BTF ({} unusable: {})",
                        blob.display(),
                        crate::errors::Chain(&e)
                    ),
                ));
            }
            Err(source) => return Err(ConntrackLayoutError::ModuleBtf { path: blob, source }),
        }
    }
    if in_vmlinux {
        return Ok((None, "vmlinux BTF".to_string()));
    }
    Err(if sys_module.join(MODULE).exists() {
        ConntrackLayoutError::NoModuleBtf { path: blob }
    } else {
        ConntrackLayoutError::NotLoaded
    })
}

/// Resolve every offset the probe reads; the first unknown one is the
/// reason it stays off. `ct_net` alone may be unknown (netns then 0).
pub fn conntrack_offsets(btf: &Btf) -> Result<ConntrackOffsets, ConntrackLayoutError> {
    fn member(st: &str, path: &[&str]) -> impl FnOnce(BtfError) -> ConntrackLayoutError + use<> {
        let member = format!("{st}.{}", path.join("."));
        move |source| ConntrackLayoutError::Member { member, source }
    }
    let get = |st: &str, path: &[&str]| btf.member_offset(st, path).map_err(member(st, path));
    let tuple = |path: &[&str]| get("nf_conntrack_tuple", path);
    let tuplehash = get("nf_conn", &["tuplehash"])?;
    let in_hash = get("nf_conntrack_tuple_hash", &["tuple"])?;
    let tuple_hash_size = btf
        .array_elem_size("nf_conn", &["tuplehash"])
        .map_err(member("nf_conn", &["tuplehash"]))?;
    Ok(ConntrackOffsets {
        skb_nfct: get("sk_buff", &["_nfct"])?,
        ct_tuple: tuplehash + in_hash,
        tuple_hash_size,
        ct_net: get("nf_conn", &["ct_net"]).unwrap_or(KOFF_UNKNOWN),
        src_u3: tuple(&["src", "u3"])?,
        src_port: tuple(&["src", "u", "all"])?,
        src_l3num: tuple(&["src", "l3num"])?,
        dst_u3: tuple(&["dst", "u3"])?,
        dst_port: tuple(&["dst", "u", "all"])?,
        dst_protonum: tuple(&["dst", "protonum"])?,
    })
}

/// What the probe needs on this machine and where its layout came from.
#[derive(Debug, Clone)]
pub struct Plan {
    pub offsets: ConntrackOffsets,
    /// Which BTF described the structs.
    pub source: String,
}

impl Plan {
    /// One line for `check`.
    pub fn describe(&self) -> String {
        let o = &self.offsets;
        format!(
            "struct nf_conn from {}: sk_buff._nfct@{} nf_conn.tuplehash[0].tuple@{} tuplehash stride {} (tuple: src.u3@{} src.u.all@{} src.l3num@{} dst.u3@{} dst.u.all@{} dst.protonum@{})",
            self.source,
            o.skb_nfct,
            o.ct_tuple,
            o.tuple_hash_size,
            o.src_u3,
            o.src_port,
            o.src_l3num,
            o.dst_u3,
            o.dst_port,
            o.dst_protonum
        )
    }
}

/// Everything the probe needs on this machine, or why it stays off.
pub fn plan(tracefs_root: &Path, vmlinux: Option<&Btf>) -> Result<Plan, ConntrackLayoutError> {
    if !kprobes_available(tracefs_root) {
        return Err(ConntrackLayoutError::NoKprobes);
    }
    let vmlinux = vmlinux.ok_or(ConntrackLayoutError::NoBtf)?;
    let (merged, source) =
        conntrack_btf(vmlinux, Path::new("/sys/kernel/btf"), Path::new("/sys/module"))?;
    Ok(Plan { offsets: conntrack_offsets(merged.as_ref().unwrap_or(vmlinux))?, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the running kernel has `struct nf_conn` in BTF (built-in
    /// conntrack, or the module loaded with its BTF), every offset resolves
    /// and the layout is plausible: the reply tuple lies after the original
    /// one, inside the tuple the fields are ordered as the kernel declares.
    #[test]
    fn running_kernel_conntrack_offsets() {
        let Ok(vmlinux) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux on this host");
            return;
        };
        let btf =
            match conntrack_btf(&vmlinux, Path::new("/sys/kernel/btf"), Path::new("/sys/module")) {
                Ok((m, _)) => m,
                Err(why) => {
                    eprintln!("skipped: {why}");
                    return;
                }
            };
        let o = conntrack_offsets(btf.as_ref().unwrap_or(&vmlinux)).expect("offsets");
        assert!(o.tuple_hash_size >= 40 && o.tuple_hash_size < 128, "{o:?}");
        assert!(
            o.src_u3 < o.src_port && o.src_port < o.src_l3num && o.src_l3num < o.dst_u3,
            "{o:?}"
        );
        assert!(
            o.dst_u3 < o.dst_port
                && o.dst_port < o.dst_protonum
                && o.dst_protonum < o.tuple_hash_size,
            "{o:?}"
        );
        assert!(o.skb_nfct < 512 && o.ct_tuple < 512, "{o:?}");
        assert_ne!(o.ct_net, KOFF_UNKNOWN, "{o:?}");
    }

    #[test]
    fn no_module_btf_is_said_so() {
        let dir = std::env::temp_dir().join(format!("egress-ct-btf-{}", std::process::id()));
        let (btf_dir, mod_dir) = (dir.join("btf"), dir.join("module"));
        std::fs::create_dir_all(&btf_dir).expect("dir");
        std::fs::create_dir_all(mod_dir.join(MODULE)).expect("dir");
        // A vmlinux BTF with no nf_conn: the smallest valid blob (no types).
        let mut blob = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 0, 0, 1] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.push(0);
        let vmlinux = Btf::parse(&blob).expect("empty BTF");
        let why = conntrack_btf(&vmlinux, &btf_dir, &mod_dir)
            .map(|(_, s)| s)
            .expect_err("no BTF")
            .to_string();
        assert!(why.starts_with("no module BTF"), "{why}");
        std::fs::remove_dir_all(mod_dir.join(MODULE)).expect("rm");
        let why = conntrack_btf(&vmlinux, &btf_dir, &mod_dir)
            .map(|(_, s)| s)
            .expect_err("not loaded")
            .to_string();
        assert!(why.contains("not loaded"), "{why}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
