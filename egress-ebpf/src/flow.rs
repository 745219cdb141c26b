//! The life of an active TCP open, for every hook that reports it (classic
//! and BTF tracepoints): owner at CLOSE→SYN_SENT, outcome at ESTABLISHED or
//! CLOSE, and the choice of what leaves the kernel. A flow worth a record (failed, degraded, reset, to a
//! capture port, or every flow while the agent asks for all) goes out as one
//! self-contained `FlowEvent`; a clean one is only counted in the
//! aggregation map under (owner cgroup, destination).
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    generated::bpf_get_current_comm,
};
use egress_common::{
    AggKey, AggValue, CTRL_PUBLIC_EVENTS, CTRL_SKIP_ESTABLISHED, CTRL_VERBOSE, ConnectArgs,
    Control, EVENT_FLOW, EventHeader, FLOW_FLAG_ACCEPTED, FLOW_FLAG_CAPTURE, FLOW_FLAG_EMITTED,
    FLOW_FLAG_HAS_INTENDED, FLOW_FLAG_RESET, FLOW_FLAG_TLS, FLOW_FLAG_UNTIMED, FlowEvent,
    FlowState, LATENCY_BOUNDS_NS, LATENCY_BUCKETS, PHASE_CLOSED, PHASE_CONNECT_FAILED,
    PHASE_CONNECTED, STAT_AGG_CLOSES, STAT_AGG_CONNECTS, STAT_AGG_FULL, STAT_FLOW_ENDS,
    STAT_FLOW_EVICTED, STAT_FLOW_MAP_FULL, STAT_FLOW_STARTS, STAT_NESTED_RECOVERED,
    STAT_READ_ERRORS, Tuple, tcp_state,
};

use crate::{
    config,
    emit::emit,
    flow_table::{self, state},
    maps::{
        AGG0, AGG1, CONNECT_ARGS, EVENTS, PROXY_FLOWS, SCRATCH_FLOW, SCRATCH_TAKE_UP,
        SCRATCH_TUPLE, SOCK_FDS, control, count, is_private, xadd,
    },
    net::{is_capture_port, is_tls_port, tuple_key},
    sock::{self, Sk},
};

/// A `connect()` sockaddr older than this is not trusted for the flow (the
/// SYN_SENT transition runs inside the same syscall, microseconds later).
const CONNECT_ARGS_MAX_AGE_NS: u64 = 50_000_000;

/// What a hook reads of the socket besides its address: its tuple (from a
/// tracepoint record, or from the socket) and its errors.
pub trait SockView {
    fn tuple(&self, t: &mut Tuple) -> Result<(), i64>;
    /// `sk_err`, `sk_err_soft`.
    fn errors(&self) -> (i32, i32);
}

impl<S: Sk> SockView for S {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) -> Result<(), i64> {
        Sk::tuple(*self, t)
    }
    #[inline(always)]
    fn errors(&self) -> (i32, i32) {
        Sk::errors(*self)
    }
}

/// `T` 8-byte aligned, for [`zeroed`].
#[repr(C, align(8))]
pub struct Words<T>(pub T);

/// Zero `v` (a plain record of integers, valid all-zero) in place with
/// 8-byte stores and return it. `T::default()` and `[0; N]` compile to
/// calls of the BPF `memset`, a loop of one byte per iteration: 136
/// iterations of five instructions on every clean connection before this.
///
/// # Safety
/// `T` must be valid with every byte zero.
#[inline(always)]
pub unsafe fn zeroed<T>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let w = v.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of `v`, 8-byte aligned; volatile so that LLVM
        // does not fold the stores back into a memset call.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte is written; the caller vouches for all-zero T.
    unsafe { v.assume_init_mut() }
}

/// CLOSE→SYN_SENT, in the connecting task: keep the owner in a new state,
/// in the socket's own place of the table where it is free (written there
/// in place), else in the LRU part.
#[inline(always)]
pub fn on_connect(sk: u64, now: u64) {
    if let Some(slot) = flow_table::claim(sk) {
        // SAFETY: a valid map value; FlowState is integers and byte arrays,
        // valid all-zero.
        let st = unsafe { zero_in_place(&raw mut (*slot).state) };
        owner(st, sk, now);
        flow_table::publish(slot, sk);
        count(STAT_FLOW_STARTS);
        return;
    }
    let mut st = core::mem::MaybeUninit::uninit();
    // SAFETY: FlowState is integers and byte arrays.
    let st: &mut FlowState = unsafe { zeroed(&mut st) };
    owner(st, sk, now);
    if flow_table::insert_lru(sk, st, 0).is_err() {
        count(STAT_FLOW_MAP_FULL);
        return;
    }
    count(STAT_FLOW_STARTS);
}

