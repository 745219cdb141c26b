//! Types shared by the kernel programs (`egress-ebpf`) and the agent.
//!
//! Rules of the boundary:
//! - every type is `#[repr(C)]` with explicit padding and a size assertion, so
//!   kernel and user agree byte for byte;
//! - no Rust enums cross it: kinds are `u32` constants, converted in userspace
//!   with `TryFrom` after the length has been checked;
//! - every ring record starts with [`EventHeader`], whose `size` is the number
//!   of bytes the kernel wrote.
#![no_std]

/// Ring buffer carrying every event to userspace.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Sockets in flight: kernel socket address → [`FlowState`].
pub const MAP_FLOWS: &str = "FLOWS";
/// `connect()` destinations per thread: pid_tgid → [`ConnectArgs`].
pub const MAP_CONNECT_ARGS: &str = "CONNECT_ARGS";
/// Established flows to proxy ports: [`TupleKey`] → socket address.
pub const MAP_PROXY_FLOWS: &str = "PROXY_FLOWS";
/// Sockets being connected, by owner: (tgid << 32 | fd) → socket address.
pub const MAP_SOCK_FDS: &str = "SOCK_FDS";
/// Name of the load-time configuration global ([`Config`]).
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default ring size: 1 MiB holds ~8k flow events between two reader wake-ups.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
/// Default capacity of the in-kernel socket table.
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;

// ---------------------------------------------------------------------------
// Event kinds (u32 on the wire).
// ---------------------------------------------------------------------------

/// CLOSE→SYN_SENT: an active open began; carries the owner (task context).
pub const EVENT_CONNECT_START: u32 = 1;
/// SYN_SENT→ESTABLISHED.
pub const EVENT_CONNECTED: u32 = 2;
/// SYN_SENT→CLOSE (or any non-established end of an active open).
pub const EVENT_CONNECT_FAILED: u32 = 3;
/// An established active open reached CLOSE.
pub const EVENT_CLOSED: u32 = 4;
/// A SYN was retransmitted: the connect is stalling.
pub const EVENT_SYN_RETRANSMIT: u32 = 5;
/// First payload bytes of a flow to a proxy port, in one direction.
pub const EVENT_PAYLOAD: u32 = 6;
/// A DNS message (UDP or TCP port `Config::dns_port`) of a local socket:
/// queries out, responses in.
pub const EVENT_DNS: u32 = 7;
/// A TCP conntrack entry being confirmed (optional kprobe): its original
/// and reply tuples, i.e. what NAT did to the flow.
pub const EVENT_NAT_MAPPING: u32 = 8;
/// Number of kind slots in the counters (kind 0 is never emitted).
pub const EVENT_KINDS: u32 = 9;

/// Human name of an event kind, for metric labels.
pub const fn event_kind_name(kind: u32) -> &'static str {
    match kind {
        EVENT_CONNECT_START => "connect_start",
        EVENT_CONNECTED => "connected",
        EVENT_CONNECT_FAILED => "connect_failed",
        EVENT_CLOSED => "closed",
        EVENT_SYN_RETRANSMIT => "syn_retransmit",
        EVENT_PAYLOAD => "payload",
        EVENT_DNS => "dns",
        EVENT_NAT_MAPPING => "nat_mapping",
        _ => "unknown",
    }
}

// ---------------------------------------------------------------------------
// Counters (per-CPU array `STATS`).
// ---------------------------------------------------------------------------

/// `STATS[STAT_PRODUCED + kind]`: events the kernel tried to emit.
pub const STAT_PRODUCED: u32 = 0;
/// `STATS[STAT_RING_LOST + kind]`: ring reserve failures (ring full).
pub const STAT_RING_LOST: u32 = EVENT_KINDS;
/// Active opens not tracked because the socket table was full.
pub const STAT_FLOW_MAP_FULL: u32 = 2 * EVENT_KINDS;
/// Tracepoint field reads that failed (the event is dropped and counted).
pub const STAT_READ_ERRORS: u32 = 2 * EVENT_KINDS + 1;
/// Retransmits seen on tracked sockets (all states).
pub const STAT_RETRANSMITS: u32 = 2 * EVENT_KINDS + 2;
/// Size of the `STATS` array.
pub const STAT_SLOTS: u32 = 2 * EVENT_KINDS + 4;

// ---------------------------------------------------------------------------
// Flags.
// ---------------------------------------------------------------------------

