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
        skc_state: get("sock_common", &["skc_state"]),
        sk_cgroup: KOFF_UNKNOWN,
        sk_cgroup_tagged: 0,
        cgroup_kn: get("cgroup", &["kn"]),
        kernfs_node_id: get("kernfs_node", &["id"]),
        file_f_inode: get("file", &["f_inode"]),
        inode_i_mode: get("inode", &["i_mode"]),
        file_private_data: get("file", &["private_data"]),
        socket_sk: get("socket", &["sk"]),
        task_pid: get("task_struct", &["pid"]),
        task_tgid: get("task_struct", &["tgid"]),
        task_comm: get("task_struct", &["comm"]),
        inet_sport: get("inet_sock", &["inet_sport"]),
        sk_max_ack_backlog: get("sock", &["sk_max_ack_backlog"]),
    };
    // The socket's cgroup: a pointer since Linux 5.15, a tagged word before.
    let (sk_cgroup, tagged) = match btf.member_offset("sock", &["sk_cgrp_data", "cgroup"]) {
        Ok(o) => (o, 0),
        Err(_) => match btf.member_offset("sock", &["sk_cgrp_data", "val"]) {
            Ok(o) => (o, 1),
            Err(e) => {
                problems.push(format!("sock.sk_cgrp_data.cgroup (or .val): {e}"));
                (KOFF_UNKNOWN, 0)
            }
        },
    };
    let k = KernelOffsets { sk_cgroup, sk_cgroup_tagged: tagged, ..k };
    (k, problems)
}
