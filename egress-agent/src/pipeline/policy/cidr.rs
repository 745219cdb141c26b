//! CIDRs of `ipBlock.cidr` / `ipBlock.except`, parsed the way the API server
//! accepts them (`netutils.ParseCIDRSloppy`, Go's `net.ParseCIDR` before 1.17):
//!
//! - IPv4 octets may carry leading zeros, read as DECIMAL (`010.0.0.0/8` is
//!   `10.0.0.0/8`): objects created before strict IP validation still hold them;
//! - host bits are masked off (`10.1.2.3/8` is `10.0.0.0/8`), as Go does;
//! - an IPv4-mapped IPv6 prefix of length ≥ 96 (`::ffff:10.0.0.0/104`) is the
//!   IPv4 prefix it maps (`10.0.0.0/8`), as Go's `IPNet.Contains` treats it.
//!
//! Addresses given to [`Cidr::contains`] must be canonical
//! ([`IpAddr::to_canonical`]): an IPv4-mapped IPv6 address is an IPv4 one.
use std::net::{IpAddr, Ipv6Addr};

/// A network prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }
}

fn mask6(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) }
}

/// Go's `dtoi` for an octet or a prefix length: decimal digits only, any
/// number of leading zeros; `None` when empty or above 999 (too big for either).
fn small_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = s.trim_start_matches('0');
    if significant.len() > 3 {
        return None;
    }
    Some(significant.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
}

fn parse_v4(s: &str) -> Option<u32> {
    let mut out = 0u32;
    let mut parts = 0;
    for part in s.split('.') {
        let octet = small_decimal(part).filter(|&o| o <= 255)?;
        out = (out << 8) | octet;
        parts += 1;
    }
    (parts == 4).then_some(out)
}

impl Cidr {
    /// Parses `addr/len`; the error says what is wrong.
    pub(crate) fn parse(s: &str) -> Result<Cidr, &'static str> {
        let (addr, len) = s.split_once('/').ok_or("not a CIDR: no '/<prefix length>'")?;
        let len = small_decimal(len).ok_or("prefix length is not a number")?;
        if addr.contains(':') {
            let ip: Ipv6Addr = addr.parse().map_err(|_| "not an IPv6 address")?;
            let len = u8::try_from(len)
                .ok()
                .filter(|&l| l <= 128)
                .ok_or("IPv6 prefix length above 128")?;
            let net = u128::from(ip) & mask6(len);
            if len >= 96
                && let Some(v4) = Ipv6Addr::from(net).to_ipv4_mapped()
            {
                return Ok(Cidr::V4 { net: u32::from(v4), len: len - 96 });
            }
            Ok(Cidr::V6 { net, len })
        } else {
            let ip = parse_v4(addr).ok_or("not an IPv4 address")?;
            let len =
                u8::try_from(len).ok().filter(|&l| l <= 32).ok_or("IPv4 prefix length above 32")?;
            Ok(Cidr::V4 { net: ip & mask4(len), len })
        }
    }

    /// Whether `ip` (canonical) is inside this prefix; never across families.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask4(len) == net,
            (Cidr::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask6(len) == net,
            _ => false,
        }
    }

    /// The API server's rule for `except`: same family, inside `self`, and a
    /// strictly longer prefix ("must be a strict subset of `cidr`").
    pub(crate) fn strictly_contains(&self, inner: &Cidr) -> bool {
        match (*self, *inner) {
            (Cidr::V4 { net, len }, Cidr::V4 { net: inner_net, len: inner_len }) => {
                inner_len > len && inner_net & mask4(len) == net
            }
            (Cidr::V6 { net, len }, Cidr::V6 { net: inner_net, len: inner_len }) => {
                inner_len > len && inner_net & mask6(len) == net
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).expect("test CIDR")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse::<IpAddr>().expect("test address").to_canonical()
    }

    #[test]
    fn parses_like_the_api_server() {
        assert_eq!(Cidr::parse("10.0.0.0/8"), Ok(Cidr::V4 { net: 0x0a00_0000, len: 8 }));
        // Host bits masked, leading zeros decimal (not octal).
        assert_eq!(Cidr::parse("10.1.2.3/8"), Ok(Cidr::V4 { net: 0x0a00_0000, len: 8 }));
        assert_eq!(Cidr::parse("010.0.0.0/8"), Ok(Cidr::V4 { net: 0x0a00_0000, len: 8 }));
        assert_eq!(Cidr::parse("10.0.0.0/0008"), Ok(Cidr::V4 { net: 0x0a00_0000, len: 8 }));
        assert_eq!(Cidr::parse("0.0.0.0/0"), Ok(Cidr::V4 { net: 0, len: 0 }));
        assert_eq!(Cidr::parse("::/0"), Ok(Cidr::V6 { net: 0, len: 0 }));
        assert_eq!(Cidr::parse("::ffff:10.0.0.0/104"), Ok(Cidr::V4 { net: 0x0a00_0000, len: 8 }));
        assert!(matches!(Cidr::parse("2001:db8::/32"), Ok(Cidr::V6 { len: 32, .. })));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.256/32",
            "10.0.0.0/-1",
            "10.0.0.0/",
            "/8",
            "2001:db8::/129",
            "2001:db8::g/64",
            "fe80::1%eth0/64",
            "10.0.0.0/8/8",
            "",
            "0x0a.0.0.0/8",
            "10.0.0.0 /8",
            "+10.0.0.0/8",
            "10.0.0.0/1000",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn contains_respects_prefix_and_family() {
        let net = c("203.0.113.0/24");
        assert!(net.contains(ip("203.0.113.0")));
        assert!(net.contains(ip("203.0.113.255")));
        assert!(!net.contains(ip("203.0.114.0")));
        assert!(net.contains(ip("::ffff:203.0.113.9")), "IPv4-mapped destination is IPv4");
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(!c("::/0").contains(ip("8.8.8.8")));
        let v6 = c("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(c("192.0.2.7/32").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7/32").contains(ip("192.0.2.6")));
    }

    #[test]
    fn strict_subset() {
        let outer = c("10.0.0.0/8");
        assert!(outer.strictly_contains(&c("10.1.0.0/16")));
        assert!(!outer.strictly_contains(&c("10.0.0.0/8")), "equal is not strict");
        assert!(!outer.strictly_contains(&c("11.0.0.0/16")));
        assert!(!outer.strictly_contains(&c("0.0.0.0/0")));
        assert!(!outer.strictly_contains(&c("::/64")));
    }
}
