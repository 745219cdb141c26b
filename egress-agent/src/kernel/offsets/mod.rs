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
    let k = KernelOffsets {
        sock_sk_err: get("sock", &["sk_err"]),
        sock_skc_net: get("sock_common", &["skc_net"]),
        net_ns_inum: get("net", &["ns", "inum"]),
        sock_sk_err_soft: get("sock", &["sk_err_soft"]),
        skc_family: get("sock_common", &["skc_family"]),
        skc_dport: get("sock_common", &["skc_dport"]),
        skc_num: get("sock_common", &["skc_num"]),
        skc_daddr: get("sock_common", &["skc_daddr"]),
        skc_rcv_saddr: get("sock_common", &["skc_rcv_saddr"]),
        skc_v6_daddr: get("sock_common", &["skc_v6_daddr"]),
        skc_v6_rcv_saddr: get("sock_common", &["skc_v6_rcv_saddr"]),
        sk_protocol: get("sock", &["sk_protocol"]),
        tcp_bytes_received: get("tcp_sock", &["bytes_received"]),
        tcp_bytes_acked: get("tcp_sock", &["bytes_acked"]),
        tcp_snd_una: get("tcp_sock", &["snd_una"]),
        tcp_rcv_nxt: get("tcp_sock", &["rcv_nxt"]),
    };
    (k, problems)
}
