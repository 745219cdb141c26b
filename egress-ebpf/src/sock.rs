//! Reading a kernel `struct sock` at offsets the agent resolved from BTF.
//! Every read goes through `bpf_probe_read_kernel`: a bad address or an
//! unknown offset is a failed read, never a fault.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use egress_common::{AF_INET, AF_INET6, KOFF_UNKNOWN, Tuple};

use crate::config;

/// Read a kernel value at `base + off`, where `off` came from BTF.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Option<T> {
    if off == KOFF_UNKNOWN {
        return None;
    }
    // SAFETY: probe read: a bad address returns an error.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// The head of `struct sock_common` where it is laid out as in every
/// kernel since 4.x: `skc_daddr`, `skc_rcv_saddr`, `skc_hash`, `skc_dport`,
/// `skc_num`, `skc_family`: the IPv4 tuple in one read instead of five.
#[repr(C)]
struct Head {
    daddr: [u8; 4],
    saddr: [u8; 4],
    _hash: u32,
    dport: u16,
    num: u16,
    family: u16,
}

/// The socket's tuple (local = source), as the tracepoints report it.
#[inline(always)]
pub fn tuple(sk: u64, t: &mut Tuple) -> Result<(), i64> {
    // Offsets are load-time constants: the verifier keeps one branch. Each
    // is read alone: a copy of the whole offsets struct would take stack the
    // set_state hook does not have.
    if config!(kernel.skc_daddr) != KOFF_UNKNOWN
        && config!(kernel.skc_rcv_saddr) == config!(kernel.skc_daddr) + 4
        && config!(kernel.skc_dport) == config!(kernel.skc_daddr) + 12
        && config!(kernel.skc_num) == config!(kernel.skc_daddr) + 14
        && config!(kernel.skc_family) == config!(kernel.skc_daddr) + 16
    {
        let h: Head = kread(sk, config!(kernel.skc_daddr)).ok_or(-2i64)?;
        t.family = h.family;
        t.sport = h.num;
        t.dport = u16::from_be(h.dport);
        if t.family == AF_INET {
            t.saddr[..4].copy_from_slice(&h.saddr);
            t.daddr[..4].copy_from_slice(&h.daddr);
        } else if t.family == AF_INET6 {
            t.saddr = kread(sk, config!(kernel.skc_v6_rcv_saddr)).ok_or(-2i64)?;
            t.daddr = kread(sk, config!(kernel.skc_v6_daddr)).ok_or(-2i64)?;
        }
        released_port(sk, t);
        return Ok(());
    }
    t.family = kread::<u16>(sk, config!(kernel.skc_family)).ok_or(-2i64)?;
    t.sport = kread::<u16>(sk, config!(kernel.skc_num)).ok_or(-2i64)?;
    t.dport = u16::from_be(kread::<u16>(sk, config!(kernel.skc_dport)).ok_or(-2i64)?);
    if t.family == AF_INET {
        let s: [u8; 4] = kread(sk, config!(kernel.skc_rcv_saddr)).ok_or(-2i64)?;
        let d: [u8; 4] = kread(sk, config!(kernel.skc_daddr)).ok_or(-2i64)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if t.family == AF_INET6 {
        t.saddr = kread(sk, config!(kernel.skc_v6_rcv_saddr)).ok_or(-2i64)?;
        t.daddr = kread(sk, config!(kernel.skc_v6_daddr)).ok_or(-2i64)?;
    }
    released_port(sk, t);
    Ok(())
}

/// A socket closed in SYN_SENT has given its port back (`skc_num` is 0)
/// before the CLOSE transition is traced; `inet_sport` still holds it.
/// Without it a failed connect's record has no source port, and nothing
/// keyed by the client's address and port (its NAT entry, the hop's view
/// of it) can find it.
#[inline(always)]
fn released_port(sk: u64, t: &mut Tuple) {
    if t.sport == 0
        && config!(kernel.inet_sport) != KOFF_UNKNOWN
        && let Some(p) = kread::<u16>(sk, config!(kernel.inet_sport))
    {
        t.sport = u16::from_be(p);
    }
}

/// Inode of the socket's network namespace (0 if unknown).
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    match kread::<u64>(sk, config!(kernel.sock_skc_net)) {
        Some(net) => kread::<u32>(net, config!(kernel.net_ns_inum)).unwrap_or(0),
        None => 0,
    }
}

/// `sk_err`, `sk_err_soft`: one read where they are adjacent (`int
/// sk_err, sk_err_soft;` in every kernel this runs on), two else.
#[inline(always)]
pub fn errors(sk: u64) -> (i32, i32) {
    if config!(kernel.sock_sk_err) != KOFF_UNKNOWN
        && config!(kernel.sock_sk_err_soft) == config!(kernel.sock_sk_err) + 4
    {
        let [e, soft] = kread::<[i32; 2]>(sk, config!(kernel.sock_sk_err)).unwrap_or([0, 0]);
        return (e, soft);
    }
    (
        kread::<i32>(sk, config!(kernel.sock_sk_err)).unwrap_or(0),
        kread::<i32>(sk, config!(kernel.sock_sk_err_soft)).unwrap_or(0),
    )
}

/// `bytes_received`, `bytes_acked` of a TCP socket (u64::MAX if unknown).
#[inline(always)]
pub fn byte_counts(sk: u64) -> (u64, u64) {
    (
        kread::<u64>(sk, config!(kernel.tcp_bytes_received)).unwrap_or(u64::MAX),
        kread::<u64>(sk, config!(kernel.tcp_bytes_acked)).unwrap_or(u64::MAX),
    )
}

/// The first stream position sent and received: `snd_una` and `rcv_nxt`
/// read at ESTABLISHED, when both sit just past the handshake.
#[inline(always)]
pub fn stream_bases(sk: u64) -> (u32, u32) {
    (
        kread::<u32>(sk, config!(kernel.tcp_snd_una)).unwrap_or(0),
        kread::<u32>(sk, config!(kernel.tcp_rcv_nxt)).unwrap_or(0),
    )
}

/// The socket's cgroup v2 id (0 if unknown): for sockets met outside their
/// owner's task (accepted connections in softirq, sockets adopted at
/// start). A socket takes its cgroup from the task that created it (an
/// accepted one from its listener).
#[inline(always)]
pub fn cgroup_id(sk: u64) -> u64 {
    let Some(mut cgrp) = kread::<u64>(sk, config!(kernel.sk_cgroup)) else {
        return 0;
    };
    // Before Linux 5.15 the field is a tagged word: bit 0 set means it holds
    // cgroup v1 net_prio/net_cls data and the cgroup is not known.
    if config!(kernel.sk_cgroup_tagged) != 0 && cgrp & 1 != 0 {
        return 0;
    }
    if cgrp == 0 {
        return 0;
    }
    let Some(kn) = kread::<u64>(cgrp, config!(kernel.cgroup_kn)) else {
        return 0;
    };
    cgrp = kread::<u64>(kn, config!(kernel.kernfs_node_id)).unwrap_or(0);
    cgrp
}

/// The socket's TCP state (`TCP_*`), if readable.
#[inline(always)]
pub fn state(sk: u64) -> Option<u8> {
    kread::<u8>(sk, config!(kernel.skc_state))
}
