//! Optional kprobe on `__nf_conntrack_confirm(struct sk_buff *skb)`: the
//! moment a new conntrack entry is inserted, after every NAT hook of its
//! first packet has run, so both tuples already say what NAT did. Runs only
//! where kprobes exist and BTF gave every offset (the agent checks both);
//! ctnetlink stays the NAT source everywhere, this is a second, in-kernel
//! view of the same entries.
//!
//! The entry is `skb->_nfct & NFCT_PTRMASK`; the reply tuple is
//! `tuplehash[1]`, one element after the original.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::kprobe, programs::ProbeContext};
use egress_common::{
    ConntrackOffsets, EVENT_NAT_MAPPING, EventHeader, IPPROTO_TCP, NatMapping, STAT_READ_ERRORS,
    Tuple,
};

use crate::{
    config,
    emit::emit,
    maps::{EVENTS, count},
    sock::kread,
};

/// `_nfct` keeps `enum ip_conntrack_info` in its low 3 bits.
const NFCT_PTRMASK: u64 = !7;

#[kprobe]
pub fn conntrack_confirm(ctx: ProbeContext) -> u32 {
    let _ = try_confirm(&ctx);
    0
}

/// A read the entry must give; a failure is counted, never silent.
#[inline(always)]
fn must<T>(v: Option<T>) -> Result<T, i64> {
    v.ok_or_else(|| {
        count(STAT_READ_ERRORS);
        -14
    })
}

fn try_confirm(ctx: &ProbeContext) -> Result<(), i64> {
    let o: ConntrackOffsets = config!(conntrack);
    let skb: u64 = must(ctx.arg(0))?;
    let ct = must(kread::<u64>(skb, o.skb_nfct))? & NFCT_PTRMASK;
    if ct == 0 {
        return Ok(()); // untracked packet
    }
    let original = ct + o.ct_tuple as u64;
    if u16::from(must(kread::<u8>(original, o.dst_protonum))?) != IPPROTO_TCP {
        return Ok(());
    }
    let netns = kread::<u64>(ct, o.ct_net)
        .and_then(|net| kread::<u32>(net, config!(kernel.net_ns_inum)))
        .unwrap_or(0);
    let reply = original + o.tuple_hash_size as u64;
    emit(&EVENTS, EVENT_NAT_MAPPING, |ev: &mut NatMapping| {
        ev.hdr = EventHeader {
            kind: EVENT_NAT_MAPPING,
            size: size_of::<NatMapping>() as u32,
            // SAFETY: a helper without arguments.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        };
        ev.netns = netns;
        read_tuple(original, &o, &mut ev.original)?;
        read_tuple(reply, &o, &mut ev.reply)
    });
    Ok(())
}

/// One `struct nf_conntrack_tuple` at `t`; ports to host byte order.
#[inline(always)]
fn read_tuple(t: u64, o: &ConntrackOffsets, out: &mut Tuple) -> Result<(), i64> {
    let miss = || -14;
    out.family = kread::<u16>(t, o.src_l3num).ok_or_else(miss)?;
    out.sport = u16::from_be(kread::<u16>(t, o.src_port).ok_or_else(miss)?);
    out.dport = u16::from_be(kread::<u16>(t, o.dst_port).ok_or_else(miss)?);
    out.saddr = kread::<[u8; 16]>(t, o.src_u3).ok_or_else(miss)?;
    out.daddr = kread::<[u8; 16]>(t, o.dst_u3).ok_or_else(miss)?;
    Ok(())
}
