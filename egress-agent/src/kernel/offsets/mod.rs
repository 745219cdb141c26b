//! Where this kernel keeps the fields we read: tracepoint record layouts from
//! tracefs `format` files and struct member offsets from BTF. Nothing here is
//! hard-coded for one kernel.
pub mod btf;
pub mod conntrack;
pub mod tracefs;

use egress_common::{Config, KOFF_UNKNOWN, KernelOffsets};

pub use btf::Btf;
pub use tracefs::{TraceFs, TracepointFormat};

/// Kernel struct offsets we use, resolved from BTF; each unknown one turns a
/// feature off (reported by `check`), never the agent.
pub fn kernel_offsets(btf: &Btf) -> (KernelOffsets, Vec<String>) {
    let mut problems = Vec::new();
    let mut get = |st: &str, path: &[&str]| match btf.member_offset(st, path) {
        Ok(o) => o,
        Err(e) => {
            problems.push(format!("{st}.{}: {e}", path.join(".")));
            KOFF_UNKNOWN
        }
    };
    let sock_sk_err = get("sock", &["sk_err"]);
    let sock_skc_net = get("sock_common", &["skc_net"]);
    let net_ns_inum = get("net", &["ns", "inum"]);
    let sock_sk_err_soft = get("sock", &["sk_err_soft"]);
    (KernelOffsets { sock_sk_err, sock_skc_net, net_ns_inum, sock_sk_err_soft }, problems)
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A tracefs tracepoint: the record layout comes from its `format`.
    Tracepoint,
    /// A raw tracepoint: arguments are the TP_PROTO (no record layout).
    RawTracepoint,
}

/// The kernel programs, as (program, hook kind, category, tracepoint).
pub const PROGRAMS: &[(&str, Hook, &str, &str)] = &[
    ("inet_sock_set_state", Hook::Tracepoint, "sock", "inet_sock_set_state"),
    ("tcp_retransmit_skb", Hook::Tracepoint, "tcp", "tcp_retransmit_skb"),
    ("tcp_receive_reset", Hook::Tracepoint, "tcp", "tcp_receive_reset"),
    ("inet_sk_error_report", Hook::RawTracepoint, "sock", "inet_sk_error_report"),
    ("sys_enter_connect", Hook::Tracepoint, "syscalls", "sys_enter_connect"),
    ("sys_enter_getsockopt", Hook::Tracepoint, "syscalls", "sys_enter_getsockopt"),
    ("sys_exit_getsockopt", Hook::Tracepoint, "syscalls", "sys_exit_getsockopt"),
];

/// Result of resolving everything the programs need.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    /// program name → why its layout could not be resolved.
    pub tracepoint_errors: Vec<(String, String)>,
    pub kernel_problems: Vec<String>,
}

/// Resolve the full `CONFIG` global for this kernel.
pub fn resolve(tracefs: &TraceFs, btf: Option<&Btf>) -> Resolved {
    let mut config = Config::DEFAULT;
    let mut tracepoint_errors = Vec::new();
    for &(prog, hook, cat, name) in PROGRAMS {
        if hook != Hook::Tracepoint {
            continue;
        }
        let res = tracefs.format(cat, name).and_then(|f| match prog {
            "inet_sock_set_state" => f.tcp_offsets(&["oldstate", "newstate", "protocol"], None).map(|o| config.set_state = o),
            "tcp_retransmit_skb" => f.tcp_offsets(&[], Some("state")).map(|o| config.retransmit = o),
            "tcp_receive_reset" => f.tcp_offsets(&[], None).map(|o| config.receive_reset = o),
            "sys_enter_connect" => {
                let sc = &mut config.syscalls;
                f.sized("uservaddr", 8).map(|o| sc.connect_uservaddr = o)?;
                f.sized("fd", 8).map(|o| sc.connect_fd = o)
            }
            "sys_enter_getsockopt" => {
                let sc = &mut config.syscalls;
                f.sized("fd", 8).map(|o| sc.getsockopt_fd = o)?;
                f.sized("level", 8).map(|o| sc.getsockopt_level = o)?;
                f.sized("optname", 8).map(|o| sc.getsockopt_optname = o)?;
                f.sized("optval", 8).map(|o| sc.getsockopt_optval = o)
            }
            "sys_exit_getsockopt" => f.sized("ret", 8).map(|o| config.syscalls.getsockopt_ret = o),
            _ => Ok(()),
        });
        if let Err(e) = res {
            tracepoint_errors.push((prog.to_string(), format!("{e}")));
        }
    }
    let kernel_problems = match btf {
        Some(btf) => {
            let (k, p) = kernel_offsets(btf);
            config.kernel = k;
            p
        }
        None => vec!["no kernel BTF: sk_err and netns reads are off".to_string()],
    };
    Resolved { config, tracepoint_errors, kernel_problems }
}
