//! Maps shared by the programs. Sizes here are defaults: the agent overrides
//! them at load time (`--ring-bytes`, `--max-flows`).
use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
};
use egress_common::{
    AF_INET, AggKey, AggValue, BUILTIN_PRIVATE_V4, ConnectArgs, Control, DEFAULT_AGG_KEYS,
    DEFAULT_MAX_FLOWS, DEFAULT_RING_BYTES, FlowState, PRIVATE_NETS_MAX, STAT_SLOTS, TokenBucket,
    Tuple, TupleKey,
};

/// Flow outcomes and NAT mappings.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Captured bytes: payloads of capture-port flows and DNS messages. Apart
/// from EVENTS, so that captures can never take the room outcomes need.
#[map]
pub static CAPTURE: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Established flows to capture ports, by tuple (the key packets carry).
#[map]
pub static PROXY_FLOWS: LruHashMap<TupleKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Stale entries (threads that died between connect() and SYN_SENT) are
/// harmless and may be evicted: LRU.
#[map]
pub static CONNECT_ARGS: LruHashMap<u64, ConnectArgs> = LruHashMap::with_max_entries(16_384, 0);

/// (tgid << 32 | fd) → socket address of an active open, so that
/// `getsockopt(SO_ERROR)` seen by the syscall tracepoints can be tied to its
/// socket. LRU: a stale hit finds no flow and does nothing.
#[map]
pub static SOCK_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// In-flight `getsockopt(SO_ERROR)` calls: pid_tgid → (socket, optval pointer).
#[map]
pub static SO_ERROR_CALLS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4_096, 0);

/// Clean flows counted by (owner cgroup, destination): see `AggKey`.
/// Per CPU: every connection of a busy destination adds to the same key,
/// and one value shared by all CPUs made each add a cache-line transfer
/// between them. Not preallocated: a preallocated per-CPU map holds
/// `max_entries × possible CPUs` values from the start (hundreds of MiB on
/// a VM declaring 240 possible CPUs); this one holds only the keys seen
/// since the agent last drained it.
#[map]
pub static AGG0: PerCpuHashMap<AggKey, AggValue> =
    PerCpuHashMap::with_max_entries(DEFAULT_AGG_KEYS, BPF_F_NO_PREALLOC);
#[map]
pub static AGG1: PerCpuHashMap<AggKey, AggValue> =
    PerCpuHashMap::with_max_entries(DEFAULT_AGG_KEYS, BPF_F_NO_PREALLOC);

/// `BPF_F_NO_PREALLOC` of `uapi/linux/bpf.h`.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-CPU room for the state and tuple of a connection accepted on a
/// capture port: the set_state hook's own paths leave too little stack.
#[map]
pub static SCRATCH_FLOW: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SCRATCH_TUPLE: PerCpuArray<Tuple> = PerCpuArray::with_max_entries(1, 0);
/// The same room for the payload programs taking up an accepted connection
/// (`flow::take_up_accepted`): a softirq's packet may interrupt the
/// set_state program filling its own in a task (a listener's backlog).
#[map]
pub static SCRATCH_TAKE_UP: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// Runtime control written by the agent (one entry).
#[map]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);

/// DNS capture budget per cgroup (LRU: idle cgroups age out).
#[map]
pub static DNS_BUCKETS: LruHashMap<u64, TokenBucket> = LruHashMap::with_max_entries(4_096, 0);

/// Private and cluster ranges (IPv4 v4-mapped): see `MAP_PRIVATE_NETS`.
#[map]
pub static PRIVATE_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(PRIVATE_NETS_MAX, 0);

/// Whether `addr` (of `family`) lies in a private or cluster range. The
/// built-in IPv4 ranges (loopback, RFC 1918, …: most of a node's traffic)
/// are compared inline; the trie is asked only for the rest.
#[inline(always)]
pub fn is_private(family: u16, addr: &[u8; 16]) -> bool {
    let mut a = *addr;
    if family == AF_INET {
        let v4 = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let mut i = 0;
        while i < BUILTIN_PRIVATE_V4.len() {
            let (net, len) = BUILTIN_PRIVATE_V4[i];
            let mask = u32::MAX << (32 - u32::from(len));
            if v4 & mask == u32::from_be_bytes(net) {
                return true;
            }
            i += 1;
        }
        a = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]];
    }
    PRIVATE_NETS.get(Key::new(128, a)).is_some()
}

/// Add `v` to a u64 shared with other CPUs or with an interrupting program.
/// BPF `XADD` without fetch: every kernel since 4.x has it.
#[inline(always)]
pub fn xadd(p: *mut u64, v: u64) {
    // SAFETY: the caller passes an 8-byte aligned u64 inside a map value.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

/// Add one to a per-CPU counter. Atomic because a softirq program may
/// interrupt a task-context one on the same CPU and both may bump the slot.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        xadd(p, 1);
    }
}

/// The runtime control (all zero until the agent writes it: not verbose,
/// aggregation map 0, no degraded threshold, no DNS budget).
#[inline(always)]
pub fn control() -> Control {
    match CONTROL.get(0) {
        Some(c) => *c,
        None => Control::default(),
    }
}
