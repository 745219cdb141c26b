//! Load the kernel programs for *this* kernel: resolve offsets, size maps,
//! load, attach what can attach, and say why the rest cannot.
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockopt, KProbe, RawTracePoint, TracePoint},
};
use egress_common::{GLOBAL_CONFIG, MAP_EVENTS, MAP_FLOWS, MAP_PROXY_FLOWS, MAX_PROXY_PORTS};
use serde::Serialize;

use super::offsets::{self, Btf, Hook, TraceFs};

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this binary was built without its kernel programs (AYA_BUILD_SKIP); build with `cargo xtask build`")]
    NoObject,
    #[error("missing privilege: {0}")]
    Privilege(String),
    #[error(transparent)]
    TraceFs(#[from] offsets::tracefs::FormatError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("required program {program} cannot run: {reason}")]
    Required { program: String, reason: String },
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub ring_bytes: u32,
    pub max_flows: u32,
    /// Proxy ports whose first payload bytes are read (empty: payload hooks off).
    pub proxy_ports: Vec<u16>,
    /// cgroup v2 mount the cgroup hooks attach to (None: none found).
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Port whose UDP/TCP messages are read as DNS (0: DNS observation off).
    pub dns_port: u16,
    /// Optional programs the operator turned off (`--disable-programs`).
    pub disabled: Vec<String>,
    /// Read the application's connect() destination with the syscall
    /// tracepoint: Some(true) always, Some(false) never, None when a cgroup
    /// sock_addr program (socket-level load balancing) may rewrite it.
    pub connect_intent: Option<bool>,
}

/// Programs `--disable-programs` may name: every optional one.
pub const OPTIONAL_PROGRAMS: &[&str] = &[
    "tcp_retransmit_skb",
    "tcp_receive_reset",
    "inet_sk_error_report",
    "sys_enter_connect",
    "sys_enter_getsockopt",
    "sys_exit_getsockopt",
    "payload_egress",
    "payload_ingress",
    "so_error",
    "conntrack_confirm",
];

/// Parse one `--disable-programs` name: optional programs only.
pub fn parse_optional_program(s: &str) -> Result<String, String> {
    if OPTIONAL_PROGRAMS.contains(&s) {
        Ok(s.to_string())
    } else if s == "inet_sock_set_state" {
        Err("inet_sock_set_state is required and cannot be disabled".into())
    } else {
        Err(format!("unknown program {s:?} (optional programs: {})", OPTIONAL_PROGRAMS.join(", ")))
    }
}

const DISABLED: &str = "disabled by --disable-programs";

/// Attach status of one program, as `check` and `/metrics` report it.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub program: String,
    pub hook: String,
    pub required: bool,
    pub attached: bool,
    pub error: Option<String>,
    /// What is lost without it.
    pub role: &'static str,
    /// Not attached because it is not needed here: another hook does its
    /// job, or nothing on this host calls for it (`error` says which).
    pub standby: bool,
    /// Instructions the verifier processed (BPF_OBJ_GET_INFO_BY_FD
    /// `verified_insns`, Linux 5.16+; None before or when not loaded).
    pub verified_insns: Option<u32>,
    /// Length of the program after verification, in instructions
    /// (`xlated_prog_len` / 8, every kernel; None when not loaded).
    pub xlated_insns: Option<u32>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub kernel_problems: Vec<String>,
}

