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

mod control;
mod maps;
mod offsets;
pub use control::*;
pub use maps::*;
pub use offsets::*;

// ---------------------------------------------------------------------------
// Event kinds (u32 on the wire).
// ---------------------------------------------------------------------------

/// A flow reached a point worth a record: connected (when asked for, slow,
/// or to a capture port), failed to connect, or closed (worse than it
/// connected, or after a connected record). Self-contained: it carries the
/// owner captured at the connect.
pub const EVENT_FLOW: u32 = 1;
/// Payload bytes of a flow to a capture port, with their stream offset.
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
        EVENT_FLOW => "flow",
        EVENT_PAYLOAD => "payload",
        EVENT_DNS => "dns",
        EVENT_NAT_MAPPING => "nat_mapping",
        _ => "unknown",
    }
}

/// `FlowEvent::phase`: SYN_SENT→ESTABLISHED.
pub const PHASE_CONNECTED: u32 = 1;
/// `FlowEvent::phase`: an active open that ended before ESTABLISHED.
pub const PHASE_CONNECT_FAILED: u32 = 2;
/// `FlowEvent::phase`: an established active open reached CLOSE.
pub const PHASE_CLOSED: u32 = 3;

// ---------------------------------------------------------------------------
// Counters (per-CPU array `STATS`).
// ---------------------------------------------------------------------------

/// `STATS[STAT_PRODUCED + kind]`: events the kernel tried to emit.
pub const STAT_PRODUCED: u32 = 0;
/// `STATS[STAT_RING_LOST + kind]`: ring reserve failures (ring full).
pub const STAT_RING_LOST: u32 = EVENT_KINDS;
/// Active opens not tracked because the socket table refused the entry.
pub const STAT_FLOW_MAP_FULL: u32 = 2 * EVENT_KINDS;
/// Tracepoint field reads that failed (the event is dropped and counted).
pub const STAT_READ_ERRORS: u32 = 2 * EVENT_KINDS + 1;
/// Retransmits seen on tracked sockets (all states).
pub const STAT_RETRANSMITS: u32 = 2 * EVENT_KINDS + 2;
/// Active opens tracked (socket state created).
pub const STAT_FLOW_STARTS: u32 = 2 * EVENT_KINDS + 3;
/// Tracked active opens that ended (socket state released).
pub const STAT_FLOW_ENDS: u32 = 2 * EVENT_KINDS + 4;
/// Transitions of an active open (SYN_SENT→…) whose state was gone: the
/// LRU table evicted it under pressure (e.g. sockets stuck connecting).
pub const STAT_FLOW_EVICTED: u32 = 2 * EVENT_KINDS + 5;
/// Clean connects and closes counted in the aggregation maps.
pub const STAT_AGG_CONNECTS: u32 = 2 * EVENT_KINDS + 6;
pub const STAT_AGG_CLOSES: u32 = 2 * EVENT_KINDS + 7;
/// Clean flows sent as events because the aggregation map was full.
pub const STAT_AGG_FULL: u32 = 2 * EVENT_KINDS + 8;
/// DNS messages not captured: their cgroup spent its budget.
pub const STAT_DNS_RATE_LIMITED: u32 = 2 * EVENT_KINDS + 9;
/// State changes the kernel skipped the set_state program for (it was
/// running on the CPU) that a later hook on the same socket took up: an
/// ESTABLISHED found at the close or at the first payload packet, a hop's
/// accepted connection at its first payload packet, a CLOSE at the error
/// report that follows a reset.
pub const STAT_NESTED_RECOVERED: u32 = 2 * EVENT_KINDS + 10;
/// Flows whose end no state change reported, closed when their socket was
/// destroyed (`tcp_destroy_sock`).
pub const STAT_DESTROY_RECOVERED: u32 = 2 * EVENT_KINDS + 11;
/// Size of the `STATS` array.
pub const STAT_SLOTS: u32 = 2 * EVENT_KINDS + 12;

// ---------------------------------------------------------------------------
// Flags.
// ---------------------------------------------------------------------------