/// `tcp:tcp_receive_reset` fired for the socket.
pub const FLOW_FLAG_RESET: u32 = 1;
/// The `connect()` sockaddr was captured for this flow.
pub const FLOW_FLAG_HAS_INTENDED: u32 = 2;
/// The first outgoing payload of a proxy flow was captured.
pub const FLOW_FLAG_REQ_SEEN: u32 = 4;
/// The first incoming payload of a proxy flow was captured.
pub const FLOW_FLAG_RESP_SEEN: u32 = 8;

/// Direction of a captured payload.
pub const DIR_EGRESS: u32 = 1;
pub const DIR_INGRESS: u32 = 2;
/// Bytes of payload captured per direction: enough for a request line with
/// a long host name and for a status line.
pub const PAYLOAD_BYTES: usize = 384;
/// Proxy ports the kernel watches payloads on (0 = unused slot).
pub const MAX_PROXY_PORTS: usize = 8;

/// Bytes of a DNS message captured: the header and a question with a long
/// name fit; answers are not parsed.
pub const DNS_BYTES: usize = 256;
/// Default DNS port watched (0 in `Config::dns_port` = DNS capture off).
pub const DNS_PORT: u16 = 53;
pub const IPPROTO_UDP: u16 = 17;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// TCP states as in the kernel's `enum tcp_state` (stable UAPI numbering).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
}

// ---------------------------------------------------------------------------
// Wire records.
// ---------------------------------------------------------------------------

/// Common header of every ring record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    /// Bytes of the whole record, header included.
    pub size: u32,
    /// `bpf_ktime_get_ns()` when the event happened (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// Addresses of a TCP socket. IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub family: u16,
    /// Host byte order (the tracepoints already convert).
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<Tuple>() == 40);

/// Destination given to `connect()` (before any socket-level load balancing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectArgs {
    pub ts_ns: u64,
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// The socket's file descriptor in the connecting process.
    pub fd: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ConnectArgs>() == 32);

/// Per-socket state kept in the kernel between an active open and its close.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `ts_ns` of the CONNECT_START event: with the socket address this is the flow id.
    pub start_ns: u64,
    pub established_ns: u64,
    pub retransmits: u32,
    pub syn_retransmits: u32,
    pub flags: u32,
    /// Error seen when the kernel reported one (`sk_err`, else `sk_err_soft`).
    pub reported_err: i32,
}
const _: () = assert!(size_of::<FlowState>() == 32);

/// EVENT_CONNECT_START.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectStart {
    pub hdr: EventHeader,
    pub skaddr: u64,
    pub cgroup_id: u64,
    /// Thread id (kernel pid).
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// Inode of the socket's network namespace (0 if unresolved).
    pub netns: u32,
    pub flags: u32,
    pub comm: [u8; 16],
    pub tuple: Tuple,
    /// What `connect()` was asked for (valid with FLOW_FLAG_HAS_INTENDED).
    pub intended: ConnectArgs,
}
const _: () = assert!(size_of::<ConnectStart>() == 136);

/// EVENT_CONNECTED, EVENT_CONNECT_FAILED and EVENT_CLOSED.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEnd {
    pub hdr: EventHeader,
    pub skaddr: u64,
    /// Flow id half: the CONNECT_START timestamp.
    pub start_ns: u64,
    pub established_ns: u64,
    pub oldstate: u32,
    pub newstate: u32,
    /// `sk->sk_err` read at the transition (0 if none or unresolved).
    pub sk_err: i32,
    /// `sk->sk_err_soft` at the transition.
    pub sk_err_soft: i32,
    /// The error the kernel reported for the socket: at
    /// `inet_sk_error_report`, or as handed to the application by
    /// `getsockopt(SO_ERROR)`. An ICMP error that arrives while the
    /// connecting task holds the socket lock lands in `sk_err_soft`, which
    /// `getsockopt(SO_ERROR)` then clears before the close: this field is the
    /// only trace left of it.
    pub reported_err: i32,
    pub retransmits: u32,
    pub syn_retransmits: u32,
    pub flags: u32,
    pub tuple: Tuple,
}
const _: () = assert!(size_of::<FlowEnd>() == 112);

/// Key of a TCP connection as seen from the local socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub family: u16,
    /// Host byte order.
    pub lport: u16,
    /// Host byte order.
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}
const _: () = assert!(size_of::<TupleKey>() == 40);

/// EVENT_PAYLOAD.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadEvent {
    pub hdr: EventHeader,
    pub skaddr: u64,
    pub start_ns: u64,
    /// DIR_EGRESS or DIR_INGRESS.
    pub direction: u32,
    /// Valid bytes in `data`.
    pub len: u32,
    pub data: [u8; PAYLOAD_BYTES],
}
const _: () = assert!(size_of::<PayloadEvent>() == 40 + PAYLOAD_BYTES);

