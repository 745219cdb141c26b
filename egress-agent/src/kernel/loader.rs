//! Load the kernel programs for *this* kernel: resolve the layouts the
//! programs read (tracefs, BTF) into `CONFIG`, size the maps, then walk the
//! [program table](super::programs) once: attach what this kernel takes,
//! keep on standby what is not needed here, and say why the rest is skipped.
use aya::{Ebpf, EbpfLoader};
use egress_common::{
    Config, GLOBAL_CONFIG, KOFF_UNKNOWN, KernelOffsets, MAP_AGG, MAP_CAPTURE, MAP_EVENTS,
    MAP_FLOW_SLOTS, MAP_FLOWS, MAP_PROXY_FLOWS, MAX_PROXY_PORTS, MAX_TLS_PORTS, flow_table_split,
};
use serde::Serialize;

use super::{
    attach,
    offsets::{self, Btf, TraceFs, conntrack::ConntrackLayoutError},
    programs::{Hook, Need, PROGRAMS, Program, Requires, Standby},
};
use crate::errors::Chain;

/// The object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this binary was built without its kernel programs (AYA_BUILD_SKIP); build with `cargo xtask build`"
    )]
    NoObject,
    #[error("missing privilege: {} (run as root or grant them)", .0.join(", "))]
    Privilege(Vec<&'static str>),
    #[error(transparent)]
    TraceFs(#[from] offsets::tracefs::FormatError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("required program {program} cannot run: {reason}")]
    Required { program: String, reason: String },
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Bytes of each ring (flow events; captures).
    pub ring_bytes: u32,
    pub max_flows: u32,
    /// Keys of each aggregation map of clean flows.
    pub agg_keys: u32,
    /// Proxy ports whose first payload bytes are read (empty: payload hooks off).
    pub proxy_ports: Vec<u16>,
    /// cgroup v2 mount the cgroup hooks attach to (None: none found).
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Port whose UDP/TCP messages are read as DNS (0: DNS observation off).
    pub dns_port: u16,
    /// Remote ports of TLS flows whose ClientHello is read (empty: off).
    pub tls_ports: Vec<u16>,
    /// Optional programs the operator turned off (`--disable-programs`).
    pub disabled: Vec<String>,
    /// Read the application's connect() destination with the syscall
    /// tracepoint: Some(true) always, Some(false) never, None when a cgroup
    /// sock_addr program (socket-level load balancing) may rewrite it.
    pub connect_intent: Option<bool>,
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
    /// Why the preferred BTF tracepoint did not load here (the classic
    /// tracepoint stands in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The loaded object and what became of each program.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub programs: Vec<ProgramStatus>,
    pub kernel_problems: Vec<String>,
}

impl Loaded {
    /// Detach and unload every program, so nothing more is written to the
    /// rings: what they hold then is finite and the last drain is bounded
    /// even under a flood. Returns how many programs were unloaded.
    pub fn stop(&mut self) -> usize {
        use aya::programs::{Program as P, ProgramError};
        let mut n = 0;
        for (name, p) in self.ebpf.programs_mut() {
            let r = match p {
                P::TracePoint(p) => p.unload(),
                P::BtfTracePoint(p) => p.unload(),
                P::KProbe(p) => p.unload(),
                P::CgroupSkb(p) => p.unload(),
                P::CgroupSockAddr(p) => p.unload(),
                P::SchedClassifier(p) => p.unload(),
                P::Iter(p) => p.unload(),
                _ => continue,
            };
            match r {
                Ok(()) => n += 1,
                Err(ProgramError::NotLoaded) => {}
                Err(e) => tracing::warn!(program = name, "unloading at shutdown: {e}"),
            }
        }
        n
    }
}

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("CapEff:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

pub const CAP_SYS_ADMIN: u32 = 21;
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

/// The `CONFIG` global for this kernel: tracepoint record layouts from
/// tracefs (per program: why one did not resolve) and struct offsets from BTF.
struct Resolved {
    config: Config,
    /// Program name → why its layout could not be resolved.
    layout_errors: Vec<(&'static str, String)>,
    kernel_problems: Vec<String>,
}

fn resolve(tracefs: &TraceFs, btf: Option<&Btf>) -> Resolved {
    let mut config = Config::DEFAULT;
    let mut layout_errors = Vec::new();
    for p in PROGRAMS {
        let (Hook::Tracepoint { category, name }, Some(layout)) = (p.hook, p.layout) else {
            continue;
        };
        if let Err(e) = tracefs.format(category, name).and_then(|f| layout(&f, &mut config)) {
            layout_errors.push((p.name, e.to_string()));
        }
    }
    let kernel_problems = match btf {
        Some(btf) => {
            let (k, p) = offsets::kernel_offsets(btf);
            config.kernel = k;
            p
        }
        None => vec!["no kernel BTF: sk_err and netns reads are off".to_string()],
    };
    Resolved { config, layout_errors, kernel_problems }
}

/// What the loop knows beyond the program itself.
struct Host<'a> {
    opts: &'a LoadOptions,
    tracefs: &'a TraceFs,
    resolved: &'a Resolved,
    conntrack: &'a Result<offsets::conntrack::Plan, ConntrackLayoutError>,
    /// Proxy ports the payload programs look for.
    ports: &'a [u16],
    so_error_attached: bool,
}

impl Host<'_> {
    /// Why `p` is not needed here, if it is not.
    fn standby(&self, p: &Program) -> Option<String> {
        match p.standby {
            Standby::Never => None,
            Standby::WhileSoErrorAttached => self.so_error_attached.then(|| "standby: so_error (cgroup/getsockopt) covers SO_ERROR".to_string()),
            Standby::WhileSkErrReadable => (self.resolved.config.kernel.sock_sk_err != KOFF_UNKNOWN).then(|| {
                "standby: sk_err is readable, so the close itself sees a received reset (one program run less per connection)".to_string()
            }),
            Standby::ConnectIntent => match self.opts.connect_intent {
                Some(true) => None,
                Some(false) => Some("standby: --connect-intent false".to_string()),
                None if socket_lb_programs() == 0 => Some(
                    "standby: no cgroup sock_addr program on this host, so connect() destinations are not rewritten and the socket's own is the intended one (--connect-intent true attaches it)"
                        .to_string(),
                ),
                None => None,
            },
        }
    }

    /// What this kernel or host lacks for `p`, if anything.
    fn missing(&self, p: &Program) -> Option<String> {
        match p.requires {
            Requires::Tracepoint => {
                if let Some((_, e)) = self.resolved.layout_errors.iter().find(|(n, _)| *n == p.name) {
                    return Some(e.clone());
                }
                let (Hook::Tracepoint { category, name } | Hook::RawTracepoint { category, name }) = p.hook else { return None };
                (!self.tracefs.exists(category, name)).then(|| format!("tracepoint {category}/{name} does not exist on this kernel"))
            }
            Requires::Payload
                if self.ports.is_empty()
                    && self.opts.dns_port == 0
                    && self.resolved.config.tls_ports == [0; MAX_TLS_PORTS] =>
            {
                Some("off: no proxy ports configured (--proxy-ports or chain hops), no TLS ports (tls.ports) and DNS observation off".to_string())
            }
            Requires::ConntrackBtf => self.conntrack.as_ref().err().map(|e| Chain(e).to_string()),
            Requires::IterBtf => (!adoption_fields_known(&self.resolved.config.kernel))
                .then(|| "struct offsets the walk reads are missing from BTF".to_string()),
            Requires::SocketBtf => {
                let Hook::RawTracepoint { category, name } = p.hook else { return None };
                if !self.tracefs.exists(category, name) {
                    Some(format!("tracepoint {category}/{name} does not exist on this kernel"))
                } else {
                    (!socket_fields_known(&self.resolved.config.kernel))
                        .then(|| "the socket fields it reads are missing from BTF".to_string())
                }
            }
            Requires::CgroupRoot | Requires::Payload | Requires::Verifier => None,
        }
    }
}

/// Load everything and attach what this kernel supports.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    if !object_present() {
        return Err(LoadError::NoObject);
    }
    let missing = missing_caps(effective_caps());
    if !missing.is_empty() {
        return Err(LoadError::Privilege(missing));
    }
    raise_memlock();
    let tracefs = TraceFs::locate()?;
    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(
                "kernel BTF unavailable ({}); errno and netns capture are off",
                Chain(&e)
            );
            None
        }
    };
    let mut resolved = resolve(&tracefs, btf.as_ref());
    let conntrack = offsets::conntrack::plan(&tracefs.root, btf.as_ref());
    if let Ok(p) = &conntrack {
        resolved.config.conntrack = p.offsets;
    }
    let mut ports: Vec<u16> = opts.proxy_ports.iter().copied().filter(|&p| p != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_PROXY_PORTS {
        return Err(LoadError::Required {
            program: "payload".into(),
            reason: format!("at most {MAX_PROXY_PORTS} proxy ports, got {}", ports.len()),
        });
    }
    resolved.config.proxy_ports[..ports.len()].copy_from_slice(&ports);
    let mut tls: Vec<u16> = opts.tls_ports.iter().copied().filter(|&p| p != 0).collect();
    tls.sort_unstable();
    tls.dedup();
    if tls.len() > MAX_TLS_PORTS {
        return Err(LoadError::Required {
            program: "payload".into(),
            reason: format!("at most {MAX_TLS_PORTS} TLS ports, got {}", tls.len()),
        });
    }
    resolved.config.tls_ports[..tls.len()].copy_from_slice(&tls);
    resolved.config.dns_port = opts.dns_port;
    // Whether sys_enter_connect will run decides whether the connect path
    // looks up what connect() was asked for.
    let intent_disabled = opts.disabled.iter().any(|d| d == "sys_enter_connect");
    let intent = match opts.connect_intent {
        Some(on) => on,
        None => socket_lb_programs() > 0,
    };
    resolved.config.connect_intent = u16::from(intent && !intent_disabled);
    // BTF tracepoints where the kernel describes itself and the socket
    // fields they read resolved.
    let btf_tp = match (&btf, aya::Btf::from_sys_fs()) {
        (Some(_), Ok(b)) if socket_fields_known(&resolved.config.kernel) => Ok(b),
        (None, _) => Err("no kernel BTF".to_string()),
        (Some(_), Err(e)) => Err(format!("kernel BTF: {e}")),
        (Some(_), Ok(_)) => Err("socket fields missing from BTF".to_string()),
    };
    // The reader is woken once an eighth of the ring is unread; below that
    // it collects events on its poll tick (pipeline::ring::POLL).
    resolved.config.wakeup_bytes = opts.ring_bytes / 8;
    // The socket table: a direct-mapped part and an LRU, together --max-flows.
    let (flow_slots, flow_lru) = flow_table_split(opts.max_flows);
    resolved.config.flow_slots_mask = flow_slots - 1;
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, &resolved.config, true)
        .map_max_entries(MAP_EVENTS, opts.ring_bytes)
        .map_max_entries(MAP_CAPTURE, opts.ring_bytes)
        .map_max_entries(MAP_FLOW_SLOTS, flow_slots)
        .map_max_entries(MAP_FLOWS, flow_lru)
        .map_max_entries(MAP_PROXY_FLOWS, opts.max_flows)
        .map_max_entries(MAP_AGG[0], opts.agg_keys)
        .map_max_entries(MAP_AGG[1], opts.agg_keys)
        .load(EBPF_OBJECT)?;

    let mut host = Host {
        opts,
        tracefs: &tracefs,
        resolved: &resolved,
        conntrack: &conntrack,
        ports: &ports,
        so_error_attached: false,
    };
    let mut programs = Vec::with_capacity(PROGRAMS.len());
    for p in PROGRAMS {
        let mut loaded_as = None;
        let mut fallback = None;
        let disabled = opts.disabled.iter().any(|d| d == p.name);
        let standby = if disabled { None } else { host.standby(p) };
        let error = if disabled {
            Some(DISABLED.to_string())
        } else if let Some(why) = &standby {
            // Loaded (the verifier's verdict and counts are known), not attached.
            Some(match attach::load(&mut ebpf, p) {
                Ok(()) => why.clone(),
                Err(e) => format!("{why}; {e}"),
            })
        } else if let Some(why) = host.missing(p) {
            Some(why)
        } else if let Hook::Iter { target } = p.hook {
            match &btf_tp {
                Ok(b) => {
                    attach::load_iter(&mut ebpf, p.name, target, b).err().map(|e| e.to_string())
                }
                Err(why) => Some(why.clone()),
            }
        } else if let Some(object) = p.btf {
            // The BTF tracepoint first; the classic one where it cannot load.
            let tried = match &btf_tp {
                Ok(b) => attach::attach_btf(&mut ebpf, object, tracepoint_name(p), b)
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why.clone()),
            };
            match tried {
                Ok(()) => {
                    loaded_as = Some(object);
                    None
                }
                Err(why) => {
                    fallback = Some(why);
                    attach::attach(&mut ebpf, p, opts.cgroup_root.as_deref())
                        .err()
                        .map(|e| e.to_string())
                }
            }
        } else {
            attach::attach(&mut ebpf, p, opts.cgroup_root.as_deref()).err().map(|e| e.to_string())
        };
        if p.need == Need::Required
            && let Some(reason) = &error
        {
            return Err(LoadError::Required {
                program: p.name.to_string(),
                reason: reason.clone(),
            });
        }
        if p.name == "so_error" {
            host.so_error_attached = error.is_none();
        }
        let (verified_insns, xlated_insns) =
            match ebpf.program(loaded_as.unwrap_or(p.name)).and_then(|prog| prog.info().ok()) {
                Some(info) => (
                    info.verified_instruction_count(),
                    info.size_translated().map(|bytes| bytes / 8),
                ),
                None => (None, None),
            };
        programs.push(ProgramStatus {
            program: p.name.to_string(),
            hook: match loaded_as {
                Some(_) => format!("tp_btf/{}", tracepoint_name(p)),
                None => p.hook.describe(),
            },
            required: p.need == Need::Required,
            attached: error.is_none(),
            error,
            role: p.role,
            standby: standby.is_some(),
            verified_insns,
            xlated_insns,
            fallback,
        });
    }
    Ok(Loaded { ebpf, programs, kernel_problems: resolved.kernel_problems })
}

