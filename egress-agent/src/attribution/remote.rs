//! Where a flow went, when the Kubernetes index does not know the address:
//! loopback, a private range (`--private-ranges`), or public.
use std::net::IpAddr;

use crate::{config::Cidr, records::DstClass};

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
    use crate::config::{DEFAULT_PRIVATE, parse_ranges};

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
}
