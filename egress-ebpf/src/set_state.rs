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
//!
//! Skipped runs. The kernel does not run a tracing program nested in
//! itself on one CPU: a state change traced from a softirq (a SYN-ACK, a
//! reset, the retransmit timer closing a connect) that interrupts this
//! program in a task is skipped for it, counted only in its
//! `recursion_misses` (exported; a classic tracepoint is skipped while any
//! kprobe or tracepoint program runs on the CPU). No second program on the
//! same tracepoint stands by for those (it would double the dispatch of
//! every state change of every socket). Each skipped change is taken up by
//! a hook that runs later on the same socket anyway:
//! - a skipped ESTABLISHED by the close, which sees the socket leave a
//!   state past SYN_SENT: the flow connected, the time it did is unknown
//!   (`FLOW_FLAG_UNTIMED`); a capture port's (or TLS port's) flow is taken
//!   up at its first payload packet (`payload.rs`);
//! - a skipped CLOSE by `inet_sk_error_report` (a reset reports after the
//!   close) and by `tcp_destroy_sock` ([`end_unseen`]);
//! - a hop's skipped SYN_RECV→ESTABLISHED by the first payload packet the
//!   accepted connection receives (`payload.rs`).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use egress_common::{IPPROTO_TCP, STAT_DESTROY_RECOVERED, TpOffsets, Tuple, tcp_state};

use crate::{
    config,
    flow::{SockView, on_accepted, on_connect, on_transition},
    flow_table::state,
    maps::count,
    net::is_capture_port,
    sock::{self, Probed, Sk, Typed},
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

/// The classic tracepoint's record: the tuple from the record, the errors
/// probe-read from the socket it names.
struct Record<'a> {
    ctx: &'a TracePointContext,
    o: &'a TpOffsets,
    sk: u64,
}

impl SockView for Record<'_> {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) -> Result<(), i64> {
        tp::tuple(self.ctx, self.o, t)
    }
    #[inline(always)]
    fn errors(&self) -> (i32, i32) {
        sock::errors(self.sk)
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = classic(&ctx);
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
    let record = Record { ctx, o: &o, sk: skaddr };
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        on_connect(skaddr, now());
    } else if old == tcp_state::SYN_RECV {
        if is_capture_port(field::<u16>(ctx, o.sport)?) {
            on_accepted(skaddr, now(), &record);
        }
    } else {
        on_transition(skaddr, old, new, &record);
    }
    Ok(())
}

/// The main program where the kernel has BTF: the socket comes typed, and
/// its fields are read with plain loads ([`Typed`]).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let (old, new) = (ctx.arg::<i32>(1) as u32, ctx.arg::<i32>(2) as u32);
    if matters(old, new) {
        by_socket(Typed::new(ctx.arg(0)), old, new);
    }
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The flow logic, the socket read from the socket itself. The clock is
/// read only where a flow starts or is tracked.
#[inline(always)]
fn by_socket<S: Sk>(sk: S, old: u32, new: u32) {
    if !matters(old, new) {
        return;
    }
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        // MPTCP's own socket (and DCCP's, before 6.16) take this tracepoint too.
        if sk.field::<u16>(config!(kernel.sk_protocol)) != Some(IPPROTO_TCP) {
            return;
        }
        on_connect(sk.addr(), now());
    } else if old == tcp_state::SYN_RECV {
        if sk.field::<u16>(config!(kernel.skc_num)).is_some_and(is_capture_port) {
            on_accepted(sk.addr(), now(), &sk);
        }
    } else if !sk.passive_untracked() {
        // Sockets that never took the connect path have no state: the
        // lookup is the whole cost of the passive side's close where the
        // socket does not say it was accepted off the capture ports.
        on_transition(sk.addr(), old, new, &sk);
    }
}

/// The backstop: a socket destroyed while its flow is still tracked ended
/// without the main program seeing its CLOSE (the kernel skipped the run,
/// see the module's note). Its flow ends here, from the state it had.
/// Runs where the owner closes the descriptor (a task) or a timer frees the
/// socket; one lookup per destroyed socket otherwise.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    end_unseen(Probed(ctx.arg(0)), STAT_DESTROY_RECOVERED);
    0
}

/// The backstop where the kernel has BTF: half of all destroyed sockets,
/// the passive side's, leave without a lookup ([`Sk::passive_untracked`]).
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    let sk = Typed::new(ctx.arg(0));
    if !sk.passive_untracked() {
        end_unseen(sk, STAT_DESTROY_RECOVERED);
    }
    0
}

/// End the flow of a socket that is closed (or gone) while its flow is
/// still tracked: its CLOSE was never traced. A connect never seen
/// established failed; anything else closed. `stat` counts where.
#[inline(always)]
pub fn end_unseen(sk: impl Sk, stat: u32) {
    let Some(st) = state(sk.addr()) else { return };
    count(stat);
    // SAFETY: valid state pointer.
    let established = unsafe { (*st).established_ns != 0 };
    let old = if established { tcp_state::ESTABLISHED } else { tcp_state::SYN_SENT };
    on_transition(sk.addr(), old, tcp_state::CLOSE, &sk);
}
