//! `syscalls:sys_enter_connect`: the destination the application asked for,
//! before socket-level load balancing (Cilium / GKE Dataplane V2) rewrites it.
//! Joined to the flow at CLOSE→SYN_SENT, which runs in the same thread.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use egress_common::{AF_INET, AF_INET6, ConnectArgs};

use crate::{config, maps::CONNECT_ARGS, tp::field};

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_connect(&ctx);
    0
}

fn try_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let uaddr = field::<u64>(ctx, config!(syscalls.connect_uservaddr))?;
    let fd = field::<u64>(ctx, config!(syscalls.connect_fd)).unwrap_or(u64::MAX);
    // SAFETY: user memory read through the helper; failures are errors.
    let family: u16 = unsafe { bpf_probe_read_user(uaddr as *const u16) }?;
    let mut args = ConnectArgs { family, fd: fd as u32, ..ConnectArgs::default() };
    // SAFETY: as above.
    let port: u16 = unsafe { bpf_probe_read_user((uaddr + 2) as *const u16) }?;
    args.port = u16::from_be(port);
    if family == AF_INET {
        // SAFETY: as above.
        let a: [u8; 4] = unsafe { bpf_probe_read_user((uaddr + 4) as *const [u8; 4]) }?;
        args.addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        // SAFETY: as above.
        args.addr = unsafe { bpf_probe_read_user((uaddr + 8) as *const [u8; 16]) }?;
    } else {
        return Ok(());
    }
    // SAFETY: helper without preconditions.
    args.ts_ns = unsafe { bpf_ktime_get_ns() };
    let _ = CONNECT_ARGS.insert(bpf_get_current_pid_tgid(), args, 0);
    Ok(())
}