fn role(program: &str) -> (&'static str, bool) {
    match program {
        "inet_sock_set_state" => ("connect outcomes, owner, latency (required)", true),
        "tcp_retransmit_skb" => ("retransmit counts, connect stalling, degraded verdicts", false),
        "tcp_receive_reset" => ("refused/reset when sk_err is unreadable", false),
        "inet_sk_error_report" => ("errors cleared by SO_ERROR before close (Linux 5.16+); sk_err covers the rest", false),
        "sys_enter_connect" => ("intended destination before socket-level load balancing", false),
        "sys_enter_getsockopt" | "sys_exit_getsockopt" => ("errno of fast ICMP errors consumed by SO_ERROR", false),
        _ => ("", false),
    }
}

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0))))
        .unwrap_or(0)
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Which of the needed capabilities are missing (CAP_SYS_ADMIN covers
/// BPF+PERFMON on kernels before 5.8 and still does after).
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    let mut missing = vec![];
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

pub fn object_present() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// Load everything and attach what this kernel supports.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if !object_present() {
        return Err(LoadError::NoObject);
    }
    let missing = missing_caps(effective_caps());
    if !missing.is_empty() {
        return Err(LoadError::Privilege(format!("{} (run as root or grant them)", missing.join(", "))));
    }
    raise_memlock();
    let tracefs = TraceFs::locate()?;
    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("kernel BTF unavailable ({}); errno and netns capture are off", crate::errors::Chain(&e));
            None
        }
    };
    let mut resolved = offsets::resolve(&tracefs, btf.as_ref());
    let conntrack = offsets::conntrack::plan(&tracefs.root, btf.as_ref());
    if let Ok(p) = &conntrack {
        resolved.config.conntrack = p.offsets;
    }
    let mut ports: Vec<u16> = opts.proxy_ports.iter().copied().filter(|&p| p != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_PROXY_PORTS {
        return Err(LoadError::Required { program: "payload".into(), reason: format!("at most {MAX_PROXY_PORTS} proxy ports, got {}", ports.len()) });
    }
    resolved.config.proxy_ports[..ports.len()].copy_from_slice(&ports);
    resolved.config.dns_port = opts.dns_port;
    // The reader is woken once an eighth of the ring is unread; below that
    // it collects events on its poll tick (pipeline::POLL).
    resolved.config.wakeup_bytes = opts.ring_bytes / 8;
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, &resolved.config, true)
        .map_max_entries(MAP_EVENTS, opts.ring_bytes)
        .map_max_entries(MAP_FLOWS, opts.max_flows)
        .map_max_entries(MAP_PROXY_FLOWS, opts.max_flows)
        .load(EBPF_OBJECT)?;

    let mut programs = Vec::new();
    let disabled = |name: &str| opts.disabled.iter().any(|d| d == name);
    let cgroup_root = opts.cgroup_root.clone();
    // SO_ERROR through the cgroup hook where it attaches: the syscall
    // tracepoints would put every syscall of every task on the traced path.
    let so_error = if disabled("so_error") {
        Err(DISABLED.to_string())
    } else {
        match &cgroup_root {
            None => Err("no cgroup v2 hierarchy to attach to".to_string()),
            Some(root) => attach_cgroup_sockopt(&mut ebpf, "so_error", root),
        }
    };
    programs.push(ProgramStatus {
        program: "so_error".to_string(),
        hook: "cgroup/getsockopt".to_string(),
        required: false,
        attached: so_error.is_ok(),
        error: so_error.clone().err(),
        role: "errno of fast ICMP errors consumed by SO_ERROR (the syscall tracepoints stand in where this cannot attach)",
        standby: false,
        verified_insns: None,
        xlated_insns: None,
    });
    let intent = match opts.connect_intent {
        Some(true) => None,
        Some(false) => Some("standby: --connect-intent false".to_string()),
        None => match socket_lb_programs() {
            0 => Some("standby: no cgroup sock_addr program on this host, so connect() destinations are not rewritten and the socket's own is the intended one (--connect-intent true attaches it)".to_string()),
            _ => None,
        },
    };
    for &(name, kind, cat, tp) in offsets::PROGRAMS {
        let (role, required) = role(name);
        let hook = match kind {
            Hook::Tracepoint => format!("tracepoint/{cat}/{tp}"),
            Hook::RawTracepoint => format!("raw_tracepoint/{tp}"),
        };
        let standby_reason = match name {
            "sys_enter_getsockopt" | "sys_exit_getsockopt" if so_error.is_ok() => Some("standby: so_error (cgroup/getsockopt) covers SO_ERROR".to_string()),
            "sys_enter_connect" => intent.clone(),
            _ => None,
        };
        let standby = standby_reason.is_some() && !disabled(name);
        let err = if disabled(name) {
            Some(DISABLED.to_string())
        } else if let Some(why) = standby_reason {
            // Loaded (the verifier's verdict and counts are known), not attached.
            Some(match load_tracepoint(&mut ebpf, name, kind) {
                Ok(()) => why,
                Err(e) => format!("{why}; {e}"),
            })
        } else if let Some((_, e)) = resolved.tracepoint_errors.iter().find(|(p, _)| p == name) {
            Some(e.clone())
        } else if !tracefs.exists(cat, tp) {
            Some(format!("tracepoint {cat}/{tp} does not exist on this kernel"))
        } else {
            attach(&mut ebpf, name, kind, cat, tp).err()
        };
        if required && let Some(reason) = &err {
            return Err(LoadError::Required { program: name.to_string(), reason: reason.clone() });
        }
        programs.push(ProgramStatus { program: name.to_string(), hook, required, attached: err.is_none(), error: err, role, standby, verified_insns: None, xlated_insns: None });
    }
    for (name, dir, way) in [("payload_egress", CgroupSkbAttachType::Egress, "egress"), ("payload_ingress", CgroupSkbAttachType::Ingress, "ingress")] {
        let err = if opts.disabled.iter().any(|d| d == name) {
            Some(DISABLED.to_string())
        } else if ports.is_empty() && opts.dns_port == 0 {
            Some("off: no proxy ports configured (--proxy-ports or chain hops) and DNS observation off".to_string())
        } else {
            match &cgroup_root {
                None => Some("no cgroup v2 hierarchy to attach to".to_string()),
                Some(root) => attach_cgroup_skb(&mut ebpf, name, root, dir).err(),
            }
        };
        programs.push(ProgramStatus {
            program: name.to_string(),
            hook: format!("cgroup_skb/{way}"),
            required: false,
            attached: err.is_none(),
            error: err,
            role: "CONNECT target and proxy status of flows to proxy ports; DNS queries and responses",
            standby: false,
            verified_insns: None,
            xlated_insns: None,
        });
    }
    let err = if disabled("conntrack_confirm") {
        Some(DISABLED.to_string())
    } else {
        match &conntrack {
            Err(e) => Some(crate::errors::Chain(e).to_string()),
            Ok(_) => attach_kprobe(&mut ebpf, "conntrack_confirm", offsets::conntrack::CONFIRM_FN).err(),
        }
    };
    programs.push(ProgramStatus {
        program: "conntrack_confirm".to_string(),
        hook: format!("kprobe/{}", offsets::conntrack::CONFIRM_FN),
        required: false,
        attached: err.is_none(),
        error: err,
        role: "optional in-kernel NAT view (conntrack tuples at confirm), cross-checked against ctnetlink; ctnetlink alone covers NAT",
        standby: false,
        verified_insns: None,
        xlated_insns: None,
    });
    let err = load_only(&mut ebpf, "compat_canary").err();
    programs.push(ProgramStatus {
        program: "compat_canary".to_string(),
        hook: "none (load only)".to_string(),
        required: false,
        attached: err.is_none(),
        error: err,
        role: "nothing: a canary needing bpf_get_current_task_btf (5.11+), proof that a program this kernel rejects is skipped",
        standby: false,
        verified_insns: None,
        xlated_insns: None,
    });
    for p in &mut programs {
        if let Some(info) = ebpf.program(&p.program).and_then(|prog| prog.info().ok()) {
            p.verified_insns = info.verified_instruction_count();
            p.xlated_insns = info.size_translated().map(|bytes| bytes / 8);
        }
    }
    Ok(Loaded { ebpf, programs, kernel_problems: resolved.kernel_problems })
}

