//! The socket table: the state of each tracked socket, by its address.
//!
//! Two parts. Most active opens go into a direct-mapped array
//! (`FLOW_SLOTS`, the place chosen by a hash of the address): no bucket
//! lock, no allocation, no LRU list, and a lookup that misses is one
//! compare. A connect whose place is taken by another live socket, a
//! connection a hop accepted, and a socket adopted at start go into the LRU
//! hash (`FLOWS`), which evicts when full (an active open that then finds
//! its state gone is counted). The LRU is asked only while it may hold an
//! entry (`SPILLED`): on a node with no collisions, no hop and no adoption
//! left, a socket never tracked costs one array read.
//!
//! Places are claimed only by the main set_state program in the connecting
//! task (CLOSE→SYN_SENT): a CPU runs one such program at a time, so claims
//! on one CPU never interleave. Two CPUs claiming the same free place in
//! the same few nanoseconds (two new sockets whose addresses hash alike)
//! would both write it; the loser's later transitions find no state and are
//! counted as evicted (`STAT_FLOW_EVICTED`): nothing is lost silently. A
//! place is freed by its own socket's close, from any CPU.
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use egress_common::{DEFAULT_MAX_FLOWS, FlowSlot, FlowState};

use crate::{config, maps::xadd};

/// The direct-mapped part; the agent sizes it (`flow_table_split`).
#[map]
pub static FLOW_SLOTS: Array<FlowSlot> = Array::with_max_entries(DEFAULT_MAX_FLOWS / 2, 0);

/// The LRU part. LRU: sockets stuck connecting to a blackhole cannot lock
/// new connections out. Not socket storage: its allocation per socket
/// (kzalloc, memcg charge, RCU free) cost ~4 % of all CPU on a loopback
/// connect storm here.
///
/// One LRU list for all CPUs, not per-CPU lists (BPF_F_NO_COMMON_LRU): a
/// per-CPU list holds `max_entries / possible CPUs`, so on a VM that
/// declares 64–240 possible CPUs one busy CPU would evict live flows (and
/// uncountably, if they are established) with the table nearly empty.
#[map]
pub static FLOWS: LruHashMap<u64, FlowState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS / 2, 0);

/// Entries put into [`FLOWS`] minus those removed (evictions are not
/// seen, so it can only overstate): while 0, a lookup skips the LRU.
#[map]
static SPILLED: Array<u64> = Array::with_max_entries(1, 0);

/// The place of `sk` in [`FLOW_SLOTS`]: Fibonacci hashing of the address
/// (socket objects sit at multiples of their slab size; the product's high
/// bits mix them all).
#[inline(always)]
fn place(sk: u64) -> u32 {
    ((sk.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32) & config!(flow_slots_mask)
}

#[inline(always)]
fn slot(sk: u64) -> Option<*mut FlowSlot> {
    FLOW_SLOTS.get_ptr_mut(place(sk))
}

#[inline(always)]
fn spilled() -> bool {
    // SAFETY: valid map value pointer; a plain read of a counter.
    SPILLED.get_ptr(0).is_some_and(|n| unsafe { core::ptr::read_volatile(n) } != 0)
}

#[inline(always)]
fn spill(delta: u64) {
    if let Some(n) = SPILLED.get_ptr_mut(0) {
        xadd(n, delta);
    }
}

/// The state of the socket at `sk`, if it is tracked.
#[inline(always)]
pub fn state(sk: u64) -> Option<*mut FlowState> {
    if let Some(s) = slot(sk) {
        // SAFETY: valid map value pointer.
        if unsafe { (*s).sk } == sk {
            // SAFETY: as above.
            return Some(unsafe { &raw mut (*s).state });
        }
    }
    if !spilled() {
        return None;
    }
    FLOWS.get_ptr_mut(sk)
}

/// A free place for `sk` (or its own, left by a socket at the same address
/// whose end was missed), to be filled and then [`publish`]ed. Only for
/// the connecting task (see the module's note).
#[inline(always)]
pub fn claim(sk: u64) -> Option<*mut FlowSlot> {
    let s = slot(sk)?;
    // SAFETY: valid map value pointer.
    let holder = unsafe { core::ptr::read_volatile(&raw const (*s).sk) };
    (holder == 0 || holder == sk).then_some(s)
}

/// Make a claimed place's state visible under `sk`: after the state is
/// written, so that a lookup never sees a half-written one.
#[inline(always)]
pub fn publish(s: *mut FlowSlot, sk: u64) {
    // SAFETY: valid map value pointer.
    unsafe { core::ptr::write_volatile(&raw mut (*s).sk, sk) };
}

/// Put `st` into the LRU part (`flags`: `BPF_ANY` or `BPF_NOEXIST`).
#[inline(always)]
pub fn insert_lru(sk: u64, st: &FlowState, flags: u64) -> Result<(), i64> {
    FLOWS.insert(sk, st, flags)?;
    spill(1);
    Ok(())
}

/// Forget the socket at `sk`.
#[inline(always)]
pub fn remove(sk: u64) {
    if let Some(s) = slot(sk) {
        // SAFETY: valid map value pointer.
        if unsafe { (*s).sk } == sk {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&raw mut (*s).sk, 0) };
            return;
        }
    }
    if spilled() && FLOWS.remove(sk).is_ok() {
        spill(u64::MAX);
    }
}