/// Zero a map value of plain integers in place, 8 bytes a store (see
/// [`zeroed`]), and return it.
///
/// # Safety
/// `p` must point to a valid, writable `T` that is valid all-zero.
#[inline(always)]
unsafe fn zero_in_place<'a, T>(p: *mut T) -> &'a mut T {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let w = p.cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: in bounds of `*p`, 8-byte aligned (the caller's promise).
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
    // SAFETY: as promised by the caller; every byte is now zero.
    unsafe { &mut *p }
}

/// The owner of a new connect: the current task, its cgroup, and what it
/// asked `connect()` for (where that is watched). `st` is zeroed.
#[inline(always)]
fn owner(st: &mut FlowState, sk: u64, now: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    st.start_ns = now;
    // SAFETY: helper without preconditions.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    st.pid_tgid = pid_tgid;
    // Straight into the state (on failure the zeroes stay): the helper
    // wrapper's own zeroed buffer and copy cost a byte loop each.
    // SAFETY: 16 writable bytes.
    unsafe { bpf_get_current_comm(st.comm.as_mut_ptr().cast(), st.comm.len() as u32) };
    if config!(connect_intent) != 0
        && let Some(args) = CONNECT_ARGS.get_ptr(pid_tgid)
    {
        // SAFETY: valid map value pointer.
        let args = unsafe { &*args };
        if now.wrapping_sub(args.ts_ns) < CONNECT_ARGS_MAX_AGE_NS {
            st.intended = *args;
            st.flags |= FLOW_FLAG_HAS_INTENDED;
            let key = (pid_tgid & 0xffff_ffff_0000_0000) | args.fd as u64;
            let _ = SOCK_FDS.insert(key, sk, 0);
        }
        let _ = CONNECT_ARGS.remove(pid_tgid);
    }
}

/// SYN_RECV→ESTABLISHED of a connection accepted on a capture port: this
/// machine runs the hop, and the connection is its view of one client. The
/// owner is the listener's cgroup (the socket's own); no task is current.
/// Both directions are captured (the request comes in, the answer goes
/// out) and the flow always goes out as events. Its state and tuple are
/// built in per-CPU scratch space: the hook's stack is nearly spent.
#[inline(always)]
pub fn on_accepted(sk: u64, now: u64, tuples: &impl SockView) {
    if control().flags & CTRL_SKIP_ESTABLISHED != 0 {
        return;
    }
    let (Some(t), Some(st)) = (SCRATCH_TUPLE.get_ptr_mut(0), SCRATCH_FLOW.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: valid per-CPU map values; a program is not preempted on its CPU.
    let (t, st) = unsafe { (&mut *t, &mut *st) };
    if tuples.tuple(t).is_err() {
        count(STAT_READ_ERRORS);
        return;
    }
    let start =
        Accepted { bases: sock::stream_bases(sk), cgroup_id: sock::cgroup_id(sk), flags: 0 };
    track_accepted(sk, st, t, &start, now, || SockFacts::read(sk));
}

/// What an accepted connection's state starts from besides its tuple.
struct Accepted {
    /// `snd_una`, `rcv_nxt` at the handshake's end.
    bases: (u32, u32),
    cgroup_id: u64,
    /// Flags besides ACCEPTED, CAPTURE and EMITTED.
    flags: u32,
}

/// Track an accepted connection in `st` (scratch space) and send its
/// connect record.
#[inline(always)]
fn track_accepted(
    sk: u64,
    st: &mut FlowState,
    t: &Tuple,
    a: &Accepted,
    now: u64,
    facts: impl FnOnce() -> SockFacts,
) {
    (st.tx_base, st.rx_base) = a.bases;
    st.start_ns = now;
    st.established_ns = now;
    st.cgroup_id = a.cgroup_id;
    st.pid_tgid = 0;
    st.comm = [0; 16];
    st.netns = 0;
    st.retransmits = 0;
    st.syn_retransmits = 0;
    st.reported_err = 0;
    st.flags = FLOW_FLAG_ACCEPTED | FLOW_FLAG_CAPTURE | FLOW_FLAG_EMITTED | a.flags;
    (st.family, st.dport, st.daddr) = (t.family, t.dport, t.daddr);
    st.intended = ConnectArgs::default();
    if flow_table::insert_lru(sk, &*st, 0).is_err() {
        count(STAT_FLOW_MAP_FULL);
        return;
    }
    count(STAT_FLOW_STARTS);
    let _ = PROXY_FLOWS.insert(tuple_key(t.family, t.sport, t.dport, &t.saddr, &t.daddr), sk, 0);
    let transition = (tcp_state::SYN_RECV, tcp_state::ESTABLISHED);
    emit_flow_with(sk, st, PHASE_CONNECTED, transition, now, Some(t), facts);
}

/// What the first payload packet of a flow the set_state program did not
/// see established tells of its socket (`payload.rs`): its stream
/// positions are still those of the handshake's end.
pub struct FirstPacket {
    pub sk: u64,
    /// The local side is the source.
    pub tuple: Tuple,
    /// `snd_una`, `rcv_nxt`.
    pub bases: (u32, u32),
    /// `bytes_received`, `bytes_acked`.
    pub bytes: (u64, u64),
}

impl FirstPacket {
    /// The record's socket facts (the namespace is not readable here).
    #[inline(always)]
    fn facts(&self) -> SockFacts {
        SockFacts { netns: 0, errors: (0, 0), bytes: self.bytes }
    }
}

/// An active open to a capture (or TLS) port, tracked since its connect,
/// whose ESTABLISHED the kernel skipped the set_state program for (see
/// `set_state.rs`): set up as that ESTABLISHED would have, at its first
/// payload packet, and its connect record sent (untimed). Its state, or
/// None if it is no such flow.
#[inline(always)]
pub fn take_up_connect(p: &FirstPacket, now: u64) -> Option<*mut FlowState> {
    let stp = state(p.sk)?;
    // SAFETY: valid state pointer; the socket's packets and transitions
    // are serialised by its lock or its softirq.
    let st = unsafe { &mut *stp };
    if st.established_ns != 0 || st.flags & FLOW_FLAG_ACCEPTED != 0 {
        return None;
    }
    let t = &p.tuple;
    st.established_ns = now;
    st.flags |= FLOW_FLAG_UNTIMED | FLOW_FLAG_EMITTED | FLOW_FLAG_CAPTURE;
    if !is_capture_port(t.dport) {
        st.flags |= FLOW_FLAG_TLS;
    }
    (st.family, st.dport, st.daddr) = (t.family, t.dport, t.daddr);
    (st.tx_base, st.rx_base) = p.bases;
    let _ = PROXY_FLOWS.insert(tuple_key(t.family, t.sport, t.dport, &t.saddr, &t.daddr), p.sk, 0);
    count(STAT_NESTED_RECOVERED);
    let transition = (tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
    emit_flow_with(p.sk, st, PHASE_CONNECTED, transition, now, Some(t), || p.facts());
    Some(stp)
}

/// A connection accepted on a capture port whose ESTABLISHED the kernel
/// skipped the set_state program for: tracked as [`on_accepted`] would
/// have, at the first payload packet it receives. Its state, or None.
#[inline(always)]
pub fn take_up_accepted(p: &FirstPacket, cgroup_id: u64, now: u64) -> Option<*mut FlowState> {
    if state(p.sk).is_some() {
        return None;
    }
    let st = SCRATCH_TAKE_UP.get_ptr_mut(0)?;
    // SAFETY: valid per-CPU map value; only the ingress payload program
    // uses it, which does not run nested in itself on one CPU.
    let st = unsafe { &mut *st };
    let start = Accepted { bases: p.bases, cgroup_id, flags: FLOW_FLAG_UNTIMED };
    track_accepted(p.sk, st, &p.tuple, &start, now, || p.facts());
    count(STAT_NESTED_RECOVERED);
    state(p.sk)
}

/// `ECONNRESET`, `EPIPE` (Linux errno): what `tcp_reset` leaves in
/// `sk_err` for a reset received after the connect (EPIPE in CLOSE_WAIT).
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;

/// Any later transition of a socket (softirq or task context). The clock
/// is read only where a time is kept or sent: at ESTABLISHED, and for a
/// close that leaves as a record (a clean close is only counted).
#[inline(always)]
pub fn on_transition(sk: u64, old: u32, new: u32, tuples: &impl SockView) {
    let Some(st) = state(sk) else {
        // An active open whose state is gone: evicted from the table's LRU
        // part (or, very rarely, its place claimed at the same instant).
        if old == tcp_state::SYN_SENT {
            count(STAT_FLOW_EVICTED);
        }
        return;
    };
    // SAFETY: valid state pointer; a socket's transitions are serialised by its lock.
    let st = unsafe { &mut *st };
    let skaddr = sk;
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        let ctl = control();
        if ctl.flags & CTRL_SKIP_ESTABLISHED != 0 {
            return;
        }
        let now = ktime();
        st.established_ns = now;
        let mut t = core::mem::MaybeUninit::uninit();
        // SAFETY: Tuple is integers and byte arrays.
        let t: &mut Tuple = &mut unsafe { zeroed::<Words<Tuple>>(&mut t) }.0;
        let have_tuple = tuples.tuple(t).is_ok();
        let mut wanted = ctl.flags & CTRL_VERBOSE != 0 || degraded(&ctl, st.syn_retransmits);
        if have_tuple {
            (st.family, st.dport, st.daddr) = (t.family, t.dport, t.daddr);
            // With a chain, egress to a public address is reported flow by
            // flow (whether it bypassed the chain is the agent's to say).
            if ctl.flags & CTRL_PUBLIC_EVENTS != 0 && !is_private(t.family, &t.daddr) {
                wanted = true;
            }
        }
        // A proxy's port is read as a proxy's even when it is a TLS port too.
        let proxy = have_tuple && is_capture_port(t.dport);
        if proxy || (have_tuple && is_tls_port(t.dport)) {
            st.flags |= if proxy { FLOW_FLAG_CAPTURE } else { FLOW_FLAG_CAPTURE | FLOW_FLAG_TLS };
            (st.tx_base, st.rx_base) = sock::stream_bases(skaddr);
            let key = tuple_key(t.family, t.sport, t.dport, &t.saddr, &t.daddr);
            let _ = PROXY_FLOWS.insert(key, skaddr, 0);
            wanted = true;
        }
        if !wanted && !(have_tuple && aggregate(st, true, now - st.start_ns, &ctl)) {
            wanted = true;
        }
        if wanted {
            st.flags |= FLOW_FLAG_EMITTED;
            emit_flow(skaddr, st, PHASE_CONNECTED, old, new, now, have_tuple.then_some(&*t));
        }
    } else if new == tcp_state::CLOSE {
        if old != tcp_state::SYN_SENT && st.established_ns == 0 {
            // It left a state past SYN_SENT: it connected, and the kernel
            // skipped the run for its ESTABLISHED (see `set_state.rs`).
            // When it connected is unknown: the close's time stands in.
            st.established_ns = ktime();
            st.flags |= FLOW_FLAG_UNTIMED;
            count(STAT_NESTED_RECOVERED);
        }
        let ctl = control();
        let err = tuples.errors().0;
        // A received reset sets sk_err before the CLOSE it causes (a local
        // abort sets it after): where sk_err is readable this is the whole
        // of `tcp_receive_reset`'s work, which then stays on standby.
        if old != tcp_state::SYN_SENT && (err == ECONNRESET || err == EPIPE) {
            st.flags |= FLOW_FLAG_RESET;
        }
        let clean = st.established_ns != 0
            && st.flags
                & (FLOW_FLAG_EMITTED | FLOW_FLAG_RESET | FLOW_FLAG_CAPTURE | FLOW_FLAG_UNTIMED)
                == 0
            && ctl.flags & CTRL_VERBOSE == 0
            && !degraded(&ctl, st.retransmits)
            && err == 0;
        // A clean close is counted from what the state already holds; only a
        // record needs the tuple read again.
        if !(clean && aggregate(st, false, 0, &ctl)) {
            let mut t = core::mem::MaybeUninit::uninit();
            // SAFETY: Tuple is integers and byte arrays.
            let t: &mut Tuple = &mut unsafe { zeroed::<Words<Tuple>>(&mut t) }.0;
            let have_tuple = tuples.tuple(t).is_ok();
            let phase = if st.established_ns == 0 { PHASE_CONNECT_FAILED } else { PHASE_CLOSED };
            emit_flow(skaddr, st, phase, old, new, ktime(), have_tuple.then_some(&*t));
            if st.flags & FLOW_FLAG_CAPTURE != 0 && have_tuple {
                let _ =
                    PROXY_FLOWS.remove(tuple_key(t.family, t.sport, t.dport, &t.saddr, &t.daddr));
            }
        }
        flow_table::remove(sk);
        count(STAT_FLOW_ENDS);
    }
}

#[inline(always)]
fn ktime() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn degraded(ctl: &Control, retransmits: u32) -> bool {
    ctl.degraded_retransmits > 0 && retransmits >= ctl.degraded_retransmits
}

/// Count a clean connect (or close) under its key. False when the map is
/// full: the caller sends the flow as an event instead (nothing is lost).
#[inline(always)]
fn aggregate(st: &FlowState, connect: bool, latency_ns: u64, ctl: &Control) -> bool {
    let key = AggKey {
        cgroup_id: st.cgroup_id,
        netns: st.netns,
        family: st.family,
        dport: st.dport,
        daddr: st.daddr,
    };
    let map = if ctl.agg_sel == 0 { &AGG0 } else { &AGG1 };
    let mut v = map.get_ptr_mut(key);
    if v.is_none() {
        // BPF_NOEXIST: another CPU may have added it meanwhile; look again.
        let _ = map.insert(key, AggValue::default(), 1);
        v = map.get_ptr_mut(key);
    }
    let Some(v) = v else {
        count(STAT_AGG_FULL);
        return false;
    };
    if connect {
        count(STAT_AGG_CONNECTS);
        // SAFETY: valid map value pointer; fields are 8-byte aligned u64s.
        // This CPU's value, but atomic adds still: another program counting
        // here (a close seen by error report) may run nested in this one.
        unsafe {
            xadd(&raw mut (*v).connects, 1);
            xadd(&raw mut (*v).latency_sum_ns, latency_ns);
            let mut b = 0;
            while b < LATENCY_BUCKETS - 1 && latency_ns >= LATENCY_BOUNDS_NS[b] {
                b += 1;
            }
            xadd((&raw mut (*v).latency_buckets).cast::<u64>().add(b), 1);
        }
    } else {
        count(STAT_AGG_CLOSES);
        // SAFETY: as above.
        unsafe { xadd(&raw mut (*v).closes, 1) };
    }
    true
}

/// What a record tells of the socket itself at the time it is sent.
pub struct SockFacts {
    pub netns: u32,
    /// `sk_err`, `sk_err_soft`.
    pub errors: (i32, i32),
    /// `bytes_received`, `bytes_acked` (u64::MAX if unknown).
    pub bytes: (u64, u64),
}

impl SockFacts {
    /// Read from the socket (probe reads: tracing programs only).
    #[inline(always)]
    fn read(sk: u64) -> Self {
        Self { netns: sock::netns(sk), errors: sock::errors(sk), bytes: sock::byte_counts(sk) }
    }
}

/// Send the flow as one self-contained record, the socket's facts read
/// from the socket.
#[inline(always)]
fn emit_flow(
    skaddr: u64,
    st: &FlowState,
    phase: u32,
    old: u32,
    new: u32,
    now: u64,
    t: Option<&Tuple>,
) {
    emit_flow_with(skaddr, st, phase, (old, new), now, t, || SockFacts::read(skaddr));
}

/// Send the flow as one self-contained record, the socket's facts from
/// `facts` (read once the record has its room).
#[inline(always)]
fn emit_flow_with(
    skaddr: u64,
    st: &FlowState,
    phase: u32,
    (old, new): (u32, u32),
    now: u64,
    t: Option<&Tuple>,
    facts: impl FnOnce() -> SockFacts,
) {
    emit(&EVENTS, EVENT_FLOW, |ev: &mut FlowEvent| {
        ev.hdr = EventHeader { kind: EVENT_FLOW, size: size_of::<FlowEvent>() as u32, ts_ns: now };
        ev.skaddr = skaddr;
        ev.start_ns = st.start_ns;
        ev.established_ns = st.established_ns;
        ev.cgroup_id = st.cgroup_id;
        ev.pid = st.pid_tgid as u32;
        ev.tgid = (st.pid_tgid >> 32) as u32;
        let f = facts();
        ev.netns = f.netns;
        ev.phase = phase;
        ev.comm = st.comm;
        ev.oldstate = old;
        ev.newstate = new;
        (ev.sk_err, ev.sk_err_soft) = f.errors;
        ev.reported_err = st.reported_err;
        ev.retransmits = st.retransmits;
        ev.syn_retransmits = st.syn_retransmits;
        ev.flags = st.flags;
        (ev.bytes_received, ev.bytes_acked) = f.bytes;
        ev.intended = st.intended;
        match t {
            Some(t) => ev.tuple = *t,
            // Without its tuple a record cannot be placed: count it as a read error.
            None => return Err(-2),
        }
        Ok(())
    });
}
