//! The kernel programs, one value each: name, hook, whether the agent can
//! run without it, what is lost without it, when it stays on standby, and
//! what this kernel must offer for it. The loader walks this table once:
//! it loads what this kernel takes and says why it skipped the rest; `check`
//! and `/metrics` report the result; `--disable-programs` names come from it.
//! The order is the order `check` prints.
use egress_common::Config;

use super::offsets::tracefs::{FormatError, TracepointFormat};

/// How a program hooks into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A tracefs tracepoint: the record layout comes from its `format`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A raw tracepoint: arguments are the TP_PROTO (no record layout); the
    /// tracefs event says whether this kernel has it.
    RawTracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// `cgroup/getsockopt` on the cgroup v2 root.
    CgroupSockopt,
    /// `cgroup_skb` on the cgroup v2 root, one direction.
    CgroupSkb(Direction),
    Kprobe {
        function: &'static str,
    },
    /// A BPF iterator (`iter/<target>`): verified at load, run by the agent
    /// when it needs the walk (once, at start).
    Iter {
        target: &'static str,
    },
    /// Loaded (verified), never attached.
    LoadOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

impl Hook {
    /// As `check` prints it.
    pub fn describe(&self) -> String {
        match self {
            Self::Tracepoint { category, name } => format!("tracepoint/{category}/{name}"),
            Self::RawTracepoint { name, .. } => format!("raw_tracepoint/{name}"),
            Self::CgroupSockopt => "cgroup/getsockopt".to_string(),
            Self::CgroupSkb(Direction::Egress) => "cgroup_skb/egress".to_string(),
            Self::CgroupSkb(Direction::Ingress) => "cgroup_skb/ingress".to_string(),
            Self::Kprobe { function } => format!("kprobe/{function}"),
            Self::Iter { target } => format!("iter/{target}"),
            Self::LoadOnly => "none (load only)".to_string(),
        }
    }
}

/// Whether the agent runs without the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Without it the agent cannot run: loading fails.
    Required,
    /// Skipped, with the reason, when this kernel cannot take it; may be
    /// turned off with `--disable-programs`.
    Optional,
    /// Loaded only to prove that a program this kernel rejects is skipped;
    /// not an option.
    Canary,
}

/// When a program is loaded (verified) but not attached because it is not
/// needed on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standby {
    Never,
    /// `so_error` attached: it reads SO_ERROR without a syscall tracepoint.
    WhileSoErrorAttached,
    /// No cgroup sock_addr program on this host (`--connect-intent auto`),
    /// or `--connect-intent false`.
    ConnectIntent,
    /// `sock::sk_err` resolved from BTF: the close reads a received reset
    /// from it (ECONNRESET, EPIPE: set before the CLOSE transition).
    WhileSkErrReadable,
}

/// What this kernel and host must offer, beyond the verifier's yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requires {
    /// The tracepoint exists and its record layout resolves (tracefs).
    Tracepoint,
    /// A cgroup v2 hierarchy to attach to.
    CgroupRoot,
    /// Something to capture (proxy ports or DNS observation) and a cgroup v2 hierarchy.
    Payload,
    /// Kprobes, and BTF that describes `struct nf_conn` (where conntrack is
    /// a module, its split BTF: Linux 5.11+).
    ConntrackBtf,
    /// Nothing but the verifier (the canary needs a 5.11+ helper).
    Verifier,
    /// Kernel BTF (an iterator is typed by it) and the struct offsets the
    /// walk reads.
    IterBtf,
    /// The tracepoint exists and the socket fields the flow logic reads
    /// resolved from BTF (the program has a socket, no record).
    SocketBtf,
}

/// Reads the record layout a tracepoint program needs into `CONFIG`.
pub type Layout = fn(&TracepointFormat, &mut Config) -> Result<(), FormatError>;

/// One kernel program.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
    pub need: Need,
    /// What it gives; what is lost without it.
    pub role: &'static str,
    pub standby: Standby,
    pub requires: Requires,
    /// Tracefs tracepoints: where its record's fields are.
    pub layout: Option<Layout>,
    /// The same program as a BTF tracepoint (`tp_btf`), the object's program
    /// of that name: preferred where the kernel has BTF (the arguments come
    /// as they are, no record is built per event); the classic tracepoint
    /// stands in where it cannot load.
    pub btf: Option<&'static str>,
}

