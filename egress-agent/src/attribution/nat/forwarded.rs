//! Flows this machine forwarded and SNATed to a watched egress IP (a routed
//! hop's gateway: a Cilium egress gateway node, a NAT instance), as their
//! conntrack entries end. The worker queues them on DESTROY; the pipeline
//! takes them ([`super::NatTable::take_forwarded`]) and judges them.
use std::{collections::VecDeque, net::IpAddr};

use super::FlowKey;

/// `IPS_SEEN_REPLY`: a packet came back in the reply direction.
const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`: for TCP, the handshake completed.
const IPS_ASSURED: u32 = 1 << 2;
/// `TCP_CONNTRACK_CLOSE`: the state a reset leaves an entry in.
const TCP_CONNTRACK_CLOSE: u8 = 8;
/// Ended entries held for the pipeline at most; beyond, the oldest is dropped (counted).
pub(crate) const FORWARDED_MAX: usize = 4096;

/// A forwarded, SNATed flow whose conntrack entry ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// As the client sent it: `src` is the client (a pod's address).
    pub original: FlowKey,
    /// As the origin answers it: `dst` is the egress IP and port it was SNATed to.
    pub reply: FlowKey,
    /// What came back from the origin.
    pub answer: OriginAnswer,
    /// The namespace path it was seen in, or [`super::OWN_NETNS`].
    pub netns: String,
}

/// What conntrack saw come back from the origin over the entry's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginAnswer {
    /// Nothing in the reply direction: no answer from the origin.
    None,
    /// A reply but no completed handshake (a reset: refused).
    NotEstablished,
    /// Reset before any reply was recorded: the kernel deletes an entry
    /// whose only reply is a RST at once, before it marks the reply seen
    /// (the entry's TCP state, CLOSE, is what is left of it). The entry
    /// does not say which side sent the RST; a client does not reset a
    /// connect it gives up on, so it is the origin's refusal.
    Reset,
    /// The handshake completed.
    Established,
}

impl OriginAnswer {
    /// From the entry's status bits and TCP state at its end.
    pub(crate) fn from_entry(status: u32, tcp_state: u8) -> Self {
        if status & IPS_ASSURED != 0 {
            Self::Established
        } else if status & IPS_SEEN_REPLY != 0 {
            Self::NotEstablished
        } else if tcp_state == TCP_CONNTRACK_CLOSE {
            Self::Reset
        } else {
            Self::None
        }
    }
}

/// The queue of ended forwarded flows, and which egress IPs it watches.
#[derive(Debug, Default)]
pub(crate) struct ForwardedQueue {
    watch: Vec<IpAddr>,
    queue: VecDeque<Forwarded>,
}

impl ForwardedQueue {
    pub(crate) fn new(watch: Vec<IpAddr>) -> Self {
        Self { watch, queue: VecDeque::new() }
    }

    /// An entry ended: queue it if it was SNATed to a watched egress IP.
    /// Returns how many older ones were dropped to make room (0 or 1).
    pub(crate) fn on_destroy(
        &mut self,
        original: FlowKey,
        reply: FlowKey,
        (status, tcp_state): (u32, u8),
        netns: &str,
    ) -> u64 {
        if reply.dst == original.src || !self.watch.contains(&reply.dst.ip()) {
            return 0;
        }
        let dropped = if self.queue.len() >= FORWARDED_MAX {
            self.queue.pop_front();
            1
        } else {
            0
        };
        self.queue.push_back(Forwarded {
            original,
            reply,
            answer: OriginAnswer::from_entry(status, tcp_state),
            netns: netns.to_string(),
        });
        dropped
    }

    pub(crate) fn is_watching(&self) -> bool {
        !self.watch.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<Forwarded> {
        self.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey { src: src.parse().expect("addr"), dst: dst.parse().expect("addr") }
    }

    #[test]
    fn only_entries_snated_to_a_watched_egress_ip_are_queued() {
        let mut q = ForwardedQueue::new(vec!["192.0.2.10".parse().expect("ip")]);
        let orig = key("10.0.1.5:40000", "203.0.113.9:443");
        // SNATed to the egress IP, no reply ever: no answer from the origin.
        let r = |p: u16| key("203.0.113.9:443", &format!("192.0.2.10:{p}"));
        assert_eq!(q.on_destroy(orig, r(40000), (0x8, 1), "gw"), 0, "SYN_SENT, timed out");
        // The only reply a RST: deleted at once, in CLOSE, no reply bit.
        q.on_destroy(orig, r(40001), (0x8, TCP_CONNTRACK_CLOSE), "gw");
        // A reply, not assured; handshake done.
        q.on_destroy(orig, r(40002), (0x8 | IPS_SEEN_REPLY, 8), "gw");
        q.on_destroy(orig, r(40003), (0xe, 7), "gw");
        // Not SNATed, or to another address: not this gateway's.
        q.on_destroy(orig, key("203.0.113.9:443", "10.0.1.5:40000"), (0xe, 7), "gw");
        q.on_destroy(orig, key("203.0.113.9:443", "192.0.2.99:40000"), (0xe, 7), "gw");
        let got: Vec<OriginAnswer> = q.take().into_iter().map(|f| f.answer).collect();
        use OriginAnswer::*;
        assert_eq!(got, vec![None, Reset, NotEstablished, Established]);
        assert!(q.take().is_empty());
    }

    #[test]
    fn the_queue_is_bounded_oldest_dropped() {
        let mut q = ForwardedQueue::new(vec!["192.0.2.10".parse().expect("ip")]);
        let orig = key("10.0.1.5:40000", "203.0.113.9:443");
        let mut dropped = 0;
        for p in 0..FORWARDED_MAX + 3 {
            let reply = key("203.0.113.9:443", &format!("192.0.2.10:{}", 1000 + p));
            dropped += q.on_destroy(orig, reply, (0, 1), "gw");
        }
        assert_eq!(dropped, 3);
        let all = q.take();
        assert_eq!(all.len(), FORWARDED_MAX);
        assert_eq!(all[0].reply.dst.port(), 1003);
    }
}
