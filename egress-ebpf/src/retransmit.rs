//! `tcp:tcp_retransmit_skb` and `tcp:tcp_receive_reset`: softirq context,
//! attributed by socket address to flows opened in `set_state`.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use egress_common::{
    EVENT_SYN_RETRANSMIT, EventHeader, FLOW_FLAG_RESET, STAT_RETRANSMITS, SynRetransmit, TpOffsets,
    tcp_state,
};

use crate::{
    config,
    emit::emit,
    maps::{FLOWS, count},
    read::field,
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let o: TpOffsets = config!(retransmit);
    let skaddr = field::<u64>(ctx, o.skaddr)?;
    let Some(state) = FLOWS.get_ptr_mut(skaddr) else {
        return Ok(());
    };
    count(STAT_RETRANSMITS);
    let st = field::<i32>(ctx, o.state)? as u32;
    // SAFETY: valid map value pointer; per-socket events are serialised by the socket lock.
    unsafe { (*state).retransmits += 1 };
    if st == tcp_state::SYN_SENT {
        // SAFETY: as above.
        let n = unsafe {
            (*state).syn_retransmits += 1;
            (*state).syn_retransmits
        };
        // SAFETY: as above.
        let start_ns = unsafe { (*state).start_ns };
        emit(EVENT_SYN_RETRANSMIT, |ev: &mut SynRetransmit| {
            ev.hdr = EventHeader {
                kind: EVENT_SYN_RETRANSMIT,
                size: size_of::<SynRetransmit>() as u32,
                // SAFETY: a helper without arguments.
                ts_ns: unsafe { bpf_ktime_get_ns() },
            };
            ev.skaddr = skaddr;
            ev.start_ns = start_ns;
            ev.syn_retransmits = n;
            Ok(())
        });
    }
    Ok(())
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let o: TpOffsets = config!(receive_reset);
    if let Ok(skaddr) = field::<u64>(&ctx, o.skaddr)
        && let Some(state) = FLOWS.get_ptr_mut(skaddr)
    {
        // SAFETY: valid map value pointer.
        unsafe { (*state).flags |= FLOW_FLAG_RESET };
    }
    0
}
