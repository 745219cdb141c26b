//! Remote side classes: what kind of place a destination is.
use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum DstClass {
    Loopback,
    /// A pod of this cluster (from the Kubernetes index).
    Pod,
    /// A Service ClusterIP.
    Service,
    /// A node of this cluster.
    Node,
    /// Outside the cluster, in a private range (e.g. a proxy VM).
    Private,
    Public,
}

impl DstClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Pod => "pod",
            Self::Service => "service",
            Self::Node => "node",
            Self::Private => "private",
            Self::Public => "public",
        }
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|e| format!("{s}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.trim().parse::<u8>().map_err(|e| format!("{s}: {e}"))? };
        if len > max {
            return Err(format!("{s}: prefix longer than {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl Cidr {
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

/// RFC 1918, CGNAT (RFC 6598), link-local and ULA: private unless configured otherwise.
pub const DEFAULT_PRIVATE: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,fc00::/7,fe80::/10";

pub fn parse_ranges(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
}

/// Classify an address that the Kubernetes index did not know.
pub fn classify(ip: IpAddr, private: &[Cidr]) -> DstClass {
    if ip.is_loopback() {
        DstClass::Loopback
    } else if private.iter().any(|c| c.contains(ip)) {
        DstClass::Private
    } else {
        DstClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let p = parse_ranges(DEFAULT_PRIVATE).expect("ranges");
        let c = |s: &str| classify(s.parse().expect("ip"), &p);
        assert_eq!(c("127.0.0.1"), DstClass::Loopback);
        assert_eq!(c("::1"), DstClass::Loopback);
        assert_eq!(c("10.128.2.100"), DstClass::Private);
        assert_eq!(c("172.31.255.1"), DstClass::Private);
        assert_eq!(c("172.32.0.1"), DstClass::Public);
        assert_eq!(c("100.64.3.4"), DstClass::Private);
        assert_eq!(c("fd00::1"), DstClass::Private);
        assert_eq!(c("20.190.160.1"), DstClass::Public);
        assert_eq!(c("2603:1030::1"), DstClass::Public);
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
        let host: Cidr = "192.0.2.7".parse().expect("host");
        assert!(host.contains("192.0.2.7".parse().expect("ip")) && !host.contains("192.0.2.8".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")) && !all.contains("::1".parse().expect("ip")));
        assert_eq!(parse_ranges("").expect("empty"), vec![]);
    }
}