/// cgroup sock_addr programs loaded on this host (connect hooks of
/// socket-level load balancers such as Cilium's rewrite the destination
/// before the socket sees it). Counted before ours load; we load none.
fn socket_lb_programs() -> usize {
    /// `enum bpf_prog_type` in the kernel's uapi (stable ABI).
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.program_type() as u32 == BPF_PROG_TYPE_CGROUP_SOCK_ADDR)
        .count()
}

fn attach_cgroup_sockopt(ebpf: &mut Ebpf, name: &str, root: &std::path::Path) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let prog: &mut CgroupSockopt = prog.try_into().map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("verifier/load: {}", error_chain(&e)))?;
    let cg = std::fs::File::open(root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    match prog.attach(&cg, CgroupAttachMode::AllowMultiple) {
        Ok(_) => Ok(()),
        Err(multi) => prog
            .attach(&cg, CgroupAttachMode::Single)
            .map(|_| ())
            .map_err(|e| format!("attach to {}: {} (multi: {})", root.display(), error_chain(&e), error_chain(&multi))),
    }
}

/// Attach to the cgroup v2 root: every socket on the host is below it.
/// Shares the root with other programs where the kernel allows it.
fn attach_cgroup_skb(ebpf: &mut Ebpf, name: &str, root: &std::path::Path, dir: CgroupSkbAttachType) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let prog: &mut CgroupSkb = prog.try_into().map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("verifier/load: {}", error_chain(&e)))?;
    let cg = std::fs::File::open(root).map_err(|e| format!("opening {}: {e}", root.display()))?;
    match prog.attach(&cg, dir, CgroupAttachMode::AllowMultiple) {
        Ok(_) => Ok(()),
        Err(multi) => prog
            .attach(&cg, dir, CgroupAttachMode::Single)
            .map(|_| ())
            .map_err(|e| format!("attach to {}: {} (multi: {})", root.display(), error_chain(&e), error_chain(&multi))),
    }
}