const GETSOCKOPT_ROLE: &str = "errno of fast ICMP errors consumed by SO_ERROR";

/// Every program of the object, in the order `check` prints them.
pub const PROGRAMS: &[Program] = &[
    Program {
        // First: whether it attaches decides the getsockopt tracepoints' standby.
        name: "so_error",
        hook: Hook::CgroupSockopt,
        need: Need::Optional,
        role: "errno of fast ICMP errors consumed by SO_ERROR (the syscall tracepoints stand in where this cannot attach)",
        standby: Standby::Never,
        requires: Requires::CgroupRoot,
        layout: None,
        btf: None,
    },
    Program {
        name: "inet_sock_set_state",
        hook: Hook::Tracepoint { category: "sock", name: "inet_sock_set_state" },
        need: Need::Required,
        role: "connect outcomes, owner, latency (required)",
        standby: Standby::Never,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| {
            f.tcp_offsets(&["oldstate", "newstate", "protocol"], None).map(|o| c.set_state = o)
        }),
        btf: Some("inet_sock_set_state_btf"),
    },
    Program {
        name: "tcp_destroy_sock",
        hook: Hook::RawTracepoint { category: "tcp", name: "tcp_destroy_sock" },
        need: Need::Optional,
        role: "ends a flow whose close no state change reported (a run the kernel skipped), when its socket is destroyed",
        standby: Standby::Never,
        requires: Requires::SocketBtf,
        layout: None,
        btf: Some("tcp_destroy_sock_btf"),
    },
    Program {
        name: "tcp_retransmit_skb",
        hook: Hook::Tracepoint { category: "tcp", name: "tcp_retransmit_skb" },
        need: Need::Optional,
        role: "retransmit counts, connect stalling, degraded verdicts",
        standby: Standby::Never,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| f.tcp_offsets(&[], Some("state")).map(|o| c.retransmit = o)),
        btf: Some("tcp_retransmit_skb_btf"),
    },
    Program {
        name: "tcp_receive_reset",
        hook: Hook::Tracepoint { category: "tcp", name: "tcp_receive_reset" },
        need: Need::Optional,
        role: "refused/reset when sk_err is unreadable",
        standby: Standby::WhileSkErrReadable,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| f.tcp_offsets(&[], None).map(|o| c.receive_reset = o)),
        btf: Some("tcp_receive_reset_btf"),
    },
    Program {
        name: "inet_sk_error_report",
        hook: Hook::RawTracepoint { category: "sock", name: "inet_sk_error_report" },
        need: Need::Optional,
        role: "errors cleared by SO_ERROR before close, and a reset's close the kernel skipped inet_sock_set_state for (Linux 5.16+); sk_err and tcp_destroy_sock cover the rest",
        standby: Standby::Never,
        requires: Requires::Tracepoint,
        layout: None,
        btf: Some("inet_sk_error_report_btf"),
    },
    Program {
        name: "sys_enter_connect",
        hook: Hook::Tracepoint { category: "syscalls", name: "sys_enter_connect" },
        need: Need::Optional,
        role: "intended destination before socket-level load balancing",
        standby: Standby::ConnectIntent,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| {
            c.syscalls.connect_uservaddr = f.sized("uservaddr", 8)?;
            c.syscalls.connect_fd = f.sized("fd", 8)?;
            Ok(())
        }),
        btf: None,
    },
    Program {
        name: "sys_enter_getsockopt",
        hook: Hook::Tracepoint { category: "syscalls", name: "sys_enter_getsockopt" },
        need: Need::Optional,
        role: GETSOCKOPT_ROLE,
        standby: Standby::WhileSoErrorAttached,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| {
            c.syscalls.getsockopt_fd = f.sized("fd", 8)?;
            c.syscalls.getsockopt_level = f.sized("level", 8)?;
            c.syscalls.getsockopt_optname = f.sized("optname", 8)?;
            c.syscalls.getsockopt_optval = f.sized("optval", 8)?;
            Ok(())
        }),
        btf: None,
    },
    Program {
        name: "sys_exit_getsockopt",
        hook: Hook::Tracepoint { category: "syscalls", name: "sys_exit_getsockopt" },
        need: Need::Optional,
        role: GETSOCKOPT_ROLE,
        standby: Standby::WhileSoErrorAttached,
        requires: Requires::Tracepoint,
        layout: Some(|f, c| f.sized("ret", 8).map(|o| c.syscalls.getsockopt_ret = o)),
        btf: None,
    },
    Program {
        name: "payload_egress",
        hook: Hook::CgroupSkb(Direction::Egress),
        need: Need::Optional,
        role: PAYLOAD_ROLE,
        standby: Standby::Never,
        requires: Requires::Payload,
        layout: None,
        btf: None,
    },
    Program {
        name: "payload_ingress",
        hook: Hook::CgroupSkb(Direction::Ingress),
        need: Need::Optional,
        role: PAYLOAD_ROLE,
        standby: Standby::Never,
        requires: Requires::Payload,
        layout: None,
        btf: None,
    },
    Program {
        name: "adopt_sockets",
        hook: Hook::Iter { target: "task_file" },
        need: Need::Optional,
        role: "sockets open before the agent started, adopted at start: their retransmits, resets and close are seen (without it a restart is blind to them)",
        standby: Standby::Never,
        requires: Requires::IterBtf,
        layout: None,
        btf: None,
    },
    Program {
        name: "conntrack_confirm",
        hook: Hook::Kprobe { function: super::offsets::conntrack::CONFIRM_FN },
        need: Need::Optional,
        role: "optional in-kernel NAT view (conntrack tuples at confirm), cross-checked against ctnetlink; ctnetlink alone covers NAT",
        standby: Standby::Never,
        requires: Requires::ConntrackBtf,
        layout: None,
        btf: None,
    },
    Program {
        name: "compat_canary",
        hook: Hook::LoadOnly,
        need: Need::Canary,
        role: "nothing: a canary needing bpf_get_current_task_btf (5.11+), proof that a program this kernel rejects is skipped",
        standby: Standby::Never,
        requires: Requires::Verifier,
        layout: None,
        btf: None,
    },
];

