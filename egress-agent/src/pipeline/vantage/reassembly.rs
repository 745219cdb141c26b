//! Bounded reassembly of a proxy's answer from captured chunks.
//!
//! The kernel hands over what the proxy sent on one connection as chunks
//! `(stream_offset, bytes)`, offset 0 being the first byte the proxy sent.
//! Chunks may repeat (retransmits), overlap, or arrive out of order; proxies
//! write small segments (tinyproxy relays a status line alone, then one
//! segment per header line), so one chunk rarely holds the header block.
//!
//! [`Reassembly`] keeps the bytes in `[0, limit)` and exposes the contiguous
//! prefix from offset 0, where the header block ends (`\r\n\r\n`, or a bare
//! `\n\n`), and the body bytes captured after it. Rules:
//! - first writer wins: a retransmit never rewrites bytes already held, so the
//!   prefix a caller has seen never changes under it;
//! - bytes at or past `limit` are dropped (counted in [`Reassembly::clipped`]);
//! - work is linear in the bytes pushed; no input can panic it (offsets near
//!   `u32::MAX`, empty chunks, chunks longer than the limit).

/// Default capture bound per answer: 4 KiB holds Squid's full error page
/// (≈3.4 KB incl. headers, "Generated … by NAME" near its end).
pub const DEFAULT_LIMIT: usize = 4096;

/// Hard ceiling on any configured bound (memory per flow stays small).
pub const MAX_LIMIT: usize = 64 * 1024;

/// End of the header block in `b`: the index just past the blank line
/// (`\n\r\n` or `\n\n`), searching from `from`. `None` while not seen.
pub fn header_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        if b[i] == b'\n' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// One answer being reassembled. See the module header.
#[derive(Debug, Clone)]
pub struct Reassembly {
    limit: usize,
    /// Bytes at `[0, data.len())`; valid where `have` says so.
    data: Vec<u8>,
    /// One bit per byte of `data`.
    have: Vec<u64>,
    /// Length of the filled prefix from offset 0.
    contiguous: usize,
    header_end: Option<usize>,
    /// The header search resumes here (a blank line needs ≤ 3 bytes).
    scanned: usize,
    clipped: u64,
    duplicate: u64,
}

impl Default for Reassembly {
    fn default() -> Self {
        Self::new(DEFAULT_LIMIT)
    }
}

