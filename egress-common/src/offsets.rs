//! Offsets the agent reads at load time (tracefs formats, BTF) and hands
//! to the kernel programs in the `CONFIG` global: nothing in the programs
//! hard-codes a kernel's struct layout. Re-exported at the crate root.

/// Field offsets of a tracepoint record (from tracefs `format`), 0xffff = absent.
/// Field order is the same for every TCP tracepoint we read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpOffsets {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `state` (retransmit).
    pub state: u16,
}
const _: () = assert!(size_of::<TpOffsets>() == 24);

pub const OFFSET_ABSENT: u16 = 0xffff;

impl TpOffsets {
    pub const ABSENT: Self = Self {
        skaddr: OFFSET_ABSENT,
        oldstate: OFFSET_ABSENT,
        newstate: OFFSET_ABSENT,
        sport: OFFSET_ABSENT,
        dport: OFFSET_ABSENT,
        family: OFFSET_ABSENT,
        protocol: OFFSET_ABSENT,
        saddr: OFFSET_ABSENT,
        daddr: OFFSET_ABSENT,
        saddr_v6: OFFSET_ABSENT,
        daddr_v6: OFFSET_ABSENT,
        state: OFFSET_ABSENT,
    };
}

/// Offsets of the syscall tracepoint arguments we read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallTpOffsets {
    /// sys_enter_connect: fd, uservaddr.
    pub connect_fd: u16,
    pub connect_uservaddr: u16,
    /// sys_enter_getsockopt: fd, level, optname, optval.
    pub getsockopt_fd: u16,
    pub getsockopt_level: u16,
    pub getsockopt_optname: u16,
    pub getsockopt_optval: u16,
    /// sys_exit_getsockopt: ret.
    pub getsockopt_ret: u16,
    pub _pad: u16,
}

impl SyscallTpOffsets {
    pub const ABSENT: Self = Self {
        connect_fd: OFFSET_ABSENT,
        connect_uservaddr: OFFSET_ABSENT,
        getsockopt_fd: OFFSET_ABSENT,
        getsockopt_level: OFFSET_ABSENT,
        getsockopt_optname: OFFSET_ABSENT,
        getsockopt_optval: OFFSET_ABSENT,
        getsockopt_ret: OFFSET_ABSENT,
        _pad: 0,
    };
}

