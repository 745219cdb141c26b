//! Adoption at start: the kernel walk of open files (`adopt_sockets`) puts
//! every established TCP socket a record could be about into the flow
//! table, so a restart leaves no blind spot. Two passes: listeners first
//! (an accepted connection is told by its port's listener), then the
//! adoption, whose output is one [`AdoptedSocket`] per socket adopted.
use std::io::Read as _;

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::Iter,
};
use egress_common::{ADOPT_PASS_ADOPT, ADOPT_PASS_LISTENERS, AdoptedSocket, FLOW_FLAG_ACCEPTED};

/// What the walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Active opens already established.
    pub egress: u64,
    /// A hop's connections accepted on a capture port.
    pub accepted: u64,
    /// Of both, those whose owner cgroup could not be read.
    pub owner_unknown: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("program adopt_sockets not loaded")]
    NotLoaded,
    #[error("map ADOPT_PASS missing from the object")]
    MapMissing,
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
    #[error("creating the iterator")]
    Program(#[from] aya::programs::ProgramError),
    #[error("creating the iterator")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("reading the iterator")]
    Read(#[from] std::io::Error),
}

/// Run the walk; `Err(NotLoaded)` where this kernel could not take it.
pub fn run(ebpf: &mut Ebpf) -> Result<Adopted, AdoptError> {
    set_pass(ebpf, ADOPT_PASS_LISTENERS)?;
    walk(ebpf)?;
    set_pass(ebpf, ADOPT_PASS_ADOPT)?;
    Ok(count(&walk(ebpf)?))
}

fn set_pass(ebpf: &mut Ebpf, pass: u32) -> Result<(), AdoptError> {
    let map = ebpf.map_mut("ADOPT_PASS").ok_or(AdoptError::MapMissing)?;
    let mut a: Array<&mut MapData, u32> = Array::try_from(map)?;
    a.set(0, pass, 0)?;
    Ok(())
}

/// One walk: what the program wrote.
fn walk(ebpf: &mut Ebpf) -> Result<Vec<u8>, AdoptError> {
    let prog = ebpf.program_mut("adopt_sockets").ok_or(AdoptError::NotLoaded)?;
    let prog: &mut Iter = prog.try_into()?;
    if prog.fd().is_err() {
        return Err(AdoptError::NotLoaded);
    }
    let id = prog.attach()?;
    let link = prog.take_link(id)?;
    let mut out = Vec::new();
    link.into_file()?.read_to_end(&mut out)?;
    Ok(out)
}

/// The adoption pass's output, counted.
fn count(out: &[u8]) -> Adopted {
    let mut a = Adopted::default();
    for rec in out.chunks_exact(size_of::<AdoptedSocket>()) {
        // SAFETY: AdoptedSocket is plain data of this size; unaligned read.
        let s: AdoptedSocket = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
        if s.flags & FLOW_FLAG_ACCEPTED != 0 {
            a.accepted += 1;
        } else {
            a.egress += 1;
        }
        if s.cgroup_id == 0 {
            a.owner_unknown += 1;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_counted_by_kind() {
        let rec =
            |flags: u32, cgroup_id: u64| AdoptedSocket { flags, cgroup_id, ..Default::default() };
        let recs = [rec(FLOW_FLAG_ACCEPTED, 7), rec(0, 0), rec(0, 9)];
        let mut out = Vec::new();
        for r in &recs {
            // SAFETY: plain data viewed as bytes.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    std::ptr::from_ref(r).cast::<u8>(),
                    size_of::<AdoptedSocket>(),
                )
            });
        }
        out.extend_from_slice(&[1, 2, 3]); // a torn tail is ignored
        assert_eq!(count(&out), Adopted { egress: 2, accepted: 1, owner_unknown: 1 });
    }
}
