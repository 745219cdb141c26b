//! `inet_sk_error_report` (Linux 5.16+) as a *raw* tracepoint: its record
//! has no socket address, but the raw arguments carry the `struct sock *`.
//! The error is stored in the socket's flow state and leaves the kernel with
//! the flow's end event.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use egress_common::FlowState;

use crate::{flow::state, sock};

#[inline(always)]
fn record(sk: u64, st: *mut FlowState) {
    let err = match sock::errors(sk) {
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
    let sk: u64 = ctx.arg(0);
    if let Some(st) = state(sk) {
        record(sk, st);
    }
    0
}
