//! The decode stage: ring records → typed events. The length is checked
//! before the kind is trusted; unknown kinds and short records are errors,
//! never transmuted. Also the wire forms of addresses and names in events.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egress_common::{
    AF_INET, AF_INET6, ConnectArgs, DnsEvent, EVENT_DNS, EVENT_FLOW, EVENT_NAT_MAPPING,
    EVENT_PAYLOAD, EventHeader, FlowEvent, NatMapping, PHASE_CLOSED, PHASE_CONNECT_FAILED,
    PHASE_CONNECTED, PayloadEvent, Tuple,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("kind {kind}: header says {declared} bytes, expected {expected}, ring item has {len}")]
    BadSize { kind: u32, declared: u32, expected: usize, len: usize },
    #[error("flow event with unknown phase {0}")]
    BadPhase(u32),
}

impl DecodeError {
    /// Bounded label value for `egress_decode_errors_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Short(_) => "short",
            Self::UnknownKind(_) => "unknown_kind",
            Self::BadSize { .. } => "bad_size",
            Self::BadPhase(_) => "bad_phase",
        }
    }
}

/// One decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A flow at a point worth a record (its phase says which).
    Flow(Box<FlowEvent>),
    Payload(Box<PayloadEvent>),
    Dns(Box<DnsEvent>),
    /// From the optional conntrack kprobe.
    NatMapping(NatMapping),
}

impl Event {
    pub fn kind(&self) -> u32 {
        match self {
            Self::Flow(_) => EVENT_FLOW,
            Self::Payload(_) => EVENT_PAYLOAD,
            Self::Dns(_) => EVENT_DNS,
            Self::NatMapping(_) => EVENT_NAT_MAPPING,
        }
    }
}

/// Copy a `#[repr(C)]` record out of `bytes` after checking its size.
fn read<T: Copy>(bytes: &[u8], hdr: &EventHeader) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if hdr.size as usize != expected || bytes.len() < expected {
        return Err(DecodeError::BadSize {
            kind: hdr.kind,
            declared: hdr.size,
            expected,
            len: bytes.len(),
        });
    }
    // SAFETY: length checked above; T is a plain-old-data record for which
    // every bit pattern is valid; read_unaligned makes no alignment claim.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; the header is plain integers.
    let hdr: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok(match hdr.kind {
        EVENT_FLOW => {
            let f: FlowEvent = read(bytes, &hdr)?;
            if !matches!(f.phase, PHASE_CONNECTED | PHASE_CONNECT_FAILED | PHASE_CLOSED) {
                return Err(DecodeError::BadPhase(f.phase));
            }
            Event::Flow(Box::new(f))
        }
        EVENT_PAYLOAD => {
            let p: PayloadEvent = read(bytes, &hdr)?;
            if p.len as usize > p.data.len() || p.len == 0 {
                return Err(DecodeError::BadSize {
                    kind: hdr.kind,
                    declared: p.len,
                    expected: p.data.len(),
                    len: bytes.len(),
                });
            }
            Event::Payload(Box::new(p))
        }
        EVENT_DNS => {
            let d: DnsEvent = read(bytes, &hdr)?;
            if d.caplen as usize > d.data.len() {
                return Err(DecodeError::BadSize {
                    kind: hdr.kind,
                    declared: d.caplen,
                    expected: d.data.len(),
                    len: bytes.len(),
                });
            }
            Event::Dns(Box::new(d))
        }
        EVENT_NAT_MAPPING => Event::NatMapping(read(bytes, &hdr)?),
        k => return Err(DecodeError::UnknownKind(k)),
    })
}

