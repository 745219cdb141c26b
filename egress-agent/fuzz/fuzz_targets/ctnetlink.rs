//! ctnetlink datagrams (conntrack events, dump replies, stats, errors) as
//! the conntrack worker receives them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ok, bad) = egress_agent::attribution::nat::decode_datagram(data);
    // Every message is at least a 16-byte header.
    assert!(ok + bad <= data.len() / 16 + 1);
});