/// `tcp:tcp_receive_reset` fired for the socket.
pub const FLOW_FLAG_RESET: u32 = 1;
/// The `connect()` sockaddr was captured for this flow.
pub const FLOW_FLAG_HAS_INTENDED: u32 = 2;
/// The flow's connect went out as an event: its close goes out too (the
/// agent holds the flow).
pub const FLOW_FLAG_EMITTED: u32 = 4;
/// The flow goes to a capture port (a proxy): its payloads are read.
pub const FLOW_FLAG_CAPTURE: u32 = 8;
/// Payload capture of one direction reached its bound.
pub const FLOW_FLAG_TX_DONE: u32 = 16;
pub const FLOW_FLAG_RX_DONE: u32 = 32;
/// The answer's status line is 2xx (the answer's bound is the short one).
/// The answer is received on an active open, sent on an accepted one.
pub const FLOW_FLAG_RX_OK: u32 = 64;
/// An accepted connection on a capture port: this machine runs the hop, and
/// the flow is the hop's view of one client (the request comes in, the
/// answer goes out).
pub const FLOW_FLAG_ACCEPTED: u32 = 128;
/// The flow existed before the agent started and was adopted from the
/// socket table: its owner task and connect time are unknown.
pub const FLOW_FLAG_ADOPTED: u32 = 256;
/// The flow goes to a TLS port (`Config::tls_ports`): its ClientHello is
/// captured (the request side's first bytes) and only the first segment of
/// the answer (the server's first record says whether the handshake went on).
pub const FLOW_FLAG_TLS: u32 = 512;
/// The flow's ESTABLISHED was not traced (the kernel skipped the run) and
/// was taken up later, at the first payload packet or the close: its
/// `established_ns` is that moment's, so the connect latency it gives is an
/// upper bound.
pub const FLOW_FLAG_UNTIMED: u32 = 1024;

/// `Control::flags`: send every flow as events, clean ones too (a client
/// is watching live, or `--log-flows`).
pub const CTRL_VERBOSE: u32 = 1;
/// `Control::flags`: send flows to public addresses (outside
/// `PRIVATE_NETS`) as events: a proxy chain is configured and egress that
/// skips it is reported one by one.
pub const CTRL_PUBLIC_EVENTS: u32 = 2;
/// Test hook (`--skip-established`): the set_state program leaves every
/// ESTABLISHED undone, as if the kernel had skipped its run, so that the
/// hooks taking such a skip up are tested deterministically.
pub const CTRL_SKIP_ESTABLISHED: u32 = 4;

/// Direction of a captured payload.
pub const DIR_EGRESS: u32 = 1;
pub const DIR_INGRESS: u32 = 2;
/// Payload bytes per [`PayloadEvent`].
pub const PAYLOAD_BYTES: usize = 512;
/// Stream bytes captured per flow: sent (the CONNECT request and the first
/// bytes inside the tunnel, where a TLS ClientHello names its server), and
/// received (the proxy's answer: its header block when it is 2xx; header
/// and body when it is an error, whose maker may be named only in the body).
pub const CAPTURE_TX_BYTES: u32 = 1024;
pub const CAPTURE_RX_OK_BYTES: u32 = 1024;
pub const CAPTURE_RX_ERR_BYTES: u32 = 4096;
/// Events one packet may give (a 4 KiB answer in one segment).
pub const CAPTURE_CHUNKS_PER_PACKET: u32 = 8;
/// Proxy ports the kernel watches payloads on (0 = unused slot).
pub const MAX_PROXY_PORTS: usize = 8;
/// TLS ports whose flows' ClientHello is read (0 = unused slot).
pub const MAX_TLS_PORTS: usize = 4;
/// Default TLS port.
pub const TLS_PORT: u16 = 443;
/// The answer side of a TLS port's flow: only the chunk holding its first
/// byte (the server's first record; one event).
pub const CAPTURE_TLS_RX_BYTES: u32 = 1;

/// Bytes of a DNS message captured: the header and a question with a long
/// name fit; answers are not parsed.
pub const DNS_BYTES: usize = 256;
/// Default DNS port watched (0 in `Config::dns_port` = DNS capture off).
pub const DNS_PORT: u16 = 53;
pub const IPPROTO_UDP: u16 = 17;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Upper bounds of the connect latency buckets, in ns: the agent's
/// `egress_connect_duration_seconds` histogram has exactly these, and the
/// kernel counts clean connects into them. The SYN retransmit schedule puts
/// failed and slow connects on plateaus (1 s apart while
/// `tcp_syn_linear_timeouts` applies, doubling otherwise: 1, 3, 7, 15, 31,
/// 63, 127 s): each bound sits just under a plateau so every retry count has
/// its bucket. The last bucket is +Inf.
pub const LATENCY_BOUNDS_NS: [u64; 20] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    950_000_000,
    1_950_000_000,
    2_950_000_000,
    3_950_000_000,
    6_950_000_000,
    14_950_000_000,
    30_950_000_000,
    62_950_000_000,
    126_950_000_000,
    135_000_000_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

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
    pub const NEW_SYN_RECV: u32 = 12;
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
    /// Host byte order.
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

