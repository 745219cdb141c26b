//! Out-of-order, overlapping, duplicated chunks of a proxy's answer: the
//! input is a limit byte, then chunks of (offset: u16 LE, len: u8, bytes).
//! Whatever arrives, the reassembly stays within its limit and what it
//! hands on parses without panicking.
#![no_main]
use egress_agent::pipeline::vantage::{Reassembly, parse_answer, reassembly::header_end};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, mut rest)) = data.split_first() else { return };
    let mut r = Reassembly::new(usize::from(limit) * 16);
    while let [a, b, len, tail @ ..] = rest {
        let offset = u32::from(u16::from_le_bytes([*a, *b]));
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        let fresh = r.push(offset, chunk);
        assert!(fresh <= chunk.len());
        rest = next;
    }
    assert!(r.contiguous().len() <= r.limit());
    if let Some(h) = r.header_len() {
        assert!(h <= r.contiguous().len());
    }
    let _ = r.body();
    let _ = (r.is_full(), r.has_gap(), r.clipped(), r.duplicate(), r.header_complete());
    let _ = parse_answer(r.contiguous());
    let _ = header_end(r.contiguous(), usize::from(limit));
});