/// Kernel struct offsets resolved from BTF (u32::MAX = unknown: feature off).
/// `struct sock` begins with its `struct sock_common`, so the `skc_*`
/// offsets apply to a `struct sock *` as they are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock::sk_err`.
    pub sock_sk_err: u32,
    /// `struct sock_common::skc_net` (a `possible_net_t` whose first field is the `struct net *`).
    pub sock_skc_net: u32,
    /// `struct net::ns` + `struct ns_common::inum`.
    pub net_ns_inum: u32,
    /// `struct sock::sk_err_soft`.
    pub sock_sk_err_soft: u32,
    /// `struct sock_common::skc_family` (u16), `skc_dport` (be16),
    /// `skc_num` (u16, host order), `skc_daddr`, `skc_rcv_saddr` (be32),
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr` (16 bytes): a socket's tuple,
    /// read where the hook has the socket and no record (BTF tracepoints).
    pub skc_family: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `struct sock::sk_protocol` (u16 since Linux 5.6).
    pub sk_protocol: u32,
    /// `struct tcp_sock::bytes_received`, `bytes_acked` (u64),
    /// `snd_una`, `rcv_nxt` (u32).
    pub tcp_bytes_received: u32,
    pub tcp_bytes_acked: u32,
    pub tcp_snd_una: u32,
    pub tcp_rcv_nxt: u32,
    /// The socket's cgroup v2 id: `struct sock::sk_cgrp_data` +
    /// `sock_cgroup_data::cgroup` (Linux 5.15+) or `::val` (before: a
    /// pointer unless its low bit tags cgroup v1 data), then `cgroup::kn`
    /// and `kernfs_node::id`. For sockets met outside their owner's task:
    /// accepted connections and sockets adopted at start.
    pub sk_cgroup: u32,
    /// `struct sock_common::skc_state` (u8): the socket iterator's filter.
    pub skc_state: u32,
    /// 1 when `sk_cgroup` is the pre-5.15 tagged `val`.
    pub sk_cgroup_tagged: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// For the walk of open files at start (`adopt_sockets`):
    /// `file::f_inode`, `inode::i_mode` (u16), `file::private_data` (a
    /// socket file's `struct socket *`), `socket::sk`, and the task's
    /// `task_struct::pid`, `tgid`, `comm`.
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `struct inet_sock::inet_sport` (be16): the source port where
    /// `skc_num` is already 0, a socket closed in SYN_SENT (the port is
    /// released before the state change is traced).
    pub inet_sport: u32,
    /// `struct sock::sk_max_ack_backlog` (u32): non-zero on a listener and
    /// on every socket it accepted (a child inherits it), zero on an active
    /// open: which sockets the destroy backstop need not look up.
    pub sk_max_ack_backlog: u32,
}

pub const KOFF_UNKNOWN: u32 = u32::MAX;

impl KernelOffsets {
    pub const UNKNOWN: Self = Self {
        sock_sk_err: KOFF_UNKNOWN,
        sock_skc_net: KOFF_UNKNOWN,
        net_ns_inum: KOFF_UNKNOWN,
        sock_sk_err_soft: KOFF_UNKNOWN,
        skc_family: KOFF_UNKNOWN,
        skc_dport: KOFF_UNKNOWN,
        skc_num: KOFF_UNKNOWN,
        skc_daddr: KOFF_UNKNOWN,
        skc_rcv_saddr: KOFF_UNKNOWN,
        skc_v6_daddr: KOFF_UNKNOWN,
        skc_v6_rcv_saddr: KOFF_UNKNOWN,
        sk_protocol: KOFF_UNKNOWN,
        tcp_bytes_received: KOFF_UNKNOWN,
        tcp_bytes_acked: KOFF_UNKNOWN,
        tcp_snd_una: KOFF_UNKNOWN,
        tcp_rcv_nxt: KOFF_UNKNOWN,
        sk_cgroup: KOFF_UNKNOWN,
        skc_state: KOFF_UNKNOWN,
        sk_cgroup_tagged: 0,
        cgroup_kn: KOFF_UNKNOWN,
        kernfs_node_id: KOFF_UNKNOWN,
        file_f_inode: KOFF_UNKNOWN,
        inode_i_mode: KOFF_UNKNOWN,
        file_private_data: KOFF_UNKNOWN,
        socket_sk: KOFF_UNKNOWN,
        task_pid: KOFF_UNKNOWN,
        task_tgid: KOFF_UNKNOWN,
        task_comm: KOFF_UNKNOWN,
        inet_sport: KOFF_UNKNOWN,
        sk_max_ack_backlog: KOFF_UNKNOWN,
    };
}

/// Conntrack struct offsets for the optional kprobe, from BTF (vmlinux, or
/// the `nf_conntrack` module's split BTF). Any one unknown: the probe is not
/// loaded, so the program may trust them all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackOffsets {
    /// `struct sk_buff::_nfct` (the `nf_conn *` with ctinfo in the low 3 bits).
    pub skb_nfct: u32,
    /// `struct nf_conn::tuplehash` + `struct nf_conntrack_tuple_hash::tuple`:
    /// the original-direction tuple.
    pub ct_tuple: u32,
    /// Bytes from `tuplehash[0]` to `tuplehash[1]` (the reply tuple).
    pub tuple_hash_size: u32,
    /// `struct nf_conn::ct_net` (a `possible_net_t`; unknown: netns 0).
    pub ct_net: u32,
    /// Inside `struct nf_conntrack_tuple`: `src.u3`, `src.u.all`, `src.l3num`.
    pub src_u3: u32,
    pub src_port: u32,
    pub src_l3num: u32,
    /// `dst.u3`, `dst.u.all`, `dst.protonum`.
    pub dst_u3: u32,
    pub dst_port: u32,
    pub dst_protonum: u32,
}

impl ConntrackOffsets {
    pub const UNKNOWN: Self = Self {
        skb_nfct: KOFF_UNKNOWN,
        ct_tuple: KOFF_UNKNOWN,
        tuple_hash_size: KOFF_UNKNOWN,
        ct_net: KOFF_UNKNOWN,
        src_u3: KOFF_UNKNOWN,
        src_port: KOFF_UNKNOWN,
        src_l3num: KOFF_UNKNOWN,
        dst_u3: KOFF_UNKNOWN,
        dst_port: KOFF_UNKNOWN,
        dst_protonum: KOFF_UNKNOWN,
    };
}