/// Per-socket state kept in the kernel between an active open and its
/// close (socket storage, or the hash-mode table). The owner is captured at
/// CLOSE→SYN_SENT, the only transition that runs in the connecting task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// With the socket address, the flow id.
    pub start_ns: u64,
    pub established_ns: u64,
    pub cgroup_id: u64,
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    pub netns: u32,
    pub retransmits: u32,
    pub syn_retransmits: u32,
    pub flags: u32,
    /// Error seen when the kernel reported one (`sk_err`, else `sk_err_soft`).
    pub reported_err: i32,
    /// Stream position of the first byte sent / received (`snd_una` and
    /// `rcv_nxt` at ESTABLISHED), for the offsets of captured payloads.
    pub tx_base: u32,
    pub rx_base: u32,
    /// The destination, read once at ESTABLISHED (the aggregation key).
    pub family: u16,
    /// Host byte order.
    pub dport: u16,
    pub daddr: [u8; 16],
    pub intended: ConnectArgs,
}
const _: () = assert!(size_of::<FlowState>() == 128);

/// One place of the direct-mapped socket table ([`MAP_FLOW_SLOTS`]): the
/// socket it holds (0 = free) and its state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub sk: u64,
    pub state: FlowState,
}

/// EVENT_FLOW.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub hdr: EventHeader,
    /// Kernel socket address: with `start_ns`, the flow id.
    pub skaddr: u64,
    pub start_ns: u64,
    /// 0 if the flow never connected.
    pub established_ns: u64,
    pub cgroup_id: u64,
    /// Thread id (kernel pid) and process id (kernel tgid) of the connecting task.
    pub pid: u32,
    pub tgid: u32,
    /// Inode of the socket's network namespace (0 if unresolved).
    pub netns: u32,
    /// `PHASE_*`.
    pub phase: u32,
    pub comm: [u8; 16],
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
    /// `tcp_sock::bytes_received` / `bytes_acked` at the transition
    /// (`u64::MAX` when this kernel's layout is unknown).
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub tuple: Tuple,
    /// What `connect()` was asked for (valid with FLOW_FLAG_HAS_INTENDED).
    pub intended: ConnectArgs,
}
const _: () = assert!(size_of::<FlowEvent>() == 200);

/// One socket adopted at start by the walk of open files
/// (`adopt_sockets`): what it writes to the iterator's output for each, so
/// the agent can count and report them. The flow itself is in `MAP_FLOWS`
/// from then on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptedSocket {
    pub skaddr: u64,
    pub cgroup_id: u64,
    pub pid_tgid: u64,
    pub netns: u32,
    /// `FLOW_FLAG_*` (ADOPTED, and ACCEPTED for a hop's connection).
    pub flags: u32,
    pub comm: [u8; 16],
    pub tuple: Tuple,
}
const _: () = assert!(size_of::<AdoptedSocket>() == 88);

/// `ADOPT_PASS[0]`: the walk's first pass notes listening sockets, the
/// second adopts (an accepted connection is told by its port's listener).
pub const ADOPT_PASS_LISTENERS: u32 = 0;
pub const ADOPT_PASS_ADOPT: u32 = 1;

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

/// EVENT_PAYLOAD: `len` bytes of one direction of a flow, starting at
/// stream offset `offset` (0 = the first byte sent, or received, after the
/// handshake). Chunks may repeat (retransmits) or come out of order.
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
    pub offset: u32,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_BYTES],
}
const _: () = assert!(size_of::<PayloadEvent>() == 48 + PAYLOAD_BYTES);

impl Default for PayloadEvent {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            skaddr: 0,
            start_ns: 0,
            direction: 0,
            len: 0,
            offset: 0,
            _pad: 0,
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