impl Reassembly {
    /// An empty reassembly that keeps at most `limit` bytes (capped at
    /// [`MAX_LIMIT`]). Memory grows only up to the furthest byte kept.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.min(MAX_LIMIT),
            data: Vec::new(),
            have: Vec::new(),
            contiguous: 0,
            header_end: None,
            scanned: 0,
            clipped: 0,
            duplicate: 0,
        }
    }

    /// Add a chunk that starts at `offset` in the proxy's byte stream.
    /// Returns how many bytes were new.
    pub fn push(&mut self, offset: u32, bytes: &[u8]) -> usize {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let want_end = start.saturating_add(bytes.len());
        let end = want_end.min(self.limit);
        let dropped = want_end.saturating_sub(start.max(self.limit));
        self.clipped = self.clipped.saturating_add(u64::try_from(dropped).unwrap_or(u64::MAX));
        if start >= end {
            return 0;
        }
        if end > self.data.len() {
            self.data.resize(end, 0);
            self.have.resize(end.div_ceil(64), 0);
        }
        let mut new = 0;
        for (i, &byte) in (start..end).zip(bytes) {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if self.have[word] & bit == 0 {
                self.have[word] |= bit;
                self.data[i] = byte;
                new += 1;
            }
        }
        self.duplicate =
            self.duplicate.saturating_add(u64::try_from(end - start - new).unwrap_or(u64::MAX));
        self.advance();
        new
    }

    fn filled(&self, i: usize) -> bool {
        self.have.get(i / 64).is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn advance(&mut self) {
        let before = self.contiguous;
        while self.contiguous < self.data.len() && self.filled(self.contiguous) {
            self.contiguous += 1;
        }
        if self.header_end.is_none() && self.contiguous > before {
            let prefix = &self.data[..self.contiguous];
            self.header_end = header_end(prefix, self.scanned);
            self.scanned = self.contiguous.saturating_sub(2);
        }
    }

    /// The bytes held from offset 0 without a gap.
    pub fn contiguous(&self) -> &[u8] {
        &self.data[..self.contiguous]
    }

    /// The blank line that ends the header block is in the contiguous prefix.
    pub fn header_complete(&self) -> bool {
        self.header_end.is_some()
    }

    /// Length of the header block (status line through the blank line).
    pub fn header_len(&self) -> Option<usize> {
        self.header_end
    }

    /// Body bytes captured so far (after the header block, contiguous).
    pub fn body(&self) -> &[u8] {
        self.header_end.map_or(&[][..], |h| &self.data[h.min(self.contiguous)..self.contiguous])
    }

    /// The capture bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The contiguous prefix reached the bound: later bytes are not kept.
    pub fn is_full(&self) -> bool {
        self.contiguous >= self.limit
    }

    /// Bytes are held past a gap (something before them is still missing).
    pub fn has_gap(&self) -> bool {
        self.data.len() > self.contiguous
    }

    /// Bytes dropped because they lay at or past the bound.
    pub fn clipped(&self) -> u64 {
        self.clipped
    }

    /// Bytes received again (retransmits, overlaps) and ignored.
    pub fn duplicate(&self) -> u64 {
        self.duplicate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nX-Squid-Error: ERR_CONNECT_FAIL 110\r\n\r\n<html>body</html>";

    /// A tiny deterministic PRNG (xorshift) for fuzz-style tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
        }
    }

    fn off(n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    #[test]
    fn in_order_chunks_and_header_end() {
        let mut r = Reassembly::default();
        let h = ANSWER.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        for (i, c) in ANSWER.chunks(7).enumerate() {
            r.push(off(i * 7), c);
        }
        assert_eq!(r.contiguous(), ANSWER);
        assert_eq!(r.header_len(), h);
        assert_eq!(r.body(), b"<html>body</html>");
        assert!(!r.has_gap() && !r.is_full());
    }

    #[test]
    fn header_split_at_every_byte() {
        let h = header_end(ANSWER, 0).expect("blank line");
        for cut in 0..=ANSWER.len() {
            let mut r = Reassembly::default();
            r.push(0, &ANSWER[..cut]);
            assert_eq!(r.header_complete(), cut >= h, "cut at {cut}");
            r.push(off(cut), &ANSWER[cut..]);
            assert_eq!((r.contiguous(), r.header_len()), (ANSWER, Some(h)));
        }
    }

    #[test]
    fn tinyproxy_style_segments_status_line_then_one_header_per_segment() {
        let segs: [&[u8]; 6] = [
            b"HTTP/1.1 403 Forbidden\r\n",
            b"Via: 1.1 a (squid/5.7), 1.1 b (tinyproxy/1.11.1)\r\n",
            b"Server: squid/5.7\r\n",
            b"X-Cache: MISS from a\r\n",
            b"\r\n",
            b"<html>",
        ];
        let mut r = Reassembly::default();
        let mut at = 0;
        for (i, s) in segs.iter().enumerate() {
            r.push(off(at), s);
            at += s.len();
            assert_eq!(r.header_complete(), i >= 4);
        }
        assert_eq!(r.body(), b"<html>");
    }

    #[test]
    fn bare_lf_header_end() {
        assert_eq!(header_end(b"HTTP/1.0 200 OK\n\nX", 0), Some(17));
        assert_eq!(header_end(b"HTTP/1.0 200 OK\nA: b\n\r\n", 0), Some(23));
        assert_eq!(header_end(b"HTTP/1.0 200 OK\r\nA: b\r\n", 0), None);
        assert_eq!(header_end(b"", 5), None);
        let mut r = Reassembly::default();
        r.push(0, b"HTTP/1.0 200 OK\n");
        r.push(16, b"\n");
        assert_eq!(r.header_len(), Some(17));
    }

    #[test]
    fn out_of_order_retransmitted_and_overlapping() {
        let mut r = Reassembly::default();
        assert_eq!(r.push(40, &ANSWER[40..]), ANSWER.len() - 40);
        assert!(r.contiguous().is_empty() && r.has_gap() && !r.header_complete());
        assert_eq!(r.push(10, &ANSWER[10..50]), 30, "overlap: only the new 30 bytes count");
        assert_eq!(r.push(0, &ANSWER[..12]), 10);
        assert_eq!(r.contiguous(), ANSWER);
        assert_eq!(r.push(0, ANSWER), 0, "full retransmit adds nothing");
        assert!(r.header_complete());
        assert_eq!(r.duplicate(), u64::try_from(10 + 2 + ANSWER.len()).unwrap_or(0));
    }

    #[test]
    fn first_writer_wins_on_conflicting_overlap() {
        let mut r = Reassembly::default();
        r.push(0, b"HTTP/1.1 200 OK\r\n");
        r.push(9, b"403");
        assert_eq!(r.contiguous(), b"HTTP/1.1 200 OK\r\n");
    }

    #[test]
    fn bound_clips_and_extreme_offsets_never_panic() {
        let mut r = Reassembly::new(16);
        assert_eq!(r.push(0, ANSWER), 16);
        assert!(r.is_full() && r.clipped() > 0);
        assert_eq!(r.push(u32::MAX, b"xyz"), 0);
        assert_eq!(r.push(u32::MAX - 1, &[0; 100]), 0);
        assert_eq!(r.push(15, b""), 0);
        assert_eq!(r.push(16, b"x"), 0);
        assert_eq!(r.contiguous().len(), 16);
        let mut z = Reassembly::new(0);
        assert_eq!(z.push(0, ANSWER), 0);
        assert!(z.contiguous().is_empty() && z.body().is_empty() && z.is_full());
        let mut big = Reassembly::new(usize::MAX);
        assert_eq!(big.limit(), MAX_LIMIT);
        assert_eq!(big.push(u32::MAX, b"ab"), 0, "past the ceiling: dropped, nothing allocated");
        assert_eq!(big.push(100, b"ab"), 2);
        assert!(big.contiguous().is_empty() && big.has_gap());
    }

    #[test]
    fn fuzz_random_chunks_reassemble_the_stream() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let stream: Vec<u8> = (0..3000u32)
            .map(|i| b"HTTP/1.1 \r\n:ab"[usize::try_from(i % 14).unwrap_or(0)])
            .collect();
        for round in 0..300 {
            let limit = [DEFAULT_LIMIT, 1024, 64, 1][round % 4];
            let mut r = Reassembly::new(limit);
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < stream.len() {
                let n = 1 + rng.below(200);
                chunks.push((at, (at + n).min(stream.len())));
                at += n;
            }
            // retransmits and overlaps
            for _ in 0..rng.below(20) {
                let a = rng.below(stream.len());
                chunks.push((a, (a + rng.below(300)).min(stream.len())));
            }
            for i in (1..chunks.len()).rev() {
                chunks.swap(i, rng.below(i + 1));
            }
            for (a, b) in chunks {
                r.push(off(a), &stream[a..b]);
                assert!(r.contiguous().len() <= limit);
                assert_eq!(r.contiguous(), &stream[..r.contiguous().len()]);
            }
            assert_eq!(r.contiguous(), &stream[..stream.len().min(limit)]);
            assert_eq!(r.header_len(), header_end(&stream[..stream.len().min(limit)], 0));
        }
    }

    #[test]
    fn fuzz_garbage_never_panics() {
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let mut r = Reassembly::new(rng.below(5000));
            for _ in 0..rng.below(8) {
                let o = match rng.below(4) {
                    0 => u32::MAX - u32::try_from(rng.below(10)).unwrap_or(0),
                    1 => u32::try_from(rng.below(5000)).unwrap_or(0),
                    _ => u32::try_from(rng.next() & 0xffff_ffff).unwrap_or(0),
                };
                let bytes: Vec<u8> =
                    (0..rng.below(600)).map(|_| [b'\r', b'\n', b'a'][rng.below(3)]).collect();
                r.push(o, &bytes);
                let _ = (r.contiguous(), r.body(), r.header_len(), r.is_full(), r.has_gap());
                if let Some(h) = r.header_len() {
                    assert!(h <= r.contiguous().len());
                }
            }
        }
    }
}
