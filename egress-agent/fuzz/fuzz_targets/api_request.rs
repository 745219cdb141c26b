//! What a local API client may send (the request line, parsed as the agent
//! does) and what a client reads back (answer lines: records, controls,
//! status).
#![no_main]
use egress_agent::api::wire::{Message, Status, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);
    if let Ok(Message::Record(r)) = serde_json::from_slice::<Message>(data) {
        // What the agent would send back must read back.
        let line = r.json_line();
        assert!(serde_json::from_str::<Message>(&line).is_ok(), "{line}");
    }
    let _ = serde_json::from_slice::<Status>(data);
});
