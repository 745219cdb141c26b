//! What a flow's close says about the bytes it carried: the body bytes of
//! a proxy's answer, with the FINs the kernel's counters include taken off.
use egress_common::{FLOW_FLAG_RESET, FlowEvent};

/// Body bytes received in all: what the socket received past the answer's
/// header block (known at the close, where the kernel reads the counter).
///
/// `tcp_sock.bytes_received` advances with `rcv_nxt`, and the peer's FIN
/// takes one sequence number: a header block relayed alone and then closed
/// reads as one body byte unless the FIN is taken off. The peer's FIN was
/// received when the socket closes from LAST_ACK (after CLOSE_WAIT) or
/// CLOSING, or from FIN_WAIT2 into TIME_WAIT (a FIN_WAIT2 timeout, rare,
/// is the one case counted one byte short). A hop's accepted connection
/// sends the answer: its own FIN, once acknowledged, is in `bytes_acked`.
pub(super) fn body_total(e: &FlowEvent, accepted: bool, header_len: Option<usize>) -> Option<u64> {
    // A hop sends its answer: what its client acknowledged. `bytes_acked`
    // counts sequence space (`ack - snd_una`): the SYN-ACK of the passive
    // open always, and the hop's FIN once acknowledged. A relayed header
    // block (Squid's answer to a parent's error) would read as 1-2 body
    // bytes and hide the relay.
    let (total, control) = if accepted { (e.bytes_acked, 1) } else { (e.bytes_received, 0) };
    if total == u64::MAX {
        return None;
    }
    let header = header_len? as u64;
    let fin = if accepted {
        own_fin_acked(e.oldstate, e.flags)
    } else {
        peer_fin_seen(e.oldstate, e.flags)
    };
    Some(total.saturating_sub(control + u64::from(fin)).saturating_sub(header))
}

/// Linux `TCP_*` states of `include/net/tcp_states.h` (uapi-stable).
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// The peer's FIN is counted in `bytes_received` at a close from `old`.
fn peer_fin_seen(old: u32, flags: u32) -> bool {
    flags & FLOW_FLAG_RESET == 0
        && matches!(old, TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING)
}

/// Our own FIN, acknowledged, is counted in `bytes_acked` (`snd_una`) at a
/// close from `old`.
fn own_fin_acked(old: u32, flags: u32) -> bool {
    flags & FLOW_FLAG_RESET == 0 && matches!(old, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING)
}
