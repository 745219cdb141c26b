//! DNS messages of local sockets, from the same `cgroup_skb` programs as the
//! proxy payloads (one program per direction on the cgroup root): a query is
//! an egress packet to the DNS port, a response an ingress packet from it.
//! The first `DNS_BYTES` of the message go to the capture ring; parsing is
//! the agent's. Each cgroup has a budget (token bucket, `Control::dns_rate`
//! per second up to `dns_burst`): one tenant's flood is cut and counted,
//! everyone else's lookups still go out. Fail-open: the caller passes every
//! packet whatever happens here.
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use egress_common::{
    DIR_EGRESS, DNS_BYTES, DnsEvent, EVENT_DNS, EventHeader, STAT_DNS_RATE_LIMITED, TokenBucket,
    TupleKey,
};

use crate::{
    config,
    emit::emit_unzeroed,
    maps::{CAPTURE, DNS_BUCKETS, control, count},
};

/// True when a packet with these ports in direction `dir` is a DNS message
/// of a local client socket (servers on this host are not followed).
#[inline(always)]
pub fn is_dns(dir: u32, sport: u16, dport: u16) -> bool {
    let port: u16 = config!(dns_port);
    port != 0 && if dir == DIR_EGRESS { dport == port } else { sport == port }
}

/// Take one token of `cgroup`'s budget; false when it is spent.
#[inline(always)]
fn within_budget(cgroup: u64, now: u64) -> bool {
    let ctl = control();
    if ctl.dns_rate == 0 {
        return true;
    }
    const SCALE: u64 = 1_000_000_000;
    let burst = u64::from(ctl.dns_burst.max(1)) * SCALE;
    let Some(b) = DNS_BUCKETS.get_ptr_mut(cgroup) else {
        let _ = DNS_BUCKETS.insert(cgroup, TokenBucket { tokens: burst - SCALE, last_ns: now }, 0);
        return true;
    };
    // SAFETY: valid map value pointer; a race between CPUs at worst lets a
    // message more or less through.
    let b = unsafe { &mut *b };
    let elapsed = now.saturating_sub(b.last_ns).min(3_600 * SCALE);
    let tokens = (b.tokens + elapsed * u64::from(ctl.dns_rate)).min(burst);
    b.last_ns = now;
    if tokens < SCALE {
        b.tokens = tokens;
        return false;
    }
    b.tokens = tokens - SCALE;
    true
}

/// Emit the message that starts at `payload` (an offset from the network
/// header) of a packet of `len` bytes.
#[inline(always)]
pub fn capture(
    ctx: &SkBuffContext,
    dir: u32,
    proto: u32,
    key: &TupleKey,
    payload: usize,
    len: usize,
) {
    if len <= payload {
        return; // no payload: a TCP handshake or ACK
    }
    let skb_ptr = ctx.skb.skb;
    // SAFETY: helper on the program's own context pointer.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb_ptr) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_budget(cgroup, now) {
        count(STAT_DNS_RATE_LIMITED);
        return;
    }
    let avail = len - payload;
    let n = if avail > DNS_BYTES { DNS_BYTES } else { avail };
    let key = *key;
    emit_unzeroed(&CAPTURE, EVENT_DNS, |ev: &mut DnsEvent| {
        ev.hdr = EventHeader { kind: EVENT_DNS, size: size_of::<DnsEvent>() as u32, ts_ns: now };
        // SAFETY: helper on the program's own context pointer.
        ev.cookie = unsafe { bpf_get_socket_cookie(skb_ptr.cast()) };
        ev.cgroup_id = cgroup;
        ev.direction = dir;
        ev.proto = proto;
        ev.key = key;
        ev.len = avail as u32;
        ev.caplen = 0;
        // As in payload.rs: verifiers before 6.12 do not carry a bound
        // checked on a copy back to n, so check m = n - 1 (opaque to the
        // compiler) with one unsigned compare and pass m + 1.
        let m = core::hint::black_box(n.wrapping_sub(1));
        if m >= DNS_BYTES {
            return Err(-1);
        }
        let n = m + 1;
        // SAFETY: n is in 1..=DNS_BYTES and the destination holds DNS_BYTES.
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
        ev.caplen = n as u32;
        Ok(())
    });
}
