//! `inet_sk_error_report` (Linux 5.16+): the error a socket reported,
//! stored in its flow state; it leaves the kernel with the flow's end event.
//! As a BTF tracepoint where the kernel has BTF, else as a *raw* tracepoint
//! (its record has no socket address; the raw arguments carry the
//! `struct sock *`).
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use egress_common::tcp_state;

use crate::{
    config,
    flow_table::state,
    sock::{Probed, Sk, Typed},
};

#[inline(always)]
fn record(sk: impl Sk) {
    let Some(st) = state(sk.addr()) else { return };
    let err = match sk.errors() {
        (0, soft) => soft,
        (e, _) => e,
    };
    if err != 0 {
        // SAFETY: valid state pointer.
        unsafe { (*st).reported_err = err };
    }
}

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    record(Probed(ctx.arg(0)));
    0
}

/// A socket already in CLOSE reports after its close was traced (a reset
/// or timeout: `tcp_done` first; a local abort: CLOSE, then the error),
/// and the close ended its flow with `sk_err` in hand: such a report, most
/// of them, leaves without a flow-table lookup.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report_btf(ctx: BtfTracePointContext) -> i32 {
    let sk = Typed::new(ctx.arg(0));
    if sk.field::<u8>(config!(kernel.skc_state)) != Some(tcp_state::CLOSE as u8) {
        record(sk);
    }
    0
}
