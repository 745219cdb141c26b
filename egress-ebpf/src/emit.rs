//! The one way out of the kernel: reserve, fill, submit, or count the loss.
use egress_common::{STAT_PRODUCED, STAT_READ_ERRORS, STAT_RING_LOST};

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
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
