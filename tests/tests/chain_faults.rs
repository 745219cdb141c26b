//! Every fault of the proxy chain, on real Squids, real NAT and the real
//! agent: the chain record names the hop that broke and why, within 2 s of
//! the client seeing the failure; healthy traffic gives no failure.
use std::net::Ipv4Addr;

use egress_tests::{
    chain_lab::{ChainLabConfig, OriginName},
    faults, require_root,
};

#[test]
fn every_fault_is_named_at_its_hop() {
    require_root!();
    // Not the lab's defaults: nothing may depend on them.
    let cfg = ChainLabConfig {
        cluster_ip: Ipv4Addr::new(10, 96, 44, 4),
        proxy_port: 3129,
        app_ip: Ipv4Addr::new(10, 0, 41, 20),
        app_gw: Ipv4Addr::new(10, 0, 41, 1),
        proxy_pod_ip: Ipv4Addr::new(10, 0, 42, 20),
        proxy_pod_gw: Ipv4Addr::new(10, 0, 42, 1),
        healthy: OriginName::new("api.fault-lab.test", Ipv4Addr::new(198, 19, 44, 10)),
        refused: OriginName::new("closed.fault-lab.test", Ipv4Addr::new(198, 19, 44, 11)),
        blackhole: OriginName::new("void.fault-lab.test", Ipv4Addr::new(198, 19, 44, 12)),
        denied_at_hop1: "nope1.fault-lab.test".into(),
        denied_at_hop2: "nope2.fault-lab.test".into(),
        ..ChainLabConfig::default()
    };
    let rows = faults::run(cfg, true).expect("fault table");
    faults::print(&rows);
    for r in &rows {
        assert!(r.ok, "{}: expected {}, agent said {}", r.fault, r.expected, r.got);
        assert!(
            r.lag_s <= r.lag_limit_s,
            "{}: verdict {:.1} s after the client saw it (bound {:.1} s)",
            r.fault,
            r.lag_s,
            r.lag_limit_s
        );
    }
}
