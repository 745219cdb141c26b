//! `cgroup_skb` egress/ingress on the cgroup v2 root: the payload bytes of
//! flows to capture ports (proxy hops), with their stream offsets, so the
//! agent can reassemble the CONNECT request and the proxy's whole answer
//! (its status line, headers and — for an error — the start of its body)
//! however the proxy cut it into segments. DNS messages are captured here
//! too (`dns.rs`): only one program per direction may sit on the root.
//! Flows to TLS ports (`Config::tls_ports`) are captured the same way with a
//! tighter bound on the answer side: the request's first KiB (the
//! ClientHello) and the first chunk the server sent (its first record).
//! Fail-open: every packet passes, whatever happens here.
//!
//! Cost: most packets belong to neither a capture port, a TLS port nor DNS,
//! and leave after two context loads (the socket's ports), before any
//! parsing. A TLS port's packets cost two map lookups each, and at most
//! three capture events per flow.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_ktime_get_ns, bpf_skb_load_bytes,
        generated::{bpf_sk_fullsock, bpf_skb_cgroup_id, bpf_tcp_sock},
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use egress_common::{
    AF_INET, AF_INET6, CAPTURE_CHUNKS_PER_PACKET, CAPTURE_RX_ERR_BYTES, CAPTURE_RX_OK_BYTES,
    CAPTURE_TLS_RX_BYTES, CAPTURE_TX_BYTES, DIR_EGRESS, DIR_INGRESS, EVENT_PAYLOAD, EventHeader,
    FLOW_FLAG_ACCEPTED, FLOW_FLAG_CAPTURE, FLOW_FLAG_RX_DONE, FLOW_FLAG_RX_OK, FLOW_FLAG_TLS,
    FLOW_FLAG_TX_DONE, FlowState, PAYLOAD_BYTES, PayloadEvent, Tuple, TupleKey,
};

