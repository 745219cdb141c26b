//! `getsockopt(SOL_SOCKET, SO_ERROR)` on a socket being connected: the errno
//! the application was handed. An ICMP error that arrives while the
//! connecting task holds the socket lock lands in `sk_err_soft`, and this call
//! clears it; without this hook a fast "host unreachable" would close with no
//! errno at all.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    config,
    emit::field,
    maps::{FLOWS, SO_ERROR_CALLS, SOCK_FDS},
};

const SOL_SOCKET: u64 = 1;
const SO_ERROR: u64 = 4;

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
    if FLOWS.get_ptr(sk).is_none() {
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
        && let Some(state) = FLOWS.get_ptr_mut(sk)
    {
        // SAFETY: valid map value pointer.
        unsafe { (*state).reported_err = err };
    }
    0
}
