//! Maps shared by the programs. Sizes here are defaults: the agent overrides
//! them at load time (`--ring-bytes`, `--max-flows`).
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use egress_common::{
    ConnectArgs, DEFAULT_MAX_FLOWS, DEFAULT_RING_BYTES, FlowState, STAT_SLOTS, TupleKey,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Not an LRU: evicting a live flow would lose it silently. A full table is
/// counted (STAT_FLOW_MAP_FULL) instead.
#[map]
pub static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Established flows to proxy ports, by tuple: the key packets carry.
#[map]
pub static PROXY_FLOWS: HashMap<TupleKey, u64> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Stale entries (threads that died between connect() and SYN_SENT) are
/// harmless and may be evicted: LRU.
#[map]
pub static CONNECT_ARGS: LruHashMap<u64, ConnectArgs> = LruHashMap::with_max_entries(16_384, 0);

/// (tgid << 32 | fd) → socket address of an active open, so that
/// `getsockopt(SO_ERROR)` can be tied to its socket. LRU: entries of sockets
/// long closed may be evicted; a stale hit finds no flow and does nothing.
#[map]
pub static SOCK_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16_384, 0);

/// In-flight `getsockopt(SO_ERROR)` calls: pid_tgid → (socket, optval pointer).
#[map]
pub static SO_ERROR_CALLS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4_096, 0);

/// Add one to a per-CPU counter. Atomic (BPF `XADD`, no fetch: every kernel
/// since 4.x has it) because a softirq program may interrupt a task-context
/// one on the same CPU and both may bump the same slot.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: `p` is a valid, 8-byte aligned u64 in this CPU's slot.
        unsafe {
            core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) 1u64);
        }
    }
}
