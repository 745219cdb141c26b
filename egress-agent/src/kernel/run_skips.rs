//! Runs of our programs the kernel skipped. A tracing program already
//! running on a CPU is not run again there when its hook fires nested (a
//! timer softirq closing a connect while the same program runs in a task):
//! the kernel only counts the skip in the program's `recursion_misses`
//! (Linux 5.12+). A skipped state change is a transition the flow logic
//! never saw, so the count is exported, never left in the kernel.
use std::os::fd::{AsFd, AsRawFd};

use aya::{
    Ebpf,
    programs::{Program, ProgramFd},
};

/// `BPF_OBJ_GET_INFO_BY_FD` (uapi `enum bpf_cmd`, stable ABI).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `recursion_misses` in uapi `struct bpf_prog_info` (stable ABI:
/// fields are only ever appended).
const RECURSION_MISSES_OFFSET: usize =
    std::mem::offset_of!(aya_obj::generated::bpf_prog_info, recursion_misses);
const INFO_LEN: usize = RECURSION_MISSES_OFFSET + 8;

/// The tracing programs loaded, each with its own handle on the program.
pub struct RunSkips {
    programs: Vec<(String, ProgramFd, u64)>,
}

impl RunSkips {
    /// Every loaded tracepoint (classic, BTF, raw) and kprobe program of `ebpf`
    /// (the hooks that can fire nested); the others run in task context.
    pub fn new(ebpf: &Ebpf) -> Self {
        let programs = ebpf
            .programs()
            .filter(|(_, p)| {
                matches!(
                    p,
                    Program::TracePoint(_)
                        | Program::BtfTracePoint(_)
                        | Program::RawTracePoint(_)
                        | Program::KProbe(_)
                )
            })
            .filter_map(|(name, p)| Some((name.to_string(), p.fd().ok()?.try_clone().ok()?, 0)))
            .collect();
        Self { programs }
    }

    /// The programs watched.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.programs.iter().map(|(n, _, _)| n.as_str())
    }

    /// (program, skips since the last call) for each program with new skips.
    pub fn take(&mut self) -> Vec<(&str, u64)> {
        let mut out = Vec::new();
        for (name, fd, last) in &mut self.programs {
            let Some(total) = recursion_misses(fd) else { continue };
            if total > *last {
                out.push((name.as_str(), total - *last));
                *last = total;
            }
        }
        out
    }
}

/// The program's `recursion_misses`; 0 on kernels before 5.12 (the kernel
/// fills only the fields it has); None when the call fails.
fn recursion_misses(fd: &ProgramFd) -> Option<u64> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u8; INFO_LEN];
    let mut attr = InfoByFd {
        bpf_fd: u32::try_from(fd.as_fd().as_raw_fd()).ok()?,
        info_len: INFO_LEN as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command, `info`
    // outlives the call and is `info_len` bytes long.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoByFd>() as libc::c_uint,
        )
    };
    if r != 0 {
        return None;
    }
    let bytes = info[RECURSION_MISSES_OFFSET..].try_into().ok()?;
    Some(u64::from_ne_bytes(bytes))
}
