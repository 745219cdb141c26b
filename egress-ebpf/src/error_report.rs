//! `inet_sk_error_report` (Linux 5.16+) as a *raw* tracepoint: its record
//! has no socket address, but the raw arguments carry the `struct sock *`.
//! The error is stored in the socket's flow state and leaves the kernel with
//! the flow's end event.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::{config, maps::FLOWS, read::kread};

#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(state) = FLOWS.get_ptr_mut(sk) else {
        return 0;
    };
    let k = config!(kernel);
    let err = match kread::<i32>(sk, k.sock_sk_err) {
        Some(e) if e != 0 => e,
        _ => kread::<i32>(sk, k.sock_sk_err_soft).unwrap_or(0),
    };
    if err != 0 {
        // SAFETY: valid map value pointer.
        unsafe { (*state).reported_err = err };
    }
    0
}