/// Whether every offset the socket walk reads resolved.
fn adoption_fields_known(k: &KernelOffsets) -> bool {
    socket_fields_known(k)
        && [
            k.skc_state,
            k.sk_protocol,
            k.file_f_inode,
            k.inode_i_mode,
            k.file_private_data,
            k.socket_sk,
        ]
        .iter()
        .all(|&o| o != KOFF_UNKNOWN)
}

/// The tracepoint a program hooks (its BTF variant hooks the same one).
fn tracepoint_name(p: &Program) -> &'static str {
    match p.hook {
        Hook::Tracepoint { name, .. } | Hook::RawTracepoint { name, .. } => name,
        _ => p.name,
    }
}

/// The socket fields the BTF tracepoints read from a `struct sock` (the
/// classic tracepoints read them from their records), `inet_sport` included:
/// without it a connect closed in SYN_SENT would have no source port.
fn socket_fields_known(k: &KernelOffsets) -> bool {
    [
        k.skc_family,
        k.skc_num,
        k.skc_dport,
        k.skc_daddr,
        k.skc_rcv_saddr,
        k.sk_protocol,
        k.inet_sport,
    ]
    .iter()
    .all(|&o| o != KOFF_UNKNOWN)
}

/// cgroup sock_addr programs loaded on this host (connect hooks of
/// socket-level load balancers such as Cilium's rewrite the destination
/// before the socket sees it). We load none.
fn socket_lb_programs() -> usize {
    /// `enum bpf_prog_type` in the kernel's uapi (stable ABI).
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.program_type() as u32 == BPF_PROG_TYPE_CGROUP_SOCK_ADDR)
        .count()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rl = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads one rlimit through a valid pointer to a local.
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
    fn privilege_error_says_what_to_do() {
        assert_eq!(
            LoadError::Privilege(vec!["CAP_BPF", "CAP_PERFMON"]).to_string(),
            "missing privilege: CAP_BPF, CAP_PERFMON (run as root or grant them)"
        );
    }
}