const PAYLOAD_ROLE: &str =
    "CONNECT target and proxy status of flows to proxy ports; DNS queries and responses";

/// A `--disable-programs` name that is not an optional program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramNameError {
    #[error("{0} is required and cannot be disabled")]
    Required(String),
    #[error("unknown program {name:?} (optional programs: {})", optional().collect::<Vec<_>>().join(", "))]
    Unknown { name: String },
}

/// Names `--disable-programs` accepts.
pub fn optional() -> impl Iterator<Item = &'static str> {
    PROGRAMS.iter().filter(|p| p.need == Need::Optional).map(|p| p.name)
}

/// Parse one `--disable-programs` name: optional programs only.
pub fn parse_optional(s: &str) -> Result<String, ProgramNameError> {
    match PROGRAMS.iter().find(|p| p.name == s).map(|p| p.need) {
        Some(Need::Optional) => Ok(s.to_string()),
        Some(Need::Required) => Err(ProgramNameError::Required(s.to_string())),
        Some(Need::Canary) | None => Err(ProgramNameError::Unknown { name: s.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_optional_programs_can_be_disabled() {
        assert_eq!(parse_optional("sys_enter_connect").as_deref(), Ok("sys_enter_connect"));
        assert!(
            parse_optional("inet_sock_set_state")
                .is_err_and(|e| e.to_string().contains("required"))
        );
        assert!(parse_optional("compat_canary").is_err(), "the canary is not an option");
        assert!(parse_optional("nope").is_err_and(
            |e| e.to_string().contains("payload_egress") && e.to_string().contains("so_error")
        ));
        assert_eq!(optional().count(), PROGRAMS.len() - 2);
    }

    #[test]
    fn one_entry_per_program() {
        for (i, p) in PROGRAMS.iter().enumerate() {
            assert!(PROGRAMS[..i].iter().all(|q| q.name != p.name), "{} twice", p.name);
            assert_eq!(
                p.layout.is_some(),
                matches!(p.hook, Hook::Tracepoint { .. }),
                "{}: a tracefs tracepoint has a layout",
                p.name
            );
            assert!(!p.role.is_empty(), "{}", p.name);
        }
        assert_eq!(PROGRAMS.iter().filter(|p| p.need == Need::Required).count(), 1);
        assert_eq!(
            PROGRAMS[0].name, "so_error",
            "decides the getsockopt tracepoints' standby: first"
        );
    }
}
