//! The names of the maps and the global the agent finds in the kernel
//! object, and their default sizes. Re-exported at the crate root.
/// Ring buffer of flow events (outcomes of connections) and NAT mappings.
pub const MAP_EVENTS: &str = "EVENTS";
/// Ring buffer of captured bytes: proxy/TLS payloads and DNS messages. Kept
/// apart from [`MAP_EVENTS`] so that a flood of captures (a tenant's DNS
/// storm) can never take the room flow outcomes need.
pub const MAP_CAPTURE: &str = "CAPTURE";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "STATS";
/// Active opens in flight, by kernel socket address: a direct-mapped array
/// of [`FlowSlot`](crate::FlowSlot)s holds most ([`MAP_FLOW_SLOTS`]), this
/// LRU hash (address → [`FlowState`](crate::FlowState)) the rest: sockets
/// whose place is taken, connections a hop accepted, sockets adopted at
/// start. A full LRU evicts its least recently used entry, and an active
/// open that finds its state gone is counted.
pub const MAP_FLOWS: &str = "FLOWS";
/// The direct-mapped part of the socket table (see [`MAP_FLOWS`]).
pub const MAP_FLOW_SLOTS: &str = "FLOW_SLOTS";
/// `connect()` destinations per thread: pid_tgid → [`ConnectArgs`](crate::ConnectArgs).
pub const MAP_CONNECT_ARGS: &str = "CONNECT_ARGS";
/// Established flows to capture ports, [`TupleKey`](crate::TupleKey) → socket address: the
/// key the packet hooks can build from a packet.
pub const MAP_PROXY_FLOWS: &str = "PROXY_FLOWS";
/// Sockets being connected, by owner: (tgid << 32 | fd) → socket address.
pub const MAP_SOCK_FDS: &str = "SOCK_FDS";
/// Clean flows counted in the kernel: two maps, [`AggKey`](crate::AggKey) → [`AggValue`](crate::AggValue);
/// the kernel adds to the one `Control::agg_sel` names, the agent drains
/// the other (see `AggKey`).
pub const MAP_AGG: [&str; 2] = ["AGG0", "AGG1"];
/// Runtime control, one [`Control`](crate::Control) at index 0 (the agent writes it).
pub const MAP_CONTROL: &str = "CONTROL";
/// DNS capture budget per cgroup: cgroup id → [`TokenBucket`](crate::TokenBucket) (LRU).
pub const MAP_DNS_BUCKETS: &str = "DNS_BUCKETS";
/// Private and cluster address ranges (LPM trie over IPv6 addresses, IPv4
/// as `::ffff:a.b.c.d`): with `CTRL_PUBLIC_EVENTS`, a flow to an address
/// outside them is sent as an event (a bypass of the chain is a finding).
pub const MAP_PRIVATE_NETS: &str = "PRIVATE_NETS";
/// Entries of [`MAP_PRIVATE_NETS`] at most.
pub const PRIVATE_NETS_MAX: u32 = 256;
/// The IPv4 ranges always in [`MAP_PRIVATE_NETS`] (network, prefix length):
/// loopback, RFC 1918, CGNAT, link-local. The kernel tests these inline
/// and asks the trie only for other addresses (operator ranges, public).
pub const BUILTIN_PRIVATE_V4: [([u8; 4], u8); 6] = [
    ([127, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([100, 64, 0, 0], 10),
    ([169, 254, 0, 0], 16),
];
/// Name of the load-time configuration global ([`Config`](crate::Config)).
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default size of each ring: 1 MiB holds ~5k flow events between two
/// reader wake-ups.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
/// Default capacity of the socket table.
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;

/// How `--max-flows` divides between the socket table's two parts: the
/// direct-mapped places (a power of two, at most half) and the LRU (the
/// rest), so that together they hold `max_flows` (at least one each).
pub const fn flow_table_split(max_flows: u32) -> (u32, u32) {
    let half = if max_flows / 2 == 0 { 1 } else { max_flows / 2 };
    let slots = 1u32 << (31 - half.leading_zeros());
    let lru = if max_flows > slots { max_flows - slots } else { 1 };
    (slots, lru)
}
/// Default capacity of each aggregation map (a full map sends flows as
/// events instead: nothing is lost).
pub const DEFAULT_AGG_KEYS: u32 = 16_384;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_table_split_holds_max_flows_with_a_power_of_two_of_places() {
        assert_eq!(flow_table_split(DEFAULT_MAX_FLOWS), (65_536, 65_536));
        assert_eq!(flow_table_split(100_000), (32_768, 67_232));
        assert_eq!(flow_table_split(3), (1, 2));
        assert_eq!(flow_table_split(1), (1, 1));
        for m in [2, 5, 1_000, 65_537, 1 << 20, u32::MAX] {
            let (slots, lru) = flow_table_split(m);
            assert!(slots.is_power_of_two() && slots <= m / 2 && slots > m / 4, "{m}");
            assert_eq!(slots + lru, m, "{m}");
        }
    }

    /// The kernel compares `addr & mask == net`: a network with host bits
    /// set would never match.
    #[test]
    fn builtin_private_ranges_are_networks() {
        for (net, len) in BUILTIN_PRIVATE_V4 {
            assert!((1..=32).contains(&len));
            let mask = u32::MAX << (32 - u32::from(len));
            assert_eq!(u32::from_be_bytes(net) & !mask, 0, "{net:?}/{len}");
        }
    }
}
