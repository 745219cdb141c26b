//! `sock:inet_sock_set_state`: the life of an active TCP open.
//!
//! Two entry points over one flow logic (`flow.rs`): the BTF tracepoint
//! (the kernel hands the arguments over as they are: no record is built
//! for it) and the classic tracepoint (its record, read at the offsets of
//! its tracefs `format`: kernels or builds without BTF). The agent loads
//! one of the two.
//!
//! CLOSE→SYN_SENT runs in the connecting task: the only place where the
//! owner (pid, comm, cgroup) is the current task. Every later transition may
//! run in softirq context and is attributed by socket only. Only three
//! transitions matter: the connect, its outcome, and the close; every other
//! one (FIN states) leaves in the first instructions. The passive side
//! matters only where this machine runs a hop: a connection accepted on a
//! capture port is the hop's view of one client (SYN_RECV→ESTABLISHED).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use egress_common::{IPPROTO_TCP, TpOffsets, Tuple, tcp_state};

use crate::{
    config,
    flow::{Tuples, on_accepted, on_connect, on_transition},
    net::is_capture_port,
    sock,
    tp::{self, field},
};

/// Which transitions the flow logic needs: the connect, the connect's
/// outcome, and any end. Everything else returns at once.
#[inline(always)]
fn matters(old: u32, new: u32) -> bool {
    new == tcp_state::CLOSE
        || (old == tcp_state::CLOSE && new == tcp_state::SYN_SENT)
        || (new == tcp_state::ESTABLISHED
            && (old == tcp_state::SYN_SENT || old == tcp_state::SYN_RECV))
}

struct Record<'a> {
    ctx: &'a TracePointContext,
    o: &'a TpOffsets,
}

impl Tuples for Record<'_> {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) -> Result<(), i64> {
        tp::tuple(self.ctx, self.o, t)
    }
}

struct Socket(u64);

impl Tuples for Socket {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) -> Result<(), i64> {
        sock::tuple(self.0, t)
    }
}

/// 1 while `inet_sock_set_state` (either variant) runs on this CPU.
///
/// The kernel does not run a tracing program nested in itself on one CPU:
/// a state change traced from a softirq (the retransmit timer closing a
/// connect, a SYN-ACK, a reset) that interrupts this program running in a
/// task is skipped, counted only in the program's `recursion_misses`. The
/// spare program [`inet_sock_set_state_nested`], on the same tracepoint,
/// handles exactly those: it runs the flow logic only while this flag says
/// the main program is interrupted on its CPU. Set at the first
/// instruction and cleared at the last, so that no window is left open.
#[map]
static RUNNING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn running(on: bool) {
    if let Some(r) = RUNNING.get_ptr_mut(0) {
        // SAFETY: valid per-CPU map value; this CPU's programs only.
        unsafe { *r = u32::from(on) };
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    running(true);
    let _ = classic(&ctx);
    running(false);
    0
}

#[inline(always)]
fn classic(ctx: &TracePointContext) -> Result<(), i64> {
    let o: TpOffsets = config!(set_state);
    let old = field::<i32>(ctx, o.oldstate)? as u32;
    let new = field::<i32>(ctx, o.newstate)? as u32;
    if !matters(old, new) || field::<u16>(ctx, o.protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    let skaddr = field::<u64>(ctx, o.skaddr)?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        on_connect(skaddr, now);
    } else if old == tcp_state::SYN_RECV {
        if is_capture_port(field::<u16>(ctx, o.sport)?) {
            on_accepted(skaddr, now, &Record { ctx, o: &o });
        }
    } else {
        on_transition(skaddr, old, new, now, &Record { ctx, o: &o });
    }
    Ok(())
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    running(true);
    let sk: *mut c_void = ctx.arg(0);
    by_socket(sk as u64, ctx.arg::<i32>(1) as u32, ctx.arg::<i32>(2) as u32);
    running(false);
    0
}

/// The spare: the state changes the kernel skipped for the main program
/// because it was running on this CPU (see [`RUNNING`]). Every other time
/// it returns at once. A raw tracepoint (it needs no BTF of its own); the
/// socket is read through the BTF offsets, as the BTF variant reads it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    let interrupted = RUNNING.get_ptr(0).is_some_and(|r| {
        // SAFETY: valid per-CPU map value.
        unsafe { *r != 0 }
    });
    if interrupted {
        by_socket(ctx.arg::<u64>(0), ctx.arg::<i32>(1) as u32, ctx.arg::<i32>(2) as u32);
    }
    0
}

/// The flow logic, the socket read from the socket itself.
#[inline(always)]
fn by_socket(skaddr: u64, old: u32, new: u32) {
    if !matters(old, new) {
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        // MPTCP's own socket (and DCCP's, before 6.16) take this tracepoint too.
        if sock::kread::<u16>(skaddr, config!(kernel.sk_protocol)) != Some(IPPROTO_TCP) {
            return;
        }
        on_connect(skaddr, now);
    } else if old == tcp_state::SYN_RECV {
        if sock::kread::<u16>(skaddr, config!(kernel.skc_num)).is_some_and(is_capture_port) {
            on_accepted(skaddr, now, &Socket(skaddr));
        }
    } else {
        // Sockets that never took the connect path have no state: the
        // lookup is the whole cost of the passive side's close.
        on_transition(skaddr, old, new, now, &Socket(skaddr));
    }
}
