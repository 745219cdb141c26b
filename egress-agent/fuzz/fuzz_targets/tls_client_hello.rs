//! TLS ClientHello records (alone, and after a CONNECT request in the same
//! stream) and the first bytes a server sends back.
#![no_main]
use egress_agent::pipeline::tls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = tls::parse_client_hello(data) {
        let _ = h.max_version();
    }
    let _ = tls::client_hello_after_connect(data);
    let _ = tls::classify_server_start(data);
});
