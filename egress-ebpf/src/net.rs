//! Addresses: IPv4-mapped IPv6 folding and the tuple key packets carry.
use egress_common::{AF_INET, AF_INET6, TupleKey};

#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

/// The key of a connection, IPv4-mapped IPv6 folded to IPv4 (packets of a
/// dual-stack socket talking IPv4 are IPv4 on the wire).
#[inline(always)]
pub fn tuple_key(
    family: u16,
    lport: u16,
    rport: u16,
    laddr: &[u8; 16],
    raddr: &[u8; 16],
) -> TupleKey {
    let mut k = TupleKey { family, lport, rport, _pad: 0, laddr: *laddr, raddr: *raddr };
    if family == AF_INET6 && is_v4_mapped(laddr) && is_v4_mapped(raddr) {
        k.family = AF_INET;
        k.laddr = [0; 16];
        k.raddr = [0; 16];
        k.laddr[..4].copy_from_slice(&laddr[12..16]);
        k.raddr[..4].copy_from_slice(&raddr[12..16]);
    }
    k
}

/// A remote port whose flows' ClientHello is read (`Config::tls_ports`).
#[inline(always)]
pub fn is_tls_port(port: u16) -> bool {
    let ports: [u16; egress_common::MAX_TLS_PORTS] = crate::config!(tls_ports);
    port != 0 && (ports[0] == port || ports[1] == port || ports[2] == port || ports[3] == port)
}

/// A remote port whose payloads are read (a proxy hop's).
#[inline(always)]
pub fn is_capture_port(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    let ports: [u16; egress_common::MAX_PROXY_PORTS] = crate::config!(proxy_ports);
    let mut i = 0;
    while i < egress_common::MAX_PROXY_PORTS {
        if ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}
