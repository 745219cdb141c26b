//! The one way out of the kernel: reserve, fill, submit, or count the loss.
use aya_ebpf::maps::RingBuf;
use egress_common::{STAT_PRODUCED, STAT_READ_ERRORS, STAT_RING_LOST};

use crate::maps::count;

/// Emit an event of `kind` into `ring`, filled in place (records are too
/// large to build on the 512-byte BPF stack), zeroed first. Every call is
/// counted as produced; a failed reserve is counted as lost for that kind; a
/// failed fill discards the record and is counted as a read error *and* as
/// lost, so produced = delivered + lost always holds. Returns whether it was
/// sent.
#[inline(always)]
pub fn emit<T: 'static>(
    ring: &RingBuf,
    kind: u32,
    fill: impl FnOnce(&mut T) -> Result<(), i64>,
) -> bool {
    emit_with(ring, kind, true, fill)
}

/// [`emit`] without zeroing: for capture records, whose fill sets every
/// header field and the `len` data bytes it reports (zeroing hundreds of
/// bytes per record is a loop the verifier walks byte by byte).
#[inline(always)]
pub fn emit_unzeroed<T: 'static>(
    ring: &RingBuf,
    kind: u32,
    fill: impl FnOnce(&mut T) -> Result<(), i64>,
) -> bool {
    emit_with(ring, kind, false, fill)
}

#[inline(always)]
fn emit_with<T: 'static>(
    ring: &RingBuf,
    kind: u32,
    zero: bool,
    fill: impl FnOnce(&mut T) -> Result<(), i64>,
) -> bool {
    count(STAT_PRODUCED + kind);
    let Some(mut entry) = ring.reserve::<T>(0) else {
        count(STAT_RING_LOST + kind);
        return false;
    };
    let ptr = entry.as_mut_ptr();
    // SAFETY: `ptr` points at size_of::<T>() writable ring bytes; T is a
    // plain #[repr(C)] record of integers, valid for any bytes.
    let ev = unsafe {
        if zero {
            core::ptr::write_bytes(ptr, 0, 1);
        }
        &mut *ptr
    };
    if fill(ev).is_ok() {
        entry.submit(wakeup_flag(ring));
        true
    } else {
        entry.discard(0);
        count(STAT_READ_ERRORS);
        count(STAT_RING_LOST + kind);
        false
    }
}

/// Wake the reader only once enough is unread (it also polls on a short
/// tick): one wake-up per batch, not per event.
#[inline(always)]
fn wakeup_flag(ring: &RingBuf) -> u64 {
    let threshold = crate::config!(wakeup_bytes) as u64;
    if ring.query(BPF_RB_AVAIL_DATA) >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
