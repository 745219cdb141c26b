//! Ring records as the kernel programs write them: any bytes, any length,
//! through the public `kernel::decode::decode` (length checked before kind).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = egress_agent::kernel::decode::decode(data);
});
