//! `iter/task_file`: at start the agent walks every open file of every task
//! and adopts the TCP sockets a flow record could be about, so a restart
//! leaves no blind spot: active opens already established, and a hop's
//! connections accepted on a capture port. Their later retransmits, resets
//! and close are seen as for any flow. The walk sees every network
//! namespace (the TCP socket iterator sees only the walker's own, and
//! entering a pod's would need CAP_SYS_ADMIN); the owner is the socket's
//! cgroup and the first task found holding it.
//!
//! Two passes (`ADOPT_PASS`): the first notes listening sockets, the second
//! adopts; a connection whose local port has a listener in its namespace
//! was accepted.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_seq_write},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use egress_common::{
    ADOPT_PASS_LISTENERS, AF_INET, AF_INET6, AdoptedSocket, FLOW_FLAG_ACCEPTED, FLOW_FLAG_ADOPTED,
    FLOW_FLAG_EMITTED, FlowState, IPPROTO_TCP, STAT_FLOW_MAP_FULL, tcp_state,
};

use crate::{
    config,
    flow_table::{self, state},
    maps::count,
    net::is_capture_port,
    sock::{self, kread},
};

/// Listening (netns, port) pairs noted by the first pass.
#[map]
static LISTENERS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

#[map]
static ADOPT_PASS: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU room for the record written out and the flow state stored: on
/// 5.10 and 6.1 the walk's frames together may not pass 512 bytes of stack.
/// Its own, not the hooks' scratch: a hook may run on this CPU mid-walk.
#[map]
static ADOPT_OUT: PerCpuArray<AdoptedSocket> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ADOPT_STATE: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub extern "C" fn adopt_sockets(ctx: *mut c_void) -> i32 {
    let _ = adopt(ctx);
    0
}

#[inline(always)]
fn adopt(ctx: *mut c_void) -> Option<()> {
    // ctx: struct bpf_iter__task_file { meta; task; u32 fd; file; }, each
    // member 8 bytes wide.
    // SAFETY: the iterator's context holds these four words.
    let (meta, task, file) = unsafe {
        let c = ctx.cast::<u64>();
        (*c, *c.add(1), *c.add(3))
    };
    if meta == 0 || task == 0 || file == 0 {
        return None;
    }
    let inode = kread::<u64>(file, config!(kernel.file_f_inode))?;
    if kread::<u16>(inode, config!(kernel.inode_i_mode))? & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket = kread::<u64>(file, config!(kernel.file_private_data))?;
    let sk = kread::<u64>(socket, config!(kernel.socket_sk))?;
    if sk == 0 || kread::<u16>(sk, config!(kernel.sk_protocol))? != IPPROTO_TCP {
        return None;
    }
    let family = kread::<u16>(sk, config!(kernel.skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let st = u32::from(sock::state(sk)?);
    let netns = sock::netns(sk);
    let lport = kread::<u16>(sk, config!(kernel.skc_num))?;
    let listener = u64::from(netns) << 32 | u64::from(lport);
    let pass = ADOPT_PASS.get(0).copied().unwrap_or(ADOPT_PASS_LISTENERS);
    if pass == ADOPT_PASS_LISTENERS {
        if st == tcp_state::LISTEN {
            let _ = LISTENERS.insert(listener, 1, 0);
        }
        return None;
    }
    if st != tcp_state::ESTABLISHED || state(sk).is_some() {
        return None;
    }
    let mut flags = FLOW_FLAG_ADOPTED | FLOW_FLAG_EMITTED;
    if LISTENERS.get_ptr(listener).is_some() {
        // Accepted: only a hop's matters.
        if !is_capture_port(lport) {
            return None;
        }
        flags |= FLOW_FLAG_ACCEPTED;
    }
    let out = ADOPT_OUT.get_ptr_mut(0)?;
    // SAFETY: a valid per-CPU map value, this walk's alone on this CPU.
    let out = unsafe { &mut *out };
    out.tuple = Default::default();
    sock::tuple(sk, &mut out.tuple).ok()?;
    let pid = kread::<u32>(task, config!(kernel.task_pid)).unwrap_or(0);
    let tgid = kread::<u32>(task, config!(kernel.task_tgid)).unwrap_or(0);
    out.skaddr = sk;
    out.cgroup_id = sock::cgroup_id(sk);
    out.pid_tgid = u64::from(tgid) << 32 | u64::from(pid);
    out.netns = netns;
    out.flags = flags;
    out.comm = kread::<[u8; 16]>(task, config!(kernel.task_comm)).unwrap_or_default();
    store(sk, out)?;
    // SAFETY: meta->seq is the first member of struct bpf_iter_meta.
    let seq = unsafe { *(meta as *const u64) };
    // SAFETY: seq is the iterator's seq_file; out is a map value.
    unsafe {
        bpf_seq_write(seq as *mut _, (&raw const *out).cast(), size_of::<AdoptedSocket>() as u32)
    };
    Some(())
}

/// The flow's state, unless the hooks made one meanwhile.
#[inline(never)]
fn store(sk: u64, a: &AdoptedSocket) -> Option<()> {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let fs = ADOPT_STATE.get_ptr_mut(0)?;
    // SAFETY: a valid per-CPU map value, this walk's alone on this CPU.
    let fs = unsafe { &mut *fs };
    *fs = FlowState::default();
    (fs.tx_base, fs.rx_base) = sock::stream_bases(sk);
    fs.start_ns = now;
    fs.established_ns = now;
    fs.cgroup_id = a.cgroup_id;
    fs.pid_tgid = a.pid_tgid;
    fs.comm = a.comm;
    fs.netns = a.netns;
    fs.flags = a.flags;
    fs.family = a.tuple.family;
    fs.dport = a.tuple.dport;
    fs.daddr = a.tuple.daddr;
    // A socket the main program already tracks keeps its state.
    if state(sk).is_some() {
        return None;
    }
    if flow_table::insert_lru(sk, &*fs, BPF_NOEXIST).is_err() {
        if state(sk).is_none() {
            count(STAT_FLOW_MAP_FULL);
        }
        return None;
    }
    Some(())
}
