//! `protocol: routed` hops: transparent gateways (a Cilium egress gateway
//! node, a NAT instance). Clients do not connect to them: a flow goes through
//! one when its destination is in the CIDRs it serves (`match.destinations`),
//! and on the gateway machine its conntrack entries are SNATed to
//! `match.egress_ips`.
use std::net::IpAddr;

use super::{Cidr, HopProtocol, SettingsError, file::HopConfig};

/// What a routed (transparent gateway) hop serves and SNATs to.
#[derive(Debug, Clone, Default)]
pub struct Routed {
    /// Destinations whose flows go through the gateway.
    pub destinations: Vec<Cidr>,
    /// Addresses it SNATs forwarded flows to (its conntrack entries' reply
    /// destination); may be empty (then only the client vantage sees it).
    pub egress_ips: Vec<IpAddr>,
}

impl Routed {
    pub fn serves(&self, ip: IpAddr) -> bool {
        self.destinations.iter().any(|c| c.contains(ip))
    }
}

/// A hop's routed settings: `routed` gives its [`Routed`] settings; a proxy
/// (`http-connect`, the default, or `tls-sni`) must not carry routed-only
/// fields.
pub(super) fn routed(
    h: &HopConfig,
    protocol: HopProtocol,
) -> Result<Option<Routed>, SettingsError> {
    let (m, hop) = (&h.matcher, || h.name.clone());
    match protocol {
        HopProtocol::HttpConnect | HopProtocol::TlsSni => {
            let field = if !m.destinations.is_empty() {
                "destinations"
            } else if !m.egress_ips.is_empty() {
                "egress_ips"
            } else {
                return Ok(None);
            };
            Err(SettingsError::NotRouted { hop: hop(), field })
        }
        HopProtocol::Routed => {
            let proxy_only = [
                ("address", m.address.is_some()),
                ("addresses", !m.addresses.is_empty()),
                ("service", m.service.is_some()),
                ("names", !m.names.is_empty()),
                ("via_names", !m.via_names.is_empty() || !h.via_names.is_empty()),
            ];
            if let Some((field, _)) = proxy_only.iter().find(|(_, set)| *set) {
                return Err(SettingsError::RoutedField { hop: hop(), field });
            }
            if m.destinations.is_empty() {
                return Err(SettingsError::RoutedNoDestinations(hop()));
            }
            let destinations = m
                .destinations
                .iter()
                .map(|c| {
                    c.parse().map_err(|source| SettingsError::RoutedCidr {
                        hop: hop(),
                        cidr: c.clone(),
                        source,
                    })
                })
                .collect::<Result<_, _>>()?;
            let egress_ips = m
                .egress_ips
                .iter()
                .map(|ip| {
                    ip.trim()
                        .parse()
                        .map_err(|_| SettingsError::RoutedEgressIp { hop: hop(), ip: ip.clone() })
                })
                .collect::<Result<_, _>>()?;
            Ok(Some(Routed { destinations, egress_ips }))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::config::Config;

    fn hop(m: &str) -> String {
        format!(
            "version: 1\nchain:\n  hops:\n    - {{name: gw, protocol: routed, match: {{{m}}}}}\n"
        )
    }

    #[test]
    fn a_routed_hop_serves_its_cidrs_and_names_its_egress_ips() {
        let c = Config::from_yaml(&hop(
            "destinations: ['203.0.113.0/24', '2001:db8::/32'], egress_ips: ['192.0.2.10']",
        ))
        .expect("routed hop");
        let r = c.chain.hops[0].routed.as_ref().expect("routed");
        assert!(r.serves("203.0.113.7".parse().expect("ip")));
        assert!(r.serves("2001:db8::1".parse().expect("ip")));
        assert!(!r.serves("198.51.100.1".parse().expect("ip")));
        assert_eq!(r.egress_ips, vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]);
        assert!(c.chain.hops[0].ports().is_empty(), "no payload hooks for a routed hop");
    }

    #[test]
    fn routed_mistakes_are_clear_errors() {
        let bad = |y: &str| Config::from_yaml(y).expect_err("must fail").to_string();
        assert!(bad(&hop("egress_ips: ['192.0.2.10']")).contains("needs `match.destinations`"));
        assert!(
            bad(&hop("destinations: ['203.0.113.0/33']")).contains("destinations: 203.0.113.0/33")
        );
        assert!(bad(&hop("destinations: ['not-a-cidr']")).contains("destinations: not-a-cidr"));
        assert!(bad(&hop("destinations: ['0.0.0.0/0'], egress_ips: ['nope']")).contains("`nope`"));
        let e = bad(&hop("destinations: ['0.0.0.0/0'], address: '10.0.0.1:3128'"));
        assert!(e.contains("`address` is for proxies"), "{e}");
        assert!(bad(&hop("destinations: ['0.0.0.0/0'], via_names: [gw]")).contains("via_names"));
        let e = bad(
            "version: 1\nchain:\n  hops:\n    - {name: p, match: {address: '10.0.0.1:3128', destinations: ['0.0.0.0/0']}}\n",
        );
        assert!(e.contains("only read for protocol routed"), "{e}");
        let e = bad(
            "version: 1\nchain:\n  hops:\n    - {name: p, protocol: socks5, match: {address: '10.0.0.1:1080'}}\n",
        );
        assert!(e.contains("protocol `socks5` is not one of"), "{e}");
    }
}
