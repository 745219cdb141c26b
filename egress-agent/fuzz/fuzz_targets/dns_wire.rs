//! DNS messages as captured (UDP, or TCP with its 2-byte length): the first
//! byte picks TCP and how much longer the packet was than the capture.
#![no_main]
use egress_agent::pipeline::dns_wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, msg)) = data.split_first() else { return };
    let tcp = flags & 1 == 1;
    let wire_len = msg.len() + usize::from(flags >> 1) * 8;
    let _ = dns_wire::parse(msg, tcp, msg.len());
    let _ = dns_wire::parse(msg, tcp, wire_len);
});
