//! Assembly across agents: the legs of one request, as each machine's own
//! agent saw them, joined by exact keys into one chain. Never by clocks
//! (each machine has its own monotonic clock, wall clocks drift) and never
//! by the order records arrive in.
//!
//! The key is a link's address pair. A link is one TCP connection of the
//! chain: the client's connect to hop 1, hop 1's to hop 2, … The connecting
//! end knows it as `(snat or src, dst_actual)`: its socket's source, after
//! any SNAT its own machine did, and the destination after any DNAT (both
//! from conntrack on that machine). The accepting end, the hop vantage,
//! knows it as `(peer, local)`: a hop-vantage record's `src` (its client)
//! and `dst_actual` (the hop's own address the connection reached, after
//! any DNAT on the hop's machine). Where no SNAT lies between the two machines
//! (pod to pod, pod to a VM of the same VPC), the two pairs are equal:
//! that is a [`Link`]. Across an SNAT that neither machine sees (a NAT in
//! the network), the pairs differ and the join stops there, saying so.
//!
//! - [`select`]: the records of one agent's history that belong to a link
//!   (what an agent answers a peer over [`crate::api::peer`]);
//! - [`walk`]: from a client's attempt, link by link, each hop's records
//!   fetched from its agent;
//! - [`judge`]: the assembled verdict over the vantages joined;
//! - [`discover`]: where a hop's agent is (the hop's Service endpoints →
//!   pods → nodes, or addresses configured for a hop outside Kubernetes);
//! - [`fetch`]: the client of the peer API (mutual TLS).
pub mod discover;
pub mod fetch;
pub mod judge;
pub mod select;
pub mod walk;

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::records::FlowRecord;

/// The value of a flow record's `vantage` field on an accepted connection.
pub use crate::pipeline::flow_table::HOP_VANTAGE;

/// A link's address pair as its accepting end sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Link {
    /// The connecting end (after any SNAT on the connecting machine).
    pub peer: SocketAddr,
    /// The accepting end (after any DNAT on the connecting machine).
    pub local: SocketAddr,
}

impl Link {
    /// The link a connect record crossed, as its far end sees it: its source
    /// after any SNAT of its own machine, its destination after any DNAT.
    /// None when either end is not known (or not bound yet).
    pub fn of_connect(f: &FlowRecord) -> Option<Self> {
        let peer = f.snat.or(f.src)?;
        let local = f.dst_actual.or(f.dst)?;
        Self::new(peer, local)
    }

    /// The link of an accepted connection: a hop-vantage record, whose
    /// `src` is the peer (the client end, as the hop's kernel sees it) and
    /// `dst_actual` the hop's own address. None on any other record.
    pub fn of_accepted(f: &FlowRecord) -> Option<Self> {
        if f.vantage.as_deref() != Some(HOP_VANTAGE) {
            return None;
        }
        Self::new(f.src?, f.dst_actual.or(f.dst)?)
    }

    fn new(peer: SocketAddr, local: SocketAddr) -> Option<Self> {
        let known = |a: SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        (known(peer) && known(local)).then_some(Self { peer, local })
    }

    /// Whether `f` is either end of this link (the accepting end when `f`
    /// is a hop-vantage record, the connecting end otherwise).
    pub fn ends_in(&self, f: &FlowRecord) -> bool {
        let end = if f.vantage.as_deref() == Some(HOP_VANTAGE) {
            Self::of_accepted(f)
        } else {
            Self::of_connect(f)
        };
        end.as_ref() == Some(self)
    }

    /// `peer=…&local=…` for the peer API's query string.
    pub fn query(&self) -> String {
        format!("peer={}&local={}", enc(self.peer), enc(self.local))
    }

    /// Parse `peer=…&local=…` (either order; other keys refused).
    pub fn from_query(q: &str) -> Result<Self, String> {
        let (mut peer, mut local) = (None, None);
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("`{kv}` is not key=value"))?;
            let v = dec(v);
            let a: SocketAddr =
                v.parse().map_err(|_| format!("{k}: `{v}` is not an address:port"))?;
            match k {
                "peer" => peer = Some(a),
                "local" => local = Some(a),
                _ => return Err(format!("unknown parameter `{k}` (peer, local)")),
            }
        }
        let (Some(peer), Some(local)) = (peer, local) else {
            return Err("both peer=ADDR:PORT and local=ADDR:PORT are needed".into());
        };
        Self::new(peer, local).ok_or_else(|| "an address or port of the link is 0".to_string())
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.peer, self.local)
    }
}

