//! Addresses as settings name them: IPv4/IPv6 prefixes (`--private-ranges`,
//! `--dst`), and `ip:port` / `cidr:port` matchers of the proxy chain's hops.
use std::{
    net::{AddrParseError, IpAddr, SocketAddr},
    num::ParseIntError,
    str::FromStr,
};

/// RFC 1918, CGNAT (RFC 6598), link-local and ULA: private unless configured otherwise.
pub const DEFAULT_PRIVATE: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,fc00::/7,fe80::/10";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0}: {1}")]
    Address(String, AddrParseError),
    #[error("{0}: {1}")]
    PrefixLength(String, ParseIntError),
    #[error("{0}: prefix longer than {1}")]
    PrefixTooLong(String, u8),
    #[error("{0}: port: {1}")]
    Port(String, ParseIntError),
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|e| AddrError::Address(s.to_string(), e))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.trim().parse::<u8>().map_err(|e| AddrError::PrefixLength(s.to_string(), e))?
        };
        if len > max {
            return Err(AddrError::PrefixTooLong(s.to_string(), max));
        }
        Ok(Self { addr, len })
    }
}

impl Cidr {
    /// The range as an IPv6 prefix, IPv4 v4-mapped (`::ffff:a.b.c.d/96+len`):
    /// the key of the kernel's private-range trie.
    pub fn v6_key(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + self.len),
            IpAddr::V6(a) => (a.octets(), self.len),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - self.len) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - self.len) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Comma-separated prefixes.
pub fn parse_ranges(s: &str) -> Result<Vec<Cidr>, AddrError> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
}

/// `ip:port`, `[v6]:port`, `cidr:port`, or a bare ip/cidr (port 0 = any port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrMatch {
    pub net: Cidr,
    pub port: u16,
}

impl AddrMatch {
    pub fn matches(&self, a: SocketAddr) -> bool {
        self.net.contains(a.ip()) && (self.port == 0 || self.port == a.port())
    }
}

impl FromStr for AddrMatch {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self { net: sa.ip().to_string().parse()?, port: sa.port() });
        }
        match s.rsplit_once(':') {
            Some((net, port)) if !net.contains(':') || net.starts_with('[') => {
                let net = net.trim_start_matches('[').trim_end_matches(']');
                Ok(Self {
                    net: net.parse()?,
                    port: port.parse().map_err(|e| AddrError::Port(s.to_string(), e))?,
                })
            }
            _ => Ok(Self { net: s.parse()?, port: 0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
        let host: Cidr = "192.0.2.7".parse().expect("host");
        assert!(
            host.contains("192.0.2.7".parse().expect("ip"))
                && !host.contains("192.0.2.8".parse().expect("ip"))
        );
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(
            all.contains("8.8.8.8".parse().expect("ip"))
                && !all.contains("::1".parse().expect("ip"))
        );
        assert_eq!(parse_ranges("").expect("empty"), vec![]);
        assert_eq!(parse_ranges(DEFAULT_PRIVATE).expect("default").len(), 7);
    }

    #[test]
    fn address_matchers() {
        let m: AddrMatch = "10.96.0.0/16:3128".parse().expect("cidr:port");
        assert!(
            m.matches("10.96.3.4:3128".parse().expect("a"))
                && !m.matches("10.96.3.4:80".parse().expect("a"))
        );
        let any: AddrMatch = "10.1.2.3".parse().expect("bare");
        assert!(any.matches("10.1.2.3:1".parse().expect("a")));
        let v6: AddrMatch = "[fd00::1]:3128".parse().expect("v6");
        assert!(v6.matches("[fd00::1]:3128".parse().expect("a")));
        assert!(
            "10.0.0.1:http".parse::<AddrMatch>().is_err() && "nope:1".parse::<AddrMatch>().is_err()
        );
    }
}
