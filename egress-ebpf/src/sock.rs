//! Reading a kernel `struct sock` at offsets the agent resolved from BTF.
//! A socket address as a plain number is read through
//! `bpf_probe_read_kernel` (a bad address or an unknown offset is a failed
//! read, never a fault); a BTF tracepoint's typed `struct sock *` is read
//! with plain loads the verifier checks against the kernel's BTF ([`Typed`]).
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock},
    macros::map,
    maps::PerCpuArray,
};
use egress_common::{AF_INET, AF_INET6, KOFF_UNKNOWN, Tuple};

use crate::{config, net::is_capture_port};

/// The socket a program was handed, and how its fields are read.
pub trait Sk: Copy {
    /// The socket's address: the flow table's key.
    fn addr(self) -> u64;
    /// A field of `struct sock` (its `sock_common` included) at `off`.
    fn field<T: Copy>(self, off: u32) -> Option<T>;
    /// The socket's tuple (local = source), as the tracepoints report it.
    fn tuple(self, t: &mut Tuple) -> Result<(), i64>;
    /// `sk_err`, `sk_err_soft`.
    fn errors(self) -> (i32, i32);
    /// Whether the socket surely has no flow state: one a listener accepted
    /// (it carries the listener's non-zero `sk_max_ack_backlog`; an active
    /// open carries zero: a socket that listened cannot connect afterwards,
    /// on 6.18 `listen`, `shutdown`, `connect` fails with EINVAL) off the
    /// capture ports (only a hop's accepted connections are tracked). False
    /// when unsure: the caller looks up.
    fn passive_untracked(self) -> bool;
}

/// A socket address as a number (raw tracepoints, records, iterators):
/// every read is a `bpf_probe_read_kernel`.
#[derive(Clone, Copy)]
pub struct Probed(pub u64);

impl Sk for Probed {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.0
    }
    #[inline(always)]
    fn field<T: Copy>(self, off: u32) -> Option<T> {
        kread(self.0, off)
    }
    #[inline(always)]
    fn tuple(self, t: &mut Tuple) -> Result<(), i64> {
        tuple(self.0, t)
    }
    #[inline(always)]
    fn errors(self) -> (i32, i32) {
        errors(self.0)
    }
    /// Two probe reads cost more than the lookup they would save.
    #[inline(always)]
    fn passive_untracked(self) -> bool {
        false
    }
}