/// Percent-encode what a socket address may hold that a query cannot
/// (`[`, `]`, `:` of IPv6 are kept readable: only `[`/`]` are encoded).
fn enc(a: SocketAddr) -> String {
    a.to_string().replace('[', "%5B").replace(']', "%5D")
}

fn dec(s: &str) -> String {
    s.replace("%5B", "[").replace("%5D", "]").replace("%5b", "[").replace("%5d", "]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn both_ends_of_a_link_give_the_same_pair() {
        // The client's connect to the ClusterIP, DNAT'ed by its node to the pod.
        let client = FlowRecord {
            src: Some(a("10.0.1.10:43512")),
            dst: Some(a("10.96.0.10:3128")),
            dst_actual: Some(a("10.0.2.10:3128")),
            ..FlowRecord::default()
        };
        // Hop 1's accepted connection on its own machine, as the hop
        // vantage records it: `src` the peer, `dst`/`dst_actual` the hop's
        // own address, no conntrack wait.
        let hop = FlowRecord {
            vantage: Some(HOP_VANTAGE.into()),
            src: Some(a("10.0.1.10:43512")),
            dst: Some(a("10.0.2.10:3128")),
            dst_actual: Some(a("10.0.2.10:3128")),
            nat_checked: Some(false),
            leg: Some("client->gke-squid".into()),
            hop: Some("gke-squid".into()),
            ..FlowRecord::default()
        };
        let l = Link::of_connect(&client).expect("client link");
        assert_eq!(Some(l), Link::of_accepted(&hop));
        assert!(l.ends_in(&hop) && l.ends_in(&client));
        // A connect record is never an accepted end, whatever its addresses.
        assert_eq!(Link::of_accepted(&client), None);
        // The hop's own upstream connect (not hop vantage) is the next link,
        // keyed by its connecting end.
        let up = FlowRecord {
            src: Some(a("10.0.2.10:50002")),
            dst: Some(a("10.128.2.100:3128")),
            leg: Some("gke-squid->gce-proxy".into()),
            ..FlowRecord::default()
        };
        assert!(!l.ends_in(&up));
        assert_eq!(Link::of_connect(&up).map(|u| u.local), Some(a("10.128.2.100:3128")));
        // SNAT on the connecting machine: the far end sees the SNAT address.
        let natted = FlowRecord { snat: Some(a("10.128.0.11:61000")), ..client.clone() };
        assert_eq!(Link::of_connect(&natted).map(|l| l.peer), Some(a("10.128.0.11:61000")));
        assert!(!l.ends_in(&natted));
        // Without DNAT knowledge the destination asked for stands in.
        let bare = FlowRecord { dst_actual: None, ..client };
        assert_eq!(Link::of_connect(&bare).map(|l| l.local), Some(a("10.96.0.10:3128")));
        // An unbound source is no key.
        let unbound = FlowRecord { src: Some(a("0.0.0.0:0")), ..bare };
        assert_eq!(Link::of_connect(&unbound), None);
        assert_eq!(Link::of_accepted(&FlowRecord::default()), None);
    }

    #[test]
    fn query_round_trip() {
        for (p, l) in [("10.0.1.10:43512", "10.0.2.10:3128"), ("[fd00::1]:40000", "[fd00::2]:3128")]
        {
            let link = Link { peer: a(p), local: a(l) };
            assert_eq!(Link::from_query(&link.query()), Ok(link), "{}", link.query());
        }
        assert_eq!(
            Link::from_query("local=10.0.2.10:3128&peer=10.0.1.10:1"),
            Ok(Link { peer: a("10.0.1.10:1"), local: a("10.0.2.10:3128") })
        );
        for bad in [
            "",
            "peer=10.0.1.10:1",
            "peer=10.0.1.10&local=10.0.2.10:3128",
            "peer=10.0.1.10:1&local=10.0.2.10:3128&all=1",
            "peer=10.0.1.10:0&local=10.0.2.10:3128",
            "peer",
        ] {
            assert!(Link::from_query(bad).is_err(), "{bad}");
        }
    }
}
