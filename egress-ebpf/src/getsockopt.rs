//! `getsockopt(SOL_SOCKET, SO_ERROR)` on a socket being connected: the errno
//! the application was handed. An ICMP error that arrives while the
//! connecting task holds the socket lock lands in `sk_err_soft`, and this call
//! clears it; without this hook a fast "host unreachable" would close with no
//! errno at all.
//!
//! Two ways in: `so_error`, a `cgroup/getsockopt` program on the cgroup root
//! that runs on getsockopt calls only, and — where it cannot attach — the
//! `syscalls` tracepoints, which the kernel can only serve by putting every
//! syscall of every task on its traced (slow) path.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{cgroup_sockopt, tracepoint},
    programs::{SockoptContext, TracePointContext},
};

use core::ffi::c_void;

use crate::{
    config,
    flow_table::state,
    maps::{SO_ERROR_CALLS, SOCK_FDS},
    sock,
    tp::field,
};

const SOL_SOCKET: u64 = 1;
const SO_ERROR: u64 = 4;

/// The `SO_ERROR` value the kernel just answered a getsockopt call with,
/// and the socket it is about (None: another option, or a failed call).
#[inline(always)]
fn so_error_answer(ctx: &SockoptContext) -> Option<(*mut c_void, i32)> {
    // SAFETY: the context pointer is the kernel's bpf_sockopt.
    let so = unsafe { &*ctx.sockopt };
    if so.level as u64 != SOL_SOCKET || so.optname as u64 != SO_ERROR || so.retval != 0 {
        return None;
    }
    // SAFETY: union members of the context, read as the kernel defines them.
    let (sk, val, end) = unsafe {
        (
            so.__bindgen_anon_1.sk,
            so.__bindgen_anon_2.optval as usize,
            so.__bindgen_anon_3.optval_end as usize,
        )
    };
    if val + 4 > end {
        return None;
    }
    // SAFETY: the four bytes are inside [optval, optval_end), checked above.
    let err = unsafe { *(val as *const i32) };
    (err != 0).then_some((sk.cast(), err))
}

/// Runs after the kernel answered: the answer is in the context's buffer.
/// Always returns 1 (the call proceeds unchanged).
#[cgroup_sockopt(getsockopt)]
pub fn so_error(ctx: SockoptContext) -> i32 {
    if let Some((sk, err)) = so_error_answer(&ctx)
        && let Some(st) = state(sock::scalar(sk.cast()))
    {
        // SAFETY: valid state pointer.
        unsafe { (*st).reported_err = err };
    }
    1
}

#[tracepoint]
pub fn sys_enter_getsockopt(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

fn try_enter(ctx: &TracePointContext) -> Result<(), i64> {
    if field::<u64>(ctx, config!(syscalls.getsockopt_level))? as u32 as u64 != SOL_SOCKET
        || field::<u64>(ctx, config!(syscalls.getsockopt_optname))? as u32 as u64 != SO_ERROR
    {
        return Ok(());
    }
    let fd = field::<u64>(ctx, config!(syscalls.getsockopt_fd))? as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(sk) = SOCK_FDS.get_ptr((pid_tgid & 0xffff_ffff_0000_0000) | fd as u64) else {
        return Ok(());
    };
    // SAFETY: valid map value pointer.
    let sk = unsafe { *sk };
    if state(sk).is_none() {
        return Ok(());
    }
    let optval = field::<u64>(ctx, config!(syscalls.getsockopt_optval))?;
    let _ = SO_ERROR_CALLS.insert(pid_tgid, [sk, optval], 0);
    Ok(())
}

#[tracepoint]
pub fn sys_exit_getsockopt(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = SO_ERROR_CALLS.get_ptr(pid_tgid) else {
        return 0;
    };
    // SAFETY: valid map value pointer.
    let [sk, optval] = unsafe { *call };
    let _ = SO_ERROR_CALLS.remove(pid_tgid);
    if field::<i64>(&ctx, config!(syscalls.getsockopt_ret)).unwrap_or(-1) != 0 {
        return 0;
    }
    // SAFETY: user memory read through the helper.
    let err: i32 = unsafe { bpf_probe_read_user(optval as *const i32) }.unwrap_or(0);
    if err != 0
        && let Some(st) = state(sk)
    {
        // SAFETY: valid state pointer.
        unsafe { (*st).reported_err = err };
    }
    0
}