/// Per-CPU room where a typed pointer becomes a plain number ([`scalar`]).
#[map]
static ADDR_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The address a typed kernel pointer holds (a BTF tracepoint's argument, a
/// cgroup hook's socket), as a plain number the program may compute with
/// (the socket table hashes it). The verifier forbids arithmetic other
/// than adding offsets on such a pointer, but a pointer stored into map
/// memory reads back as a number (privileged programs may store one). A
/// program run from a softirq between the store and the load on this CPU
/// would leave its own there: the value read must equal the pointer, else
/// it is read again with a probe read of the stack copy.
#[inline(always)]
pub fn scalar(p: *const u8) -> u64 {
    if let Some(v) = scalar_or_none(p) {
        return v;
    }
    let copy = core::hint::black_box(p as u64);
    // SAFETY: probe read of a value on this program's stack.
    unsafe { bpf_probe_read_kernel(&raw const copy) }.unwrap_or(0)
}

/// [`scalar`] without the probe read (which packet programs cannot call on
/// every kernel): None where a nested program's store got in between.
#[inline(always)]
pub fn scalar_or_none(p: *const u8) -> Option<u64> {
    let s = ADDR_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: valid per-CPU map value.
    let v = unsafe {
        core::ptr::write_volatile(s, p as u64);
        core::ptr::read_volatile(s)
    };
    // Compared through an opaque copy: compared directly, the compiler
    // would return the (equal) pointer itself from this branch.
    (core::hint::black_box(v) == p as u64).then_some(v)
}

/// A BTF tracepoint's `struct sock *` argument. Its fields are plain loads:
/// the offsets are load-time constants (the frozen `CONFIG`), so the
/// verifier checks each load against the kernel's BTF and turns it into a
/// fault-safe one, with no helper call. Only `struct sock`'s own fields:
/// anything past it (`inet_sock`, `tcp_sock`) is out of the argument's type
/// and is probe-read through [`Sk::addr`]. Each load reads one whole member
/// (or a union member spanning the bytes), as the verifier requires.
#[derive(Clone, Copy)]
pub struct Typed {
    ptr: *const u8,
    addr: u64,
}

impl Typed {
    #[inline(always)]
    pub fn new(ptr: *const u8) -> Self {
        Self { ptr, addr: scalar(ptr) }
    }
}

impl Sk for Typed {
    #[inline(always)]
    fn addr(self) -> u64 {
        self.addr
    }
    #[inline(always)]
    fn field<T: Copy>(self, off: u32) -> Option<T> {
        if off == KOFF_UNKNOWN {
            return None;
        }
        // SAFETY: a BTF-typed kernel pointer; the verifier checks the load
        // against the type and makes it fault-safe.
        Some(unsafe { core::ptr::read_volatile(self.ptr.add(off as usize).cast::<T>()) })
    }
    #[inline(always)]
    fn tuple(self, t: &mut Tuple) -> Result<(), i64> {
        let (d, p, f) =
            (config!(kernel.skc_daddr), config!(kernel.skc_dport), config!(kernel.skc_family));
        // `skc_addrpair` (daddr, rcv_saddr) and `skc_portpair` (dport, num)
        // are u64 and u32 union members: one load each.
        if d != KOFF_UNKNOWN
            && config!(kernel.skc_rcv_saddr) == d + 4
            && config!(kernel.skc_num) == p + 2
            && p != KOFF_UNKNOWN
        {
            let pair = self.field::<u64>(d).ok_or(-2i64)?.to_ne_bytes();
            let ports = self.field::<u32>(p).ok_or(-2i64)?.to_ne_bytes();
            t.family = self.field::<u16>(f).ok_or(-2i64)?;
            t.dport = u16::from_be_bytes([ports[0], ports[1]]);
            t.sport = u16::from_ne_bytes([ports[2], ports[3]]);
            if t.family == AF_INET {
                t.daddr[..4].copy_from_slice(&pair[..4]);
                t.saddr[..4].copy_from_slice(&pair[4..]);
            }
        } else {
            t.family = self.field::<u16>(f).ok_or(-2i64)?;
            t.sport = self.field::<u16>(config!(kernel.skc_num)).ok_or(-2i64)?;
            t.dport = u16::from_be(self.field::<u16>(p).ok_or(-2i64)?);
            if t.family == AF_INET {
                let s = self.field::<u32>(config!(kernel.skc_rcv_saddr)).ok_or(-2i64)?;
                let d = self.field::<u32>(d).ok_or(-2i64)?;
                t.saddr[..4].copy_from_slice(&s.to_ne_bytes());
                t.daddr[..4].copy_from_slice(&d.to_ne_bytes());
            }
        }
        if t.family == AF_INET6 {
            v6(self, config!(kernel.skc_v6_rcv_saddr), &mut t.saddr)?;
            v6(self, config!(kernel.skc_v6_daddr), &mut t.daddr)?;
        }
        released_port(self.addr, t);
        Ok(())
    }
    #[inline(always)]
    fn errors(self) -> (i32, i32) {
        (
            self.field::<i32>(config!(kernel.sock_sk_err)).unwrap_or(0),
            self.field::<i32>(config!(kernel.sock_sk_err_soft)).unwrap_or(0),
        )
    }
    #[inline(always)]
    fn passive_untracked(self) -> bool {
        if !self.field::<u32>(config!(kernel.sk_max_ack_backlog)).is_some_and(|b| b != 0) {
            return false;
        }
        // A closing socket has given its port back (`skc_num` is 0) before
        // the CLOSE is traced: its local port is then `inet_sport`, past
        // `struct sock`, reached through the kernel's typed cast.
        let port = match self.field::<u16>(config!(kernel.skc_num)) {
            Some(p) if p != 0 => p,
            _ => match self.inet_sport() {
                Some(p) if p != 0 => p,
                _ => return false,
            },
        };
        !is_capture_port(port)
    }
}

impl Typed {
    /// `inet_sport` (host order) through `bpf_skc_to_tcp_sock`, whose typed
    /// result the verifier lets the program load from.
    #[inline(always)]
    fn inet_sport(self) -> Option<u16> {
        let off = config!(kernel.inet_sport);
        if off == KOFF_UNKNOWN {
            return None;
        }
        // SAFETY: the helper takes a BTF socket pointer and returns a typed
        // `tcp_sock` pointer or null.
        let tp = unsafe { bpf_skc_to_tcp_sock(self.ptr as *mut _) }.cast::<u8>();
        if tp.is_null() {
            return None;
        }
        // SAFETY: a BTF-typed kernel pointer (checked by the verifier);
        // `inet_sock` begins a `tcp_sock`, so the offset holds.
        Some(u16::from_be(unsafe { core::ptr::read_volatile(tp.add(off as usize).cast::<u16>()) }))
    }
}

/// An IPv6 address of the socket (`struct in6_addr`), in two loads.
#[inline(always)]
fn v6(sk: Typed, off: u32, out: &mut [u8; 16]) -> Result<(), i64> {
    if off == KOFF_UNKNOWN {
        return Err(-2);
    }
    let hi = sk.field::<u64>(off).ok_or(-2i64)?.to_ne_bytes();
    let lo = sk.field::<u64>(off + 8).ok_or(-2i64)?.to_ne_bytes();
    out[..8].copy_from_slice(&hi);
    out[8..].copy_from_slice(&lo);
    Ok(())
}

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
