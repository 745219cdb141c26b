//! Retransmits and received resets: softirq context, attributed by socket
//! to flows opened in `set_state`. BTF tracepoints (the socket as an
//! argument, no record built) where the kernel has BTF, classic ones else.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use egress_common::{FLOW_FLAG_RESET, FlowState, STAT_RETRANSMITS, TpOffsets};

use crate::{config, flow_table::state, maps::count, sock, tp::field};

/// One retransmit of a tracked socket; before ESTABLISHED it is a SYN's.
#[inline(always)]
fn retransmitted(st: *mut FlowState) {
    count(STAT_RETRANSMITS);
    // SAFETY: valid state pointer; per-socket events are serialised by the socket lock.
    unsafe {
        (*st).retransmits += 1;
        if (*st).established_ns == 0 {
            (*st).syn_retransmits += 1;
        }
    }
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let o: TpOffsets = config!(retransmit);
    if let Ok(skaddr) = field::<u64>(&ctx, o.skaddr)
        && let Some(st) = state(skaddr)
    {
        retransmitted(st);
    }
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> i32 {
    if let Some(st) = state(sock::scalar(ctx.arg(0))) {
        retransmitted(st);
    }
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let o: TpOffsets = config!(receive_reset);
    if let Ok(skaddr) = field::<u64>(&ctx, o.skaddr)
        && let Some(st) = state(skaddr)
    {
        // SAFETY: valid state pointer.
        unsafe { (*st).flags |= FLOW_FLAG_RESET };
    }
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    if let Some(st) = state(sock::scalar(ctx.arg(0))) {
        // SAFETY: valid state pointer.
        unsafe { (*st).flags |= FLOW_FLAG_RESET };
    }
    0
}
