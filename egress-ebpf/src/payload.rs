//! `cgroup_skb` egress/ingress on the cgroup v2 root: the first payload
//! bytes of flows to proxy ports, once per direction (the CONNECT request
//! line out, the proxy's status line in). Fail-open: every packet passes,
//! whatever happens here. DNS messages (UDP and TCP) are captured here too
//! (see `dns.rs`): only one program per direction may sit on the root.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{
    AF_INET, AF_INET6, DIR_EGRESS, DIR_INGRESS, EVENT_PAYLOAD, EventHeader, FLOW_FLAG_REQ_SEEN,
    FLOW_FLAG_RESP_SEEN, MAX_PROXY_PORTS, PAYLOAD_BYTES, PayloadEvent, TupleKey,
};

use crate::{
    config, dns,
    emit::emit,
    maps::{FLOWS, PROXY_FLOWS},
};

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[inline(always)]
pub fn is_proxy_port(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    let ports: [u16; MAX_PROXY_PORTS] = config!(proxy_ports);
    let mut i = 0;
    while i < MAX_PROXY_PORTS {
        if ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

#[cgroup_skb]
pub fn payload_egress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb]
pub fn payload_ingress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, DIR_INGRESS);
    1
}

fn capture(ctx: &SkBuffContext, dir: u32) -> Result<(), i64> {
    // SAFETY: the context pointer is the kernel's __sk_buff.
    let skb = unsafe { &*(ctx.skb.skb as *const __sk_buff) };
    // The be16 ethertype sits in the low half of the u32 field.
    let proto = u32::from(u16::from_be(skb.protocol as u16));
    let mut key = TupleKey::default();
    let (l4, src_addr_off, dst_addr_off, alen, ipproto) = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0)?;
        key.family = AF_INET;
        (((vihl & 0x0f) as usize) * 4, 12usize, 16usize, 4usize, ctx.load::<u8>(9)?)
    } else if proto == ETH_P_IPV6 {
        key.family = AF_INET6;
        (40usize, 8usize, 24usize, 16usize, ctx.load::<u8>(6)?)
    } else {
        return Ok(());
    };
    if ipproto != IPPROTO_TCP && ipproto != IPPROTO_UDP {
        return Ok(());
    }
    let sport = u16::from_be(ctx.load::<u16>(l4)?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2)?);
    let (lport, rport) = if dir == DIR_EGRESS { (sport, dport) } else { (dport, sport) };
    let dns = dns::is_dns(dir, sport, dport);
    if ipproto == IPPROTO_UDP && !dns {
        return Ok(());
    }
    if !dns && !is_proxy_port(rport) {
        return Ok(());
    }
    key.lport = lport;
    key.rport = rport;
    let (l_off, r_off) =
        if dir == DIR_EGRESS { (src_addr_off, dst_addr_off) } else { (dst_addr_off, src_addr_off) };
    if alen == 4 {
        let l: [u8; 4] = ctx.load(l_off)?;
        let r: [u8; 4] = ctx.load(r_off)?;
        key.laddr[..4].copy_from_slice(&l);
        key.raddr[..4].copy_from_slice(&r);
    } else {
        key.laddr = ctx.load(l_off)?;
        key.raddr = ctx.load(r_off)?;
    }
    let len = skb.len as usize;
    if ipproto == IPPROTO_UDP {
        dns::capture(ctx, dir, u32::from(IPPROTO_UDP), &key, l4 + 8, len);
        return Ok(());
    }
    let doff: u8 = ctx.load(l4 + 12)?;
    let payload = l4 + ((doff >> 4) as usize) * 4;
    if dns {
        dns::capture(ctx, dir, u32::from(IPPROTO_TCP), &key, payload, len);
        return Ok(());
    }
    if len <= payload {
        return Ok(()); // no payload: SYN, ACK, FIN
    }
    let Some(skaddr) = PROXY_FLOWS.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: valid map value pointers.
    let skaddr = unsafe { *skaddr };
    let Some(state) = FLOWS.get_ptr_mut(skaddr) else {
        return Ok(());
    };
    let flag = if dir == DIR_EGRESS { FLOW_FLAG_REQ_SEEN } else { FLOW_FLAG_RESP_SEEN };
    // SAFETY: valid map value pointer; the flags are this program's alone.
    let st = unsafe { &mut *state };
    if st.flags & flag != 0 {
        return Ok(());
    }
    st.flags |= flag;
    let start_ns = st.start_ns;
    let avail = len - payload;
    let n = if avail > PAYLOAD_BYTES { PAYLOAD_BYTES } else { avail };
    let skb_ptr = ctx.skb.skb;
    emit(EVENT_PAYLOAD, |ev: &mut PayloadEvent| {
        ev.hdr = EventHeader {
            kind: EVENT_PAYLOAD,
            size: size_of::<PayloadEvent>() as u32,
            // SAFETY: a helper without arguments.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        };
        ev.skaddr = skaddr;
        ev.start_ns = start_ns;
        ev.direction = dir;
        // The verifier must see 1 ≤ n ≤ PAYLOAD_BYTES on the very register
        // passed to the helper. Checking n itself compiles to a range check
        // on a copy (n - 1), whose bounds verifiers before ~6.8 do not carry
        // back to n (rejected on 5.10 and 6.1): so check m = n - 1, opaque to
        // the compiler, with one unsigned compare and pass m + 1.
        let m = core::hint::black_box(n.wrapping_sub(1));
        if m >= PAYLOAD_BYTES {
            return Err(-1);
        }
        let n = m + 1;
        // SAFETY: n is in 1..=PAYLOAD_BYTES and the destination holds PAYLOAD_BYTES.
        let rc = unsafe {
            bpf_skb_load_bytes(
                skb_ptr.cast(),
                payload as u32,
                ev.data.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        ev.len = n as u32;
        Ok(())
    });
    Ok(())
}