impl Default for PayloadEvent {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            skaddr: 0,
            start_ns: 0,
            direction: 0,
            len: 0,
            data: [0; PAYLOAD_BYTES],
        }
    }
}

/// EVENT_DNS. Owner by socket (cookie, cgroup), not by task: ingress runs
/// in softirq, and the current task is not available to `cgroup_skb` on
/// every kernel this supports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub hdr: EventHeader,
    /// `bpf_get_socket_cookie`: the socket a query and its response share.
    pub cookie: u64,
    /// `bpf_skb_cgroup_id`: cgroup v2 id of the socket's owner.
    pub cgroup_id: u64,
    /// DIR_EGRESS (a query out) or DIR_INGRESS (a response in).
    pub direction: u32,
    /// IPPROTO_UDP or IPPROTO_TCP (TCP messages start with a 2-byte length).
    pub proto: u32,
    /// Local and remote address of the socket (the server is the remote).
    pub key: TupleKey,
    /// Payload bytes on the wire (may exceed `caplen`).
    pub len: u32,
    /// Valid bytes in `data`.
    pub caplen: u32,
    pub data: [u8; DNS_BYTES],
}
const _: () = assert!(size_of::<DnsEvent>() == 88 + DNS_BYTES);

impl Default for DnsEvent {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            cookie: 0,
            cgroup_id: 0,
            direction: 0,
            proto: 0,
            key: TupleKey::default(),
            len: 0,
            caplen: 0,
            data: [0; DNS_BYTES],
        }
    }
}

/// EVENT_SYN_RETRANSMIT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynRetransmit {
    pub hdr: EventHeader,
    pub skaddr: u64,
    pub start_ns: u64,
    pub syn_retransmits: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SynRetransmit>() == 40);

/// EVENT_NAT_MAPPING: a conntrack entry at confirmation. Tuples as conntrack
/// keeps them (ports in host byte order here): `original` as the client sent
/// it, `reply` as the answer comes back (src = who answers after DNAT,
/// dst = where the answer goes after SNAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatMapping {
    pub hdr: EventHeader,
    /// Inode of the entry's network namespace (0 if unresolved).
    pub netns: u32,
    pub _pad: u32,
    pub original: Tuple,
    pub reply: Tuple,
}
const _: () = assert!(size_of::<NatMapping>() == 104);

// ---------------------------------------------------------------------------
// Load-time configuration (one global, written by the agent before load).
// ---------------------------------------------------------------------------

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
}

pub const KOFF_UNKNOWN: u32 = u32::MAX;

impl KernelOffsets {
    pub const UNKNOWN: Self = Self {
        sock_sk_err: KOFF_UNKNOWN,
        sock_skc_net: KOFF_UNKNOWN,
        net_ns_inum: KOFF_UNKNOWN,
        sock_sk_err_soft: KOFF_UNKNOWN,
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

/// The `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub set_state: TpOffsets,
    pub retransmit: TpOffsets,
    pub receive_reset: TpOffsets,
    pub syscalls: SyscallTpOffsets,
    pub kernel: KernelOffsets,
    pub conntrack: ConntrackOffsets,
    /// Remote ports whose first payload bytes are captured (0 = unused).
    pub proxy_ports: [u16; MAX_PROXY_PORTS],
    /// UDP/TCP port whose messages are captured as DNS (0 = off).
    pub dns_port: u16,
    pub _pad: u16,
    /// Unread ring bytes at which a submit wakes the reader; below, events
    /// are submitted without a wake-up and the reader collects them on its
    /// poll tick (batched reads instead of one wake-up per event).
    pub wakeup_bytes: u32,
}
const _: () = assert!(size_of::<Config>() == 3 * 24 + 16 + 16 + 40 + 16 + 8);

impl Config {
    pub const DEFAULT: Self = Self {
        set_state: TpOffsets::ABSENT,
        retransmit: TpOffsets::ABSENT,
        receive_reset: TpOffsets::ABSENT,
        syscalls: SyscallTpOffsets::ABSENT,
        kernel: KernelOffsets::UNKNOWN,
        conntrack: ConntrackOffsets::UNKNOWN,
        proxy_ports: [0; MAX_PROXY_PORTS],
        dns_port: 0,
        wakeup_bytes: 0,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only integers and byte arrays, no implicit padding
    // (size asserted above): every bit pattern is a valid Config.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for super::ConnectArgs {}
}
