//! What crosses the boundary besides the ring records: the clean-flow
//! counts the kernel keeps (`AggKey`, `AggValue`), what the agent asks of
//! the programs at run time (`Control`), and the load-time `Config`.
//! Re-exported at the crate root.
use crate::{
    ConntrackOffsets, KernelOffsets, LATENCY_BUCKETS, MAX_PROXY_PORTS, MAX_TLS_PORTS,
    SyscallTpOffsets, TpOffsets,
};

// ---------------------------------------------------------------------------
// Aggregation of clean flows and runtime control.
// ---------------------------------------------------------------------------

/// Who connected where: the key clean flows are counted under. The agent
/// resolves the cgroup to a pod or unit and the address to a destination
/// class and hop, as it does for a record.
///
/// Two maps (`MAP_AGG`): the kernel adds to `AGG[sel]`; the agent flips
/// `Control::agg_sel`, waits for programs still on the old map to finish,
/// then reads and clears it. No count is lost between a read and a delete.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub cgroup_id: u64,
    pub netns: u32,
    pub family: u16,
    /// Host byte order.
    pub dport: u16,
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<AggKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggValue {
    /// Connects that reached ESTABLISHED cleanly (no SYN retransmit over
    /// the degraded threshold).
    pub connects: u64,
    /// Established flows that closed cleanly.
    pub closes: u64,
    /// Sum and distribution of the connects' SYN_SENT→ESTABLISHED time.
    pub latency_sum_ns: u64,
    pub latency_buckets: [u64; LATENCY_BUCKETS],
}
const _: () = assert!(size_of::<AggValue>() == 24 + 8 * LATENCY_BUCKETS);

/// `CONTROL[0]`: what the agent asks of the kernel programs at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// `CTRL_*` flags.
    pub flags: u32,
    /// Index (0 or 1) of the aggregation map the kernel adds to.
    pub agg_sel: u32,
    /// SYN retransmits at or above which a connect is degraded (0 = never),
    /// and retransmits at or above which a close is: such flows are events.
    pub degraded_retransmits: u32,
    /// DNS messages a cgroup may have captured per second, and in a burst.
    pub dns_rate: u32,
    pub dns_burst: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Control>() == 24);

/// A cgroup's DNS capture budget (token bucket, tokens scaled by 1e9).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

// ---------------------------------------------------------------------------
// Load-time configuration (one global, written by the agent before load).
// ---------------------------------------------------------------------------

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
    /// Remote ports of TLS flows whose ClientHello is captured (0 = unused).
    pub tls_ports: [u16; MAX_TLS_PORTS],
    /// UDP/TCP port whose messages are captured as DNS (0 = off).
    pub dns_port: u16,
    /// 1 when `sys_enter_connect` is attached: look up what `connect()`
    /// was asked for (else the lookup is skipped: the table is empty).
    pub connect_intent: u16,
    /// Unread ring bytes at which a submit wakes the reader; below, events
    /// are submitted without a wake-up and the reader collects them on its
    /// poll tick (batched reads instead of one wake-up per event).
    pub wakeup_bytes: u32,
    /// Places in the direct-mapped socket table minus one (a power of two
    /// minus one: the index mask), see [`flow_table_split`].
    pub flow_slots_mask: u32,
}
const _: () = assert!(size_of::<Config>() == 3 * 24 + 16 + 120 + 40 + 16 + 8 + 8 + 4);

impl Config {
    pub const DEFAULT: Self = Self {
        set_state: TpOffsets::ABSENT,
        retransmit: TpOffsets::ABSENT,
        receive_reset: TpOffsets::ABSENT,
        syscalls: SyscallTpOffsets::ABSENT,
        kernel: KernelOffsets::UNKNOWN,
        conntrack: ConntrackOffsets::UNKNOWN,
        proxy_ports: [0; MAX_PROXY_PORTS],
        tls_ports: [0; MAX_TLS_PORTS],
        dns_port: 0,
        wakeup_bytes: 0,
        flow_slots_mask: 0,
        connect_intent: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], only integers and byte arrays, no implicit padding
    // (size asserted above): every bit pattern is a valid Config.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for crate::FlowState {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for crate::ConnectArgs {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for super::AggKey {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for super::AggValue {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for super::Control {}
    // SAFETY: as for Config (size asserted above).
    unsafe impl aya::Pod for crate::TupleKey {}
}
