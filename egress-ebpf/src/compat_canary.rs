//! A load-only canary that needs a helper Linux 5.10 lacks
//! (`bpf_get_current_task_btf`, 5.11+, allowed in tracepoint programs). The agent loads it and never attaches
//! it: where the kernel lacks the helper the verifier rejects it and `check`
//! reports it skipped with the verifier's reason. It keeps the claim "a
//! program this kernel cannot take is skipped, never fatal" tested on every
//! kernel of the VM matrix.
use aya_ebpf::{
    helpers::generated::bpf_get_current_task_btf, macros::tracepoint, programs::TracePointContext,
};

#[tracepoint]
pub fn compat_canary(_ctx: TracePointContext) -> u32 {
    // SAFETY: the helper takes no arguments.
    let task = unsafe { bpf_get_current_task_btf() };
    u32::from(!task.is_null())
}