fn attach_kprobe(ebpf: &mut Ebpf, name: &str, function: &str) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let prog: &mut KProbe = prog.try_into().map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("verifier/load: {}", error_chain(&e)))?;
    prog.attach(function, 0).map(|_| ()).map_err(|e| format!("attach to {function}: {}", error_chain(&e)))
}

fn load_tracepoint(ebpf: &mut Ebpf, name: &str, kind: Hook) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let load = |e: aya::programs::ProgramError| format!("verifier/load: {}", error_chain(&e));
    match kind {
        Hook::Tracepoint => <&mut TracePoint>::try_from(prog).map_err(|e| format!("{e}"))?.load().map_err(load),
        Hook::RawTracepoint => <&mut RawTracePoint>::try_from(prog).map_err(|e| format!("{e}"))?.load().map_err(load),
    }
}

fn load_only(ebpf: &mut Ebpf, name: &str) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("verifier/load: {}", error_chain(&e)))
}

fn attach(ebpf: &mut Ebpf, name: &str, kind: Hook, cat: &str, tp: &str) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing from the object"))?;
    let load = |e: aya::programs::ProgramError| format!("verifier/load: {}", error_chain(&e));
    let att = |e: aya::programs::ProgramError| format!("attach: {}", error_chain(&e));
    match kind {
        Hook::Tracepoint => {
            let prog: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
            prog.load().map_err(load)?;
            prog.attach(cat, tp).map_err(att)?;
        }
        Hook::RawTracepoint => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
            prog.load().map_err(load)?;
            prog.attach(tp).map_err(att)?;
        }
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    // Verifier logs are long: keep the last lines, where the reason is.
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() > 6 { lines[lines.len() - 6..].join(" | ") } else { s.replace('\n', " | ") }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rl = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to a local rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on 5.11+ (memcg accounting)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert!(missing_caps(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn only_optional_programs_can_be_disabled() {
        assert_eq!(parse_optional_program("sys_enter_connect").as_deref(), Ok("sys_enter_connect"));
        assert!(parse_optional_program("inet_sock_set_state").is_err_and(|e| e.contains("required")));
        assert!(parse_optional_program("nope").is_err_and(|e| e.contains("payload_egress")));
        for (name, _, _, _) in offsets::PROGRAMS {
            assert!(*name == "inet_sock_set_state" || OPTIONAL_PROGRAMS.contains(name), "{name} missing from OPTIONAL_PROGRAMS");
        }
    }
}
