//! A proxy's answer to CONNECT (status line, headers, error page) as the
//! capture delivers it, and the first-line parsers of `proxy_http`.
#![no_main]
use egress_agent::pipeline::{proxy_http, vantage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(a) = vantage::parse_answer(data) {
        let _ = a.status_line();
    }
    let _ = proxy_http::parse_response(data);
    let _ = proxy_http::parse_request(data);
});
