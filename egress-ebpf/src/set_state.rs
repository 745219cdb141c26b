//! `sock:inet_sock_set_state`: the life of an active TCP open.
//!
//! CLOSE→SYN_SENT runs in the connecting task: the only place where the
//! owner (pid, comm, cgroup) is the current task. Every later transition may
//! run in softirq context and is attributed by socket address only.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use egress_common::{
    ConnectStart, EVENT_CLOSED, EVENT_CONNECT_FAILED, EVENT_CONNECT_START, EVENT_CONNECTED,
    EventHeader, FLOW_FLAG_HAS_INTENDED, FlowEnd, FlowState, IPPROTO_TCP, STAT_FLOW_MAP_FULL,
    TpOffsets, tcp_state,
};

use crate::{
    addr::tuple_key,
    config,
    emit::emit,
    maps::{CONNECT_ARGS, FLOWS, PROXY_FLOWS, SOCK_FDS, count},
    payload::is_proxy_port,
    read::{field, kread, tuple},
};

/// A `connect()` sockaddr older than this is not trusted for the flow (the
/// SYN_SENT transition runs inside the same syscall, microseconds later).
const CONNECT_ARGS_MAX_AGE_NS: u64 = 50_000_000;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let o: TpOffsets = config!(set_state);
    if field::<u16>(ctx, o.protocol)? != IPPROTO_TCP {
        return Ok(());
    }
    let old = field::<i32>(ctx, o.oldstate)? as u32;
    let new = field::<i32>(ctx, o.newstate)? as u32;
    let skaddr = field::<u64>(ctx, o.skaddr)?;

    if old == tcp_state::CLOSE && new == tcp_state::SYN_SENT {
        on_connect(ctx, &o, skaddr);
        return Ok(());
    }
    let Some(state) = FLOWS.get_ptr_mut(skaddr) else {
        return Ok(()); // not an active open we track
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // One inlined copy of the proxy index update (stack: see track_proxy_flow).
    let mut proxy_index = None;
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        // SAFETY: valid map value pointer; a socket's transitions are serialised by its lock.
        unsafe { (*state).established_ns = now };
        // SAFETY: as above.
        let st = unsafe { *state };
        emit(EVENT_CONNECTED, |ev: &mut FlowEnd| {
            flow_end(ev, ctx, &o, EVENT_CONNECTED, now, skaddr, &st, old, new)
        });
        proxy_index = Some(true);
    } else if new == tcp_state::CLOSE {
        // SAFETY: valid map value pointer, read before the entry is removed.
        let st = unsafe { *state };
        let _ = FLOWS.remove(skaddr);
        if st.established_ns != 0 {
            proxy_index = Some(false);
        }
        let kind = if st.established_ns == 0 { EVENT_CONNECT_FAILED } else { EVENT_CLOSED };
        emit(kind, |ev: &mut FlowEnd| flow_end(ev, ctx, &o, kind, now, skaddr, &st, old, new));
    }
    if let Some(add) = proxy_index {
        track_proxy_flow(ctx, &o, skaddr, add);
    }
    Ok(())
}

/// Index an established flow to a proxy port by its tuple (so the packet
/// hooks can find it), or drop it from the index at close. Inlined: as a
/// BPF-to-BPF call its 360-byte frame on top of the caller's 216 broke the
/// 512-byte combined stack limit of Linux 5.10-6.12 verifiers.
#[inline(always)]
fn track_proxy_flow(ctx: &TracePointContext, o: &TpOffsets, skaddr: u64, add: bool) {
    let mut t = egress_common::Tuple::default();
    if tuple(ctx, o, &mut t).is_err() || !is_proxy_port(t.dport) {
        return;
    }
    let key = tuple_key(t.family, t.sport, t.dport, &t.saddr, &t.daddr);
    if add {
        let _ = PROXY_FLOWS.insert(key, skaddr, 0);
    } else {
        let _ = PROXY_FLOWS.remove(key);
    }
}

fn on_connect(ctx: &TracePointContext, o: &TpOffsets, skaddr: u64) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = FlowState { start_ns: now, ..FlowState::default() };
    if FLOWS.insert(skaddr, state, 0).is_err() {
        count(STAT_FLOW_MAP_FULL);
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    emit(EVENT_CONNECT_START, |ev: &mut ConnectStart| {
        ev.hdr = EventHeader {
            kind: EVENT_CONNECT_START,
            size: size_of::<ConnectStart>() as u32,
            ts_ns: now,
        };
        ev.skaddr = skaddr;
        // SAFETY: a helper without arguments.
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        ev.pid = pid_tgid as u32;
        ev.tgid = (pid_tgid >> 32) as u32;
        ev.comm = bpf_get_current_comm().unwrap_or_default();
        tuple(ctx, o, &mut ev.tuple)?;
        let k = config!(kernel);
        if let Some(net) = kread::<u64>(skaddr, k.sock_skc_net) {
            ev.netns = kread::<u32>(net, k.net_ns_inum).unwrap_or(0);
        }
        if let Some(args) = CONNECT_ARGS.get_ptr(pid_tgid) {
            // SAFETY: valid map value pointer.
            let args = unsafe { &*args };
            if now.wrapping_sub(args.ts_ns) < CONNECT_ARGS_MAX_AGE_NS {
                ev.intended = *args;
                ev.flags |= FLOW_FLAG_HAS_INTENDED;
                let key = (pid_tgid & 0xffff_ffff_0000_0000) | args.fd as u64;
                let _ = SOCK_FDS.insert(key, skaddr, 0);
            }
            let _ = CONNECT_ARGS.remove(pid_tgid);
        }
        Ok(())
    });
}

#[allow(
    clippy::too_many_arguments,
    reason = "one inlined copy: a struct of them would cost stack the verifier counts"
)]
#[inline(always)]
fn flow_end(
    ev: &mut FlowEnd,
    ctx: &TracePointContext,
    o: &TpOffsets,
    kind: u32,
    now: u64,
    skaddr: u64,
    st: &FlowState,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    ev.hdr = EventHeader { kind, size: size_of::<FlowEnd>() as u32, ts_ns: now };
    ev.skaddr = skaddr;
    ev.start_ns = st.start_ns;
    ev.established_ns = st.established_ns;
    ev.oldstate = old;
    ev.newstate = new;
    ev.sk_err = kread::<i32>(skaddr, config!(kernel.sock_sk_err)).unwrap_or(0);
    ev.sk_err_soft = kread::<i32>(skaddr, config!(kernel.sock_sk_err_soft)).unwrap_or(0);
    ev.reported_err = st.reported_err;
    ev.retransmits = st.retransmits;
    ev.syn_retransmits = st.syn_retransmits;
    ev.flags = st.flags;
    tuple(ctx, o, &mut ev.tuple)
}
