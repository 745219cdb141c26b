//! `sock:inet_sk_error_report` (Linux 5.16+): the socket error as the kernel
//! reports it. The record has no socket address, so it goes to userspace with
//! its tuple and is joined to the flow there.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use egress_common::{EVENT_ERROR_REPORT, ErrorReport, EventHeader, IPPROTO_TCP, TpOffsets};

use crate::{
    config,
    emit::{emit, field, tuple},
};

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let _ = try_error_report(&ctx);
    0
}

fn try_error_report(ctx: &TracePointContext) -> Result<(), i64> {
    let o: TpOffsets = config!(error_report);
    if field::<u16>(ctx, o.protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    emit(EVENT_ERROR_REPORT, |ev: &mut ErrorReport| {
        ev.hdr = EventHeader {
            kind: EVENT_ERROR_REPORT,
            size: size_of::<ErrorReport>() as u32,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        };
        ev.error = field::<i32>(ctx, o.state)?;
        tuple(ctx, &o, &mut ev.tuple)
    });
    Ok(())
}
