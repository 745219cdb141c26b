//! `inet_sk_error_report` (Linux 5.16+): the error a socket reported,
//! stored in its flow state; it leaves the kernel with the flow's end event.
//! As a BTF tracepoint where the kernel has BTF, else as a *raw* tracepoint
//! (its record has no socket address; the raw arguments carry the
//! `struct sock *`).
//!
//! A socket already in CLOSE reports after its close was traced (a reset:
//! `tcp_done` first; a local abort: CLOSE, then the error), and that close
//! ended its flow with `sk_err` in hand. A flow still tracked here had its
//! CLOSE skipped by the kernel (see `set_state.rs`): it ends here. (A
//! timeout reports before its close, on 6.18 too: a skipped CLOSE of a
//! timed-out connect ends when its socket is destroyed.)
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use egress_common::{STAT_NESTED_RECOVERED, tcp_state};

use crate::{
    config,
    flow_table::state,
    set_state::end_unseen,
    sock::{Probed, Sk, Typed},
};

#[inline(always)]
fn report(sk: impl Sk) {
    if sk.field::<u8>(config!(kernel.skc_state)) == Some(tcp_state::CLOSE as u8) {
        end_unseen(sk, STAT_NESTED_RECOVERED);
        return;
    }
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
    report(Probed(ctx.arg(0)));
    0
}

/// Where the kernel has BTF, the passive side's reports (a storm's server
/// sockets reset by their clients) leave without a lookup
/// ([`Sk::passive_untracked`]).
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report_btf(ctx: BtfTracePointContext) -> i32 {
    let sk = Typed::new(ctx.arg(0));
    if !sk.passive_untracked() {
        report(sk);
    }
    0
}