use crate::{
    config, dns,
    emit::emit_unzeroed,
    flow::{FirstPacket, take_up_accepted, take_up_connect},
    flow_table::state,
    maps::{CAPTURE, PROXY_FLOWS},
    net::{is_capture_port, is_tls_port},
    sock,
};

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Past the capture bound by this much, a direction is done for good (a
/// little later than the bound itself: a segment missing below the bound
/// may still arrive after later ones).
const DONE_SLACK: u32 = 65_536;

/// Chunks one packet may give per direction: the request side is captured
/// up to 1 KiB (two chunks), the answer side up to 4 KiB. A smaller bound
/// also keeps the unrolled loop within older verifiers' jump history
/// (Linux 5.10 and 6.1 refuse eight iterations in the egress program).
const TX_CHUNKS: u32 = CAPTURE_TX_BYTES / PAYLOAD_BYTES as u32;
const RX_CHUNKS: u32 = CAPTURE_CHUNKS_PER_PACKET;

#[cgroup_skb]
pub fn payload_egress(ctx: SkBuffContext) -> i32 {
    let _ = capture::<TX_CHUNKS>(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb]
pub fn payload_ingress(ctx: SkBuffContext) -> i32 {
    let _ = capture::<RX_CHUNKS>(&ctx, DIR_INGRESS);
    1
}

/// `TCP_LISTEN` of `include/net/tcp_states.h`.
const TCP_LISTEN: u32 = 10;

/// Whether the packet's socket is a TCP listener (a UDP socket never is).
#[inline(always)]
fn listening(skb: &__sk_buff) -> bool {
    // SAFETY: reading the context's socket pointer (a union of one field).
    let sk = unsafe { skb.__bindgen_anon_2.sk };
    // SAFETY: the kernel gives a socket or null, checked first.
    !sk.is_null() && unsafe { (*sk).state } == TCP_LISTEN
}

/// The state of the packet's flow, through the tuple index.
#[inline(always)]
fn flow_of(key: &TupleKey) -> Option<(u64, *mut FlowState)> {
    // SAFETY: valid map value pointer.
    let sk = unsafe { *PROXY_FLOWS.get_ptr(key)? };
    Some((sk, state(sk)?))
}

/// TCP states past the handshake in which a socket still carries data
/// (`include/net/tcp_states.h`): ESTABLISHED, FIN_WAIT1, FIN_WAIT2,
/// CLOSE_WAIT, LAST_ACK, CLOSING.
#[inline(always)]
fn past_handshake(state: u32) -> bool {
    matches!(state, 1 | 4 | 5 | 8 | 9 | 11)
}

/// A payload packet of a capture (or TLS) port's flow that the tuple index
/// does not know: the set_state program may have been skipped for its
/// ESTABLISHED (see `set_state.rs`). Its socket, past the handshake, is
/// then taken up here, the first payload packet being the first moment
/// the flow is seen again with its stream positions still at the
/// handshake's end: an active open tracked since its connect, or a
/// connection accepted on a capture port (the request comes in first).
/// Costs a table lookup per payload packet of such a flow that is not
/// captured (one open before the agent started, adopted).
#[inline(always)]
fn take_up(skb: &__sk_buff, key: &TupleKey, dir: u32) -> Option<(u64, *mut FlowState)> {
    let accepted = is_capture_port(key.lport);
    if accepted && dir != DIR_INGRESS
        || !accepted && !is_capture_port(key.rport) && !is_tls_port(key.rport)
    {
        return None;
    }
    // SAFETY: reading the context's socket pointer (a union of one field).
    let sk = unsafe { skb.__bindgen_anon_2.sk };
    // SAFETY: the kernel gives a socket or null, checked first.
    if sk.is_null() || !past_handshake(unsafe { (*sk).state }) {
        return None;
    }
    let addr = sock::scalar_or_none(sk.cast())?;
    // SAFETY: helpers taking the context's socket, checked for null.
    let tp = unsafe {
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return None;
        }
        bpf_tcp_sock(full)
    };
    if tp.is_null() {
        return None;
    }
    // SAFETY: a non-null `bpf_tcp_sock` from the helper.
    let (bases, bytes) =
        unsafe { (((*tp).snd_una, (*tp).rcv_nxt), ((*tp).bytes_received, (*tp).bytes_acked)) };
    let first = FirstPacket {
        sk: addr,
        tuple: Tuple {
            family: key.family,
            sport: key.lport,
            dport: key.rport,
            _pad: 0,
            saddr: key.laddr,
            daddr: key.raddr,
        },
        bases,
        bytes,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let st = if accepted {
        let skb: *const __sk_buff = skb;
        // SAFETY: the context's own skb.
        let cgroup_id = unsafe { bpf_skb_cgroup_id(skb.cast_mut()) };
        take_up_accepted(&first, cgroup_id, now)?
    } else {
        take_up_connect(&first, now)?
    };
    Some((addr, st))
}

#[inline(always)]
fn capture<const CHUNKS: u32>(ctx: &SkBuffContext, dir: u32) -> Result<(), i64> {
    // SAFETY: the context pointer is the kernel's __sk_buff.
    let skb = unsafe { &*(ctx.skb.skb as *const __sk_buff) };
    // Fast exit: a connected socket's remote port (network order, high half)
    // says whether this packet can matter. Unconnected sockets (remote port
    // 0: a UDP resolver that does not connect()) are parsed.
    // A hop's accepted connections have the capture port locally.
    let rport = u16::from_be((skb.remote_port >> 16) as u16);
    let dns_port: u16 = config!(dns_port);
    if rport != 0
        && !is_capture_port(rport)
        && !is_tls_port(rport)
        && (dns_port == 0 || rport != dns_port)
        && !is_capture_port(skb.local_port as u16)
    {
        return Ok(());
    }
    // A listener's packets (SYN in, SYN-ACK out, the handshake's ACK in)
    // have no remote port either: they matter only on a capture port (a
    // hop's) or on DNS. Ruled out from the socket, before parsing.
    if rport == 0
        && listening(skb)
        && !is_capture_port(skb.local_port as u16)
        && (dns_port == 0 || skb.local_port as u16 != dns_port)
    {
        return Ok(());
    }
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
    let is_dns = dns::is_dns(dir, sport, dport);
    if ipproto == IPPROTO_UDP && !is_dns {
        return Ok(());
    }
    if !is_dns && !is_capture_port(rport) && !is_capture_port(lport) && !is_tls_port(rport) {
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
    if is_dns {
        dns::capture(ctx, dir, u32::from(IPPROTO_TCP), &key, payload, len);
        return Ok(());
    }
    if len <= payload {
        return Ok(()); // no payload: SYN, ACK, FIN
    }
    let Some((skaddr, st)) = flow_of(&key).or_else(|| take_up(skb, &key, dir)) else {
        return Ok(());
    };
    // SAFETY: valid state pointer (its fields are plain integers).
    let st = unsafe { &mut *st };
    // The answer comes in on an active open, goes out on an accepted one.
    let answer_dir = if st.flags & FLOW_FLAG_ACCEPTED != 0 { DIR_EGRESS } else { DIR_INGRESS };
    let (done_flag, base) = if dir == DIR_EGRESS {
        (FLOW_FLAG_TX_DONE, st.tx_base)
    } else {
        (FLOW_FLAG_RX_DONE, st.rx_base)
    };
    let limit = if dir != answer_dir {
        CAPTURE_TX_BYTES
    } else if st.flags & FLOW_FLAG_TLS != 0 {
        CAPTURE_TLS_RX_BYTES
    } else if st.flags & FLOW_FLAG_RX_OK != 0 {
        CAPTURE_RX_OK_BYTES
    } else {
        CAPTURE_RX_ERR_BYTES
    };
    if st.flags & FLOW_FLAG_CAPTURE == 0 || st.flags & done_flag != 0 {
        return Ok(());
    }
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4)?);
    let offset = seq.wrapping_sub(base);
    if offset >= limit {
        if offset >= limit + DONE_SLACK && offset < u32::MAX / 2 {
            st.flags |= done_flag;
        }
        return Ok(());
    }
    let avail = len - payload;
    let start_ns = st.start_ns;
    let skb_ptr = ctx.skb.skb;
    let mut i = 0u32;
    while i < CHUNKS {
        let at = i as usize * PAYLOAD_BYTES;
        let chunk_off = offset + at as u32;
        if at >= avail || chunk_off >= limit {
            break;
        }
        let n = if avail - at > PAYLOAD_BYTES { PAYLOAD_BYTES } else { avail - at };
        let from = (payload + at) as u32;
        let mut ok_status = false;
        emit_unzeroed(&CAPTURE, EVENT_PAYLOAD, |ev: &mut PayloadEvent| {
            ev.hdr = EventHeader {
                kind: EVENT_PAYLOAD,
                size: size_of::<PayloadEvent>() as u32,
                // SAFETY: helper without preconditions.
                ts_ns: unsafe { bpf_ktime_get_ns() },
            };
            ev.skaddr = skaddr;
            ev.start_ns = start_ns;
            ev.direction = dir;
            ev.offset = chunk_off;
            ev._pad = 0;
            ev.len = 0;
            // The verifier must see 1 ≤ n ≤ PAYLOAD_BYTES on the very
            // register passed to the helper. Checking n itself compiles to
            // a range check on a copy (n - 1), whose bounds verifiers before
            // ~6.8 do not carry back to n (rejected on 5.10 and 6.1): so
            // check m = n - 1, opaque to the compiler, with one unsigned
            // compare and pass m + 1.
            let m = core::hint::black_box(n.wrapping_sub(1));
            if m >= PAYLOAD_BYTES {
                return Err(-1);
            }
            let n = m + 1;
            // SAFETY: n is in 1..=PAYLOAD_BYTES and the destination holds PAYLOAD_BYTES.
            let rc = unsafe {
                bpf_skb_load_bytes(skb_ptr.cast(), from, ev.data.as_mut_ptr().cast(), n as u32)
            };
            if rc != 0 {
                return Err(rc);
            }
            ev.len = n as u32;
            // "HTTP/1.1 2xx": a tunnel that opened needs only its header block.
            ok_status = chunk_off == 0 && n > 9 && ev.data[9] == b'2';
            Ok(())
        });
        if ok_status && dir == answer_dir {
            st.flags |= FLOW_FLAG_RX_OK;
        }
        i += 1;
    }
    Ok(())
}
