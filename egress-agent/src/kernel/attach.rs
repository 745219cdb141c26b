//! Load and attach one program by its hook. Failures are typed; their text
//! is what `check` and the logs say about the program.
use std::path::Path;

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockopt, Iter,
        KProbe, ProgramError, RawTracePoint, TracePoint,
    },
};

use super::programs::{Direction, Hook, Program};
use crate::errors::Chain;

/// Why one program did not load or attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} missing from the object")]
    Missing(&'static str),
    #[error("{0}")]
    WrongType(ProgramError),
    /// The verifier's log is long: its last lines, where the reason is.
    #[error("verifier/load: {0}")]
    Load(String),
    #[error("opening {}: {error}", path.display())]
    Open { path: std::path::PathBuf, error: std::io::Error },
    #[error("attach to {}: {error} (multi: {multi})", path.display())]
    Cgroup { path: std::path::PathBuf, error: String, multi: String },
    #[error("attach to {function}: {error}")]
    Kprobe { function: &'static str, error: String },
    #[error("attach: {0}")]
    Tracepoint(String),
    #[error("no cgroup v2 hierarchy to attach to")]
    NoCgroup,
}

/// An aya error with its sources on one line; verifier logs cut to their
/// last lines, where the reason is.
fn summary(e: &(dyn std::error::Error + 'static)) -> String {
    let s = Chain(e).to_string();
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() > 6 { lines[lines.len() - 6..].join(" | ") } else { s.replace('\n', " | ") }
}

fn load_error(e: &ProgramError) -> AttachError {
    AttachError::Load(summary(e))
}

/// Load (verify) a program without attaching it.
pub fn load(ebpf: &mut Ebpf, p: &Program) -> Result<(), AttachError> {
    let prog = ebpf.program_mut(p.name).ok_or(AttachError::Missing(p.name))?;
    match p.hook {
        Hook::RawTracepoint { .. } => {
            <&mut RawTracePoint>::try_from(prog).map_err(AttachError::WrongType)?.load()
        }
        Hook::CgroupSockopt => {
            <&mut CgroupSockopt>::try_from(prog).map_err(AttachError::WrongType)?.load()
        }
        Hook::CgroupSkb(_) => {
            <&mut CgroupSkb>::try_from(prog).map_err(AttachError::WrongType)?.load()
        }
        Hook::Kprobe { .. } => {
            <&mut KProbe>::try_from(prog).map_err(AttachError::WrongType)?.load()
        }
        // Typed by BTF: `load_iter`.
        Hook::Iter { .. } => return Err(AttachError::Load("an iterator needs BTF".into())),
        Hook::Tracepoint { .. } | Hook::LoadOnly => {
            <&mut TracePoint>::try_from(prog).map_err(AttachError::WrongType)?.load()
        }
    }
    .map_err(|e| load_error(&e))
}

/// Load and attach a program; cgroup hooks go on `cgroup_root`, shared with
/// other programs where the kernel allows it.
pub fn attach(ebpf: &mut Ebpf, p: &Program, cgroup_root: Option<&Path>) -> Result<(), AttachError> {
    let cgroup_root = match p.hook {
        Hook::CgroupSockopt | Hook::CgroupSkb(_) => Some(cgroup_root.ok_or(AttachError::NoCgroup)?),
        _ => None,
    };
    load(ebpf, p)?;
    let prog = ebpf.program_mut(p.name).ok_or(AttachError::Missing(p.name))?;
    let tracepoint = |e: ProgramError| AttachError::Tracepoint(summary(&e));
    match p.hook {
        Hook::Tracepoint { category, name } => {
            <&mut TracePoint>::try_from(prog)
                .map_err(AttachError::WrongType)?
                .attach(category, name)
                .map_err(tracepoint)?;
        }
        Hook::RawTracepoint { name, .. } => {
            <&mut RawTracePoint>::try_from(prog)
                .map_err(AttachError::WrongType)?
                .attach(name)
                .map_err(tracepoint)?;
        }
        Hook::Kprobe { function } => {
            let prog = <&mut KProbe>::try_from(prog).map_err(AttachError::WrongType)?;
            prog.attach(function, 0)
                .map_err(|e| AttachError::Kprobe { function, error: summary(&e) })?;
        }
        Hook::CgroupSockopt | Hook::CgroupSkb(_) => {
            let Some(root) = cgroup_root else { return Err(AttachError::NoCgroup) };
            let cg = std::fs::File::open(root)
                .map_err(|error| AttachError::Open { path: root.to_path_buf(), error })?;
            let cgroup = |multi: ProgramError, single: ProgramError| AttachError::Cgroup {
                path: root.to_path_buf(),
                error: summary(&single),
                multi: summary(&multi),
            };
            if let Hook::CgroupSkb(dir) = p.hook {
                let way = match dir {
                    Direction::Egress => CgroupSkbAttachType::Egress,
                    Direction::Ingress => CgroupSkbAttachType::Ingress,
                };
                let prog = <&mut CgroupSkb>::try_from(prog).map_err(AttachError::WrongType)?;
                if let Err(multi) = prog.attach(&cg, way, CgroupAttachMode::AllowMultiple) {
                    prog.attach(&cg, way, CgroupAttachMode::Single)
                        .map_err(|single| cgroup(multi, single))?;
                }
            } else {
                let prog = <&mut CgroupSockopt>::try_from(prog).map_err(AttachError::WrongType)?;
                if let Err(multi) = prog.attach(&cg, CgroupAttachMode::AllowMultiple) {
                    prog.attach(&cg, CgroupAttachMode::Single)
                        .map_err(|single| cgroup(multi, single))?;
                }
            }
        }
        Hook::LoadOnly | Hook::Iter { .. } => {}
    }
    Ok(())
}

/// Load (verify) the iterator program `name` over `target` objects.
pub fn load_iter(
    ebpf: &mut Ebpf,
    name: &'static str,
    target: &str,
    btf: &Btf,
) -> Result<(), AttachError> {
    let prog = ebpf.program_mut(name).ok_or(AttachError::Missing(name))?;
    let prog = <&mut Iter>::try_from(prog).map_err(AttachError::WrongType)?;
    prog.load(target, btf).map_err(|e| load_error(&e))
}

/// Load and attach the BTF tracepoint program `object_name` to `tracepoint`
/// (its arguments typed by the kernel's BTF).
pub fn attach_btf(
    ebpf: &mut Ebpf,
    object_name: &'static str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), AttachError> {
    let prog = ebpf.program_mut(object_name).ok_or(AttachError::Missing(object_name))?;
    let prog = <&mut BtfTracePoint>::try_from(prog).map_err(AttachError::WrongType)?;
    prog.load(tracepoint, btf).map_err(|e| load_error(&e))?;
    prog.attach().map_err(|e| AttachError::Tracepoint(summary(&e)))?;
    Ok(())
}
