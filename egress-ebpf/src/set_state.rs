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
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use egress_common::{
    IPPROTO_TCP, STAT_DESTROY_RECOVERED, STAT_NESTED_RECOVERED, TpOffsets, Tuple, tcp_state,
};

use crate::{
    config,
    flow::{SockView, on_accepted, on_connect, on_transition},
    flow_table::state,
    maps::{SET_STATE_MARK, count},
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
    mark(skaddr, old, new);
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
        let sk = Typed::new(ctx.arg(0));
        mark(sk.addr(), old, new);
        by_socket(sk, old, new);
    }
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The main program's first step on a state change that matters: say on
/// this CPU which one it is handling, for the spare.
#[inline(always)]
fn mark(sk: u64, old: u32, new: u32) {
    if let Some(m) = SET_STATE_MARK.get_ptr_mut(0) {
        // SAFETY: valid per-CPU map value.
        unsafe {
            (*m).sk = sk;
            (*m).transition = old << 16 | new;
            (*m).main_seq = (*m).main_seq.wrapping_add(1);
        }
    }
}

/// Whether the main program began this very state change: the CPU's mark
/// names it and the spare has not compared that mark before. The main
/// program writes its mark first, and the spare runs right after it on the
/// same CPU, so a match means it was handled. No match means the main
/// program was skipped, or another state change traced from an interrupt
/// came in between: the spare then asks the flow state ([`undone`]).
#[inline(always)]
fn marked(sk: u64, old: u32, new: u32) -> bool {
    let Some(m) = SET_STATE_MARK.get_ptr_mut(0) else { return false };
    // SAFETY: valid per-CPU map value.
    unsafe {
        let fresh = (*m).main_seq != (*m).spare_seq;
        (*m).spare_seq = (*m).main_seq;
        fresh && (*m).sk == sk && (*m).transition == old << 16 | new
    }
}

/// The spare: the state changes the kernel skipped for the main program.
///
/// The kernel does not run a tracing program nested in itself on one CPU:
/// a state change traced from a softirq (the retransmit timer closing a
/// connect, a SYN-ACK, a reset) that interrupts the main program in a task
/// is skipped for it, counted only in its `recursion_misses` (and a classic
/// tracepoint is skipped while any kprobe or tracepoint program runs on
/// the CPU). This raw tracepoint on the same event runs after the main one
/// (attached after it) and does the main one's work only where the
/// socket's state shows it undone; when it is itself skipped (interrupted
/// in a task), the main program is not running and does the work. The
/// socket is read through the BTF offsets, as the BTF variant reads it.
/// Nearly always the main program's mark names the event ([`marked`]) and
/// the spare leaves without a flow-table lookup: its run costs little more
/// than the kernel's call.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: RawTracePointContext) -> i32 {
    let (sk, old, new) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1) as u32, ctx.arg::<i32>(2) as u32);
    if matters(old, new) && !marked(sk, old, new) && undone(sk, old, new) {
        count(STAT_NESTED_RECOVERED);
        by_socket(Probed(sk), old, new);
    }
    0
}

/// Whether the main program left this state change undone, by the state
/// it keeps for the socket: a connect is tracked from its own task a moment
/// ago, an outcome sets the time of ESTABLISHED, a close removes the state,
/// an accepted connection is tracked.
#[inline(always)]
fn undone(sk: u64, old: u32, new: u32) -> bool {
    let st = state(sk);
    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        // SAFETY: valid state pointer; helpers without preconditions.
        !st.is_some_and(|st| unsafe {
            (*st).pid_tgid == bpf_get_current_pid_tgid()
                && bpf_ktime_get_ns().wrapping_sub((*st).start_ns) < JUST_NOW_NS
        })
    } else if old == tcp_state::SYN_RECV {
        st.is_none() && sock::kread::<u16>(sk, config!(kernel.skc_num)).is_some_and(is_capture_port)
    } else if new == tcp_state::ESTABLISHED {
        // SAFETY: valid state pointer.
        st.is_some_and(|st| unsafe { (*st).established_ns == 0 })
    } else {
        st.is_some()
    }
}

/// How recent a connect's state must be to be this very connect's (the
/// two programs run back to back in the connecting task).
const JUST_NOW_NS: u64 = 1_000_000;

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
/// without any program seeing its CLOSE (both skipped, see
/// [`inet_sock_set_state_nested`]). Its flow ends here, from the state it
/// had: a connect never established failed, anything else closed. Runs
/// where the owner closes the descriptor (a task) or a timer frees the
/// socket; one lookup per destroyed socket otherwise.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    destroyed(Probed(ctx.arg(0)));
    0
}

/// The backstop where the kernel has BTF: half of all destroyed sockets,
/// the passive side's, leave without a lookup ([`Sk::passive_untracked`]).
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    let sk = Typed::new(ctx.arg(0));
    if !sk.passive_untracked() {
        destroyed(sk);
    }
    0
}

#[inline(always)]
fn destroyed(sk: impl Sk) {
    let Some(st) = state(sk.addr()) else { return };
    count(STAT_DESTROY_RECOVERED);
    // SAFETY: valid state pointer.
    let established = unsafe { (*st).established_ns != 0 };
    let old = if established { tcp_state::ESTABLISHED } else { tcp_state::SYN_SENT };
    on_transition(sk.addr(), old, tcp_state::CLOSE, &sk);
}
