//! Where this kernel keeps the fields we read: tracepoint record layouts from
//! tracefs `format` files and struct member offsets from BTF. Nothing here is
//! hard-coded for one kernel.
pub mod btf;
pub mod conntrack;
pub mod tracefs;

use egress_common::{KOFF_UNKNOWN, KernelOffsets};

pub use btf::Btf;
pub use tracefs::{TraceFs, TracepointFormat};

/// Kernel struct offsets we use, resolved from BTF; each unknown one turns a
/// feature off (reported by `check`), never the agent.
pub fn kernel_offsets(btf: &Btf) -> (KernelOffsets, Vec<String>) {
    let mut problems = Vec::new();
    let mut get = |st: &str, path: &[&str]| match btf.member_offset(st, path) {
        Ok(o) => o,
        Err(e) => {
            problems.push(format!("{st}.{}: {e}", path.join(".")));
            KOFF_UNKNOWN
        }
    };
    let sock_sk_err = get("sock", &["sk_err"]);
    let sock_skc_net = get("sock_common", &["skc_net"]);
    let net_ns_inum = get("net", &["ns", "inum"]);
    let sock_sk_err_soft = get("sock", &["sk_err_soft"]);
    (KernelOffsets { sock_sk_err, sock_skc_net, net_ns_inum, sock_sk_err_soft }, problems)
}