/// An address from the wire, v4-mapped IPv6 shown as IPv4.
pub fn ip(family: u16, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

pub fn src(t: &Tuple) -> Option<SocketAddr> {
    ip(t.family, &t.saddr).map(|a| SocketAddr::new(a, t.sport))
}

pub fn dst(t: &Tuple) -> Option<SocketAddr> {
    ip(t.family, &t.daddr).map(|a| SocketAddr::new(a, t.dport))
}

pub fn intended(c: &ConnectArgs) -> Option<SocketAddr> {
    ip(c.family, &c.addr).map(|a| SocketAddr::new(a, c.port))
}

/// `comm` bytes up to the first NUL.
pub fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

#[cfg(test)]
pub(crate) fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: test helper over plain records: `v` is valid for size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(phase: u32) -> FlowEvent {
        let mut t = Tuple { family: AF_INET, dport: 443, ..Tuple::default() };
        t.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        FlowEvent {
            hdr: EventHeader { kind: EVENT_FLOW, size: size_of::<FlowEvent>() as u32, ts_ns: 7 },
            skaddr: 0xffff_0000_1234,
            pid: 42,
            phase,
            tuple: t,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn decodes_each_kind() {
        for phase in [PHASE_CONNECTED, PHASE_CONNECT_FAILED, PHASE_CLOSED] {
            let f = flow(phase);
            assert_eq!(decode(&bytes_of(&f)), Ok(Event::Flow(Box::new(f))));
        }
        assert_eq!(decode(&bytes_of(&flow(9))), Err(DecodeError::BadPhase(9)));
        let mut p = PayloadEvent {
            hdr: EventHeader {
                kind: EVENT_PAYLOAD,
                size: size_of::<PayloadEvent>() as u32,
                ts_ns: 1,
            },
            len: 3,
            offset: 512,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&p)), Ok(Event::Payload(Box::new(p))));
        p.len = 10_000;
        assert!(
            matches!(decode(&bytes_of(&p)), Err(DecodeError::BadSize { .. })),
            "payload length beyond its buffer"
        );
        p.len = 0;
        assert!(matches!(decode(&bytes_of(&p)), Err(DecodeError::BadSize { .. })), "empty chunk");
        let mut d = DnsEvent {
            hdr: EventHeader { kind: EVENT_DNS, size: size_of::<DnsEvent>() as u32, ts_ns: 1 },
            caplen: 30,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&d)), Ok(Event::Dns(Box::new(d))));
        d.caplen = 257;
        assert!(
            matches!(decode(&bytes_of(&d)), Err(DecodeError::BadSize { .. })),
            "capture length beyond its buffer"
        );
        let mut n = NatMapping {
            hdr: EventHeader {
                kind: EVENT_NAT_MAPPING,
                size: size_of::<NatMapping>() as u32,
                ts_ns: 1,
            },
            netns: 4026531840,
            ..Default::default()
        };
        n.original.dport = 80;
        assert_eq!(decode(&bytes_of(&n)), Ok(Event::NatMapping(n)));
        assert!(
            matches!(decode(&bytes_of(&n)[..64]), Err(DecodeError::BadSize { len: 64, .. })),
            "a short mapping"
        );
    }

    #[test]
    fn truncated_records_are_rejected() {
        let b = bytes_of(&flow(PHASE_CLOSED));
        assert_eq!(decode(&b[..8]), Err(DecodeError::Short(8)));
        assert!(matches!(decode(&b[..100]), Err(DecodeError::BadSize { len: 100, .. })));
    }

    #[test]
    fn lying_header_is_rejected() {
        let mut f = flow(PHASE_CLOSED);
        f.hdr.size = 16;
        assert!(matches!(decode(&bytes_of(&f)), Err(DecodeError::BadSize { declared: 16, .. })));
        // A header claiming a larger kind than the bytes hold.
        let n = NatMapping {
            hdr: EventHeader { kind: EVENT_FLOW, size: size_of::<FlowEvent>() as u32, ts_ns: 0 },
            ..NatMapping::default()
        };
        assert!(matches!(decode(&bytes_of(&n)), Err(DecodeError::BadSize { len: 104, .. })));
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let mut f = flow(PHASE_CLOSED);
        f.hdr.kind = 99;
        assert_eq!(decode(&bytes_of(&f)), Err(DecodeError::UnknownKind(99)));
        f.hdr.kind = 0;
        assert_eq!(decode(&bytes_of(&f)), Err(DecodeError::UnknownKind(0)));
    }

    #[test]
    fn addresses() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(ip(AF_INET6, &a), Some("192.0.2.1".parse().expect("ip")));
        a[10] = 0;
        assert!(matches!(ip(AF_INET6, &a), Some(IpAddr::V6(_))));
        assert_eq!(ip(99, &a), None);
        assert_eq!(comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm(b"abcdefghijklmnop"), "abcdefghijklmnop");
    }
}
