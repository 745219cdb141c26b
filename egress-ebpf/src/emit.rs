//! The one way out of the kernel: reserve, fill, submit, or count the loss.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::programs::TracePointContext;
use egress_common::{AF_INET, AF_INET6, OFFSET_ABSENT, STAT_PRODUCED, STAT_READ_ERRORS, STAT_RING_LOST, TpOffsets, Tuple};

use crate::maps::{EVENTS, count};

/// Emit an event of `kind`, filled in place in the ring (records are too
/// large to build on the 512-byte BPF stack). Every call is counted as
/// produced; a failed reserve is counted as lost for that kind; a failed fill
/// discards the record and is counted as a read error *and* as lost, so
/// produced = delivered + lost always holds.
#[inline(always)]
pub fn emit<T: 'static>(kind: u32, fill: impl FnOnce(&mut T) -> Result<(), i64>) {
    count(STAT_PRODUCED + kind);
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(STAT_RING_LOST + kind);
        return;
    };
    let ptr = entry.as_mut_ptr();
    // SAFETY: `ptr` points at size_of::<T>() writable ring bytes; T is a
    // plain #[repr(C)] record for which all-zero is a valid value.
    let ev = unsafe {
        core::ptr::write_bytes(ptr, 0, 1);
        &mut *ptr
    };
    if fill(ev).is_ok() {
        entry.submit(wakeup_flag());
    } else {
        entry.discard(0);
        count(STAT_READ_ERRORS);
        count(STAT_RING_LOST + kind);
    }
}

/// Wake the reader only once enough is unread (it also polls on a short
/// tick): one wake-up per batch, not per event.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let threshold = crate::config!(wakeup_bytes) as u64;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Read a field of the tracepoint record at a load-time offset.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, off: u16) -> Result<T, i64> {
    if off == OFFSET_ABSENT {
        return Err(-2);
    }
    // SAFETY: bounded by the helper; a bad offset yields an error, not a fault.
    unsafe { ctx.read_at::<T>(off as usize) }.map_err(|e| {
        count(STAT_READ_ERRORS);
        e as i64
    })
}

/// Read the address tuple of a TCP tracepoint record into `t` (zeroed).
#[inline(always)]
pub fn tuple(ctx: &TracePointContext, o: &TpOffsets, t: &mut Tuple) -> Result<(), i64> {
    t.family = if o.family == OFFSET_ABSENT { family_from_v6(ctx, o)? } else { field::<u16>(ctx, o.family)? };
    t.sport = field::<u16>(ctx, o.sport)?;
    t.dport = field::<u16>(ctx, o.dport)?;
    if t.family == AF_INET {
        let s: [u8; 4] = field(ctx, o.saddr)?;
        let d: [u8; 4] = field(ctx, o.daddr)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if t.family == AF_INET6 {
        t.saddr = field(ctx, o.saddr_v6)?;
        t.daddr = field(ctx, o.daddr_v6)?;
    }
    Ok(())
}

/// The tcp:* tracepoints of Linux before 5.12 have no `family` field; they
/// store IPv4 socket addresses v4-mapped into `saddr_v6`.
#[inline(always)]
fn family_from_v6(ctx: &TracePointContext, o: &TpOffsets) -> Result<u16, i64> {
    let a: [u8; 16] = field(ctx, o.saddr_v6)?;
    Ok(if crate::payload::is_v4_mapped(&a) { AF_INET } else { AF_INET6 })
}

/// Read a kernel value at `base + off`, where `off` came from BTF.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Option<T> {
    if off == egress_common::KOFF_UNKNOWN {
        return None;
    }
    // SAFETY: probe read: a bad address returns an error.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}
