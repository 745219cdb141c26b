//! The configuration file (YAML): parsed and validated, or refused with an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = egress_agent::config::Config::from_yaml(text) {
        let _ = c.chain.proxy_ports();
        let _ = c.chain.target_label("login.example.test:443");
        let _ = c.dns.name_label("login.example.test");
    }
    let _ = egress_agent::config::parse_duration(text);
});
