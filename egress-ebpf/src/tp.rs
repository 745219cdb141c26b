//! Reading tracefs tracepoint records at the offsets the agent found in
//! their `format` files (hash mode: classic tracepoints).
use aya_ebpf::programs::TracePointContext;
use egress_common::{AF_INET, AF_INET6, OFFSET_ABSENT, STAT_READ_ERRORS, TpOffsets, Tuple};

use crate::{maps::count, net::is_v4_mapped};

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
    t.family = if o.family == OFFSET_ABSENT {
        family_from_v6(ctx, o)?
    } else {
        field::<u16>(ctx, o.family)?
    };
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
    Ok(if is_v4_mapped(&a) { AF_INET } else { AF_INET6 })
}
