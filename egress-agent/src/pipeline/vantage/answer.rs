//! A proxy's answer to CONNECT, read from the reassembled bytes: the status
//! line and the headers that say who made the answer and why.
//!
//! - `None` until the status line is complete (`\n` seen): a status line
//!   split across segments is "not yet known", never a failure.
//! - Only complete header lines are read: a line cut by the capture
//!   (`Content-Length: 30` of `3075`) is not guessed at.
//! - Header names are case-insensitive; values are trimmed of SP/HT;
//!   obs-fold continuation lines are ignored; lines without a colon or with
//!   whitespace in the name are skipped.
//! - Lists (`Via`, `X-Cache*` hosts, `Proxy-Status`) keep at most
//!   [`MAX_LIST`] entries; every byte is looked at a bounded number of times.
//!
//! Evidence read (see DESIGN.md "Proxy facts that shape verdicts"):
//! `Server`, `Via` (nearest-to-origin first), `X-Cache` / `X-Cache-Lookup`
//! "… from HOST[:PORT]", Squid's `X-Squid-Error: ERR_… ERRNO`, RFC 9209
//! `Proxy-Status`, `Content-Length` (a Squid hop relays a parent's error as
//! the header block alone), and `Proxy-agent` (who answered a 200 itself).
//! This supersedes `proxy::parse_response` for answers; `proxy.rs` stays for
//! its callers.
use serde::Serialize;

pub use super::sf::ProxyStatusEntry;
use super::sf::{MAX_VALUE, parse_proxy_status};

/// Entries kept per list (`via`, `cache_from`, `proxy_status`).
pub const MAX_LIST: usize = 16;
/// A status line longer than this is not an HTTP answer.
pub const MAX_STATUS_LINE: usize = 1024;

/// One `Via` member: `protocol received-by [comment]`, e.g.
/// `1.1 hop2-squid.test (squid/5.7)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ViaEntry {
    /// `1.1`, `HTTP/1.1`, …
    pub protocol: String,
    /// `host[:port]` or a pseudonym, as written.
    pub received_by: String,
    /// The comment without its outer parentheses (`squid/5.7`).
    pub comment: Option<String>,
}

impl ViaEntry {
    /// The received-by host without a port (IPv6 brackets kept).
    pub fn host(&self) -> &str {
        strip_port(&self.received_by)
    }

    /// The comment's first word when it looks like a product (`squid/5.7`).
    pub fn product(&self) -> Option<&str> {
        let word = self.comment.as_deref()?.split_ascii_whitespace().next()?;
        word.bytes().next().filter(u8::is_ascii_alphabetic).map(|_| word)
    }
}

/// Squid's `X-Squid-Error: CODE ERRNO`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SquidError {
    /// `ERR_CONNECT_FAIL`, `ERR_ACCESS_DENIED`, `ERR_CANNOT_FORWARD`, …
    pub code: String,
    /// The errno Squid saw (`111`, `110`, …); `Some(0)` when it wrote `0`.
    pub errno: Option<i32>,
}

/// What the proxy answered. See the module header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyAnswer {
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// The reason phrase as written (Squid rewrites it when relaying).
    pub reason: String,
    pub server: Option<String>,
    /// Every `Via` member of every `Via` line, in order (nearest-to-origin first).
    pub via: Vec<ViaEntry>,
    /// `HOST[:PORT]` from `X-Cache` / `X-Cache-Lookup` "… from HOST[:PORT]".
    pub cache_from: Vec<String>,
    pub squid_error: Option<SquidError>,
    /// RFC 9209 members, nearest-to-origin first.
    pub proxy_status: Vec<ProxyStatusEntry>,
    pub content_length: Option<u64>,
    pub proxy_agent: Option<String>,
    /// The blank line ending the header block was seen.
    pub header_complete: bool,
    /// Bytes of the header block (status line through the blank line) when
    /// complete; otherwise the bytes of the complete lines read so far.
    pub header_len: usize,
}

impl ProxyAnswer {
    /// The status line as it would be quoted: `503 Service Unavailable`.
    pub fn status_line(&self) -> String {
        if self.reason.is_empty() {
            self.status.to_string()
        } else {
            format!("{} {}", self.status, self.reason)
        }
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 stays whole.
pub fn strip_port(s: &str) -> &str {
    if s.starts_with('[') {
        return s.find(']').map_or(s, |e| &s[..=e]);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => s,
    }
}

fn text(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    let t = t.trim_matches([' ', '\t', '\r']);
    let mut s = t.to_string();
    if s.len() > MAX_VALUE {
        let mut at = MAX_VALUE;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

fn parse_status_line(line: &[u8]) -> Option<(String, u16, String)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let sp = rest.iter().position(|&c| c == b' ')?;
    let version = format!("HTTP/{}", String::from_utf8_lossy(&rest[..sp]));
    let rest = &rest[sp..];
    let rest = &rest[rest.iter().position(|&c| c != b' ')?..];
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&c| c != b' ' && c != b'\t')
    {
        return None;
    }
    let status: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    if !(100..=599).contains(&status) {
        return None;
    }
    Some((version, status, text(rest.get(3..).unwrap_or_default())))
}

/// Split a header value at top-level commas (not inside `(…)` comments or
/// `"…"` strings).
fn split_list(v: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0usize, false, 0);
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted || depth > 0 => i += 1,
            b'"' if depth == 0 => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth = depth.saturating_sub(1),
            b',' if !quoted && depth == 0 => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&v[start.min(v.len())..]);
    out
}

/// The members of one `Via` field value, appended to `out` up to [`MAX_LIST`].
pub fn parse_via(value: &str, out: &mut Vec<ViaEntry>) {
    for member in split_list(value) {
        if out.len() >= MAX_LIST {
            return;
        }
        let m = member.trim_matches([' ', '\t']);
        let (head, comment) = match m.find('(') {
            Some(p) => {
                let c = m[p + 1..].trim_end_matches([' ', '\t']);
                (&m[..p], Some(c.strip_suffix(')').unwrap_or(c).trim().to_string()))
            }
            None => (m, None),
        };
        let mut words = head.split_ascii_whitespace();
        let (Some(protocol), Some(received_by)) = (words.next(), words.next()) else { continue };
        out.push(ViaEntry {
            protocol: protocol.to_string(),
            received_by: received_by.to_string(),
            comment,
        });
    }
}

/// `MISS from hop2-squid.test` → `hop2-squid.test`.
fn from_host(v: &str) -> Option<String> {
    let mut words = v.split_ascii_whitespace();
    words.by_ref().find(|w| w.eq_ignore_ascii_case("from"))?;
    words.next().map(str::to_string)
}

fn squid_error(v: &str) -> Option<SquidError> {
    let mut words = v.split_ascii_whitespace();
    let code = words.next().filter(|c| c.starts_with("ERR_") || c.starts_with("err_"))?;
    Some(SquidError {
        code: code.to_ascii_uppercase(),
        errno: words.next().and_then(|e| e.parse().ok()),
    })
}

/// Parse what is known so far of a proxy's answer. `None` until a complete
/// status line `HTTP/x.y NNN [reason]` is there, or if the bytes are not one.
pub fn parse_answer(b: &[u8]) -> Option<ProxyAnswer> {
    let nl = b.iter().take(MAX_STATUS_LINE).position(|&c| c == b'\n')?;
    let (version, status, reason) = parse_status_line(&b[..nl])?;
    let mut a = ProxyAnswer { version, status, reason, ..ProxyAnswer::default() };
    let mut at = nl + 1;
    a.header_len = at;
    while at < b.len() {
        let Some(len) = b[at..].iter().position(|&c| c == b'\n') else { break };
        let line = &b[at..at + len];
        at += len + 1;
        a.header_len = at;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            a.header_complete = true;
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            continue; // obs-fold: ignored
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else { continue };
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let value = text(&line[colon + 1..]);
        header(&mut a, &String::from_utf8_lossy(name).to_ascii_lowercase(), value);
    }
    Some(a)
}

fn header(a: &mut ProxyAnswer, name: &str, value: String) {
    match name {
        "server" if a.server.is_none() => a.server = Some(value),
        "proxy-agent" if a.proxy_agent.is_none() => a.proxy_agent = Some(value),
        "via" => parse_via(&value, &mut a.via),
        "x-cache" | "x-cache-lookup" if a.cache_from.len() < MAX_LIST => {
            a.cache_from.extend(from_host(&value))
        }
        "x-squid-error" if a.squid_error.is_none() => a.squid_error = squid_error(&value),
        "proxy-status" => parse_proxy_status(&value, &mut a.proxy_status, MAX_LIST),
        "content-length" if a.content_length.is_none() => a.content_length = value.parse().ok(),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY_RELAY: &[u8] = b"HTTP/1.1 403 Forbidden\r\nVia: 1.1 hop2-squid.test (squid/5.7), 1.1 hop1-tiny.test (tinyproxy/1.11.1)\r\nServer: squid/5.7\r\nContent-Length: 3075\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\nX-Cache: MISS from hop2-squid.test\r\nX-Cache-Lookup: NONE from hop2-squid.test:31280\r\n\r\n<!DOCTYPE";

    #[test]
    fn full_squid_relay_through_tinyproxy() {
        let a = parse_answer(TINY_RELAY).expect("answer");
        assert_eq!(
            (a.version.as_str(), a.status, a.reason.as_str()),
            ("HTTP/1.1", 403, "Forbidden")
        );
        assert_eq!(a.server.as_deref(), Some("squid/5.7"));
        let via: Vec<(&str, &str, Option<&str>)> =
            a.via.iter().map(|v| (v.protocol.as_str(), v.host(), v.product())).collect();
        assert_eq!(
            via,
            [
                ("1.1", "hop2-squid.test", Some("squid/5.7")),
                ("1.1", "hop1-tiny.test", Some("tinyproxy/1.11.1"))
            ]
        );
        assert_eq!(a.cache_from, ["hop2-squid.test", "hop2-squid.test:31280"]);
        assert_eq!(
            a.squid_error,
            Some(SquidError { code: "ERR_ACCESS_DENIED".into(), errno: Some(0) })
        );
        assert_eq!((a.content_length, a.header_complete), (Some(3075), true));
        assert_eq!(&TINY_RELAY[a.header_len..], b"<!DOCTYPE");
    }

    #[test]
    fn status_line_split_is_not_yet_known() {
        for cut in 0..24 {
            assert_eq!(parse_answer(&TINY_RELAY[..cut]), None, "cut at {cut}");
        }
        let a = parse_answer(&TINY_RELAY[..24]).expect("status line complete");
        assert_eq!((a.status, a.header_complete, a.header_len, a.via.len()), (403, false, 24, 0));
    }

    #[test]
    fn every_prefix_parses_monotonically() {
        let full = parse_answer(TINY_RELAY).expect("answer");
        let mut seen_via = 0;
        for cut in 24..=TINY_RELAY.len() {
            let a = parse_answer(&TINY_RELAY[..cut]).expect("status line known");
            assert_eq!(a.status, 403);
            assert!(a.via.len() >= seen_via && a.via.len() <= 2);
            seen_via = a.via.len();
            // A cut line is never read: no half Content-Length.
            assert!(a.content_length.is_none() || a.content_length == Some(3075));
            assert!(a.header_len <= cut);
        }
        assert_eq!(parse_answer(&TINY_RELAY[..full.header_len]), Some(full));
    }

    #[test]
    fn case_lws_fold_and_junk() {
        let b = b"HTTP/1.0   502   Bad  Gateway \r\nSERVER:\t Envoy \r\nvia : 1.1 x\r\n  folded continuation: ignored\r\nno colon here\r\nVIA:1.0 a:3128 (Squid/6.1 (x, y)) , , HTTP/1.1 [::1]:8080, 1.1\r\ncontent-length: nope\r\nContent-Length: 12\r\nx-squid-error: ERR_CONNECT_FAIL\r\n\n";
        let a = parse_answer(b).expect("answer");
        assert_eq!(
            (a.status, a.reason.as_str(), a.server.as_deref()),
            (502, "Bad  Gateway", Some("Envoy"))
        );
        let via: Vec<(&str, &str, Option<&str>)> =
            a.via.iter().map(|v| (v.received_by.as_str(), v.host(), v.product())).collect();
        assert_eq!(
            via,
            [("a:3128", "a", Some("Squid/6.1")), ("[::1]:8080", "[::1]", None)],
            "'via ' with a space is not a header name"
        );
        assert_eq!(a.via[0].comment.as_deref(), Some("Squid/6.1 (x, y)"));
        assert_eq!(a.content_length, Some(12), "the first parsable Content-Length counts");
        assert_eq!(
            a.squid_error,
            Some(SquidError { code: "ERR_CONNECT_FAIL".into(), errno: None })
        );
        assert!(a.header_complete && a.header_len == b.len());
    }

    #[test]
    fn not_http_or_bad_status() {
        for b in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 999 x\r\n",
            b"HTTP/1.1 20 x\r\n",
            b"HTTP/1.1 2000 x\r\n",
            b"\x16\x03\x01\x00\n",
            b"HTTP/1.1\r\n",
            b"http/1.1 200 OK\r\n",
        ] {
            assert_eq!(parse_answer(b), None, "{}", String::from_utf8_lossy(b));
        }
        let long = [b'H'; 2000];
        assert_eq!(parse_answer(&long), None);
        assert_eq!(
            parse_answer(b"HTTP/1.1 200\r\n\r\n").map(|a| (a.status, a.reason, a.header_complete)),
            Some((200, String::new(), true))
        );
    }

    #[test]
    fn bounded_lists_and_proxy_status_lines_combine() {
        let mut b = b"HTTP/1.1 503 x\r\n".to_vec();
        for i in 0..50 {
            b.extend_from_slice(
                format!(
                    "Via: 1.1 p{i}, 1.1 q{i}\r\nX-Cache: MISS from c{i}\r\nProxy-Status: s{i}\r\n"
                )
                .as_bytes(),
            );
        }
        b.extend_from_slice(b"\r\n");
        let a = parse_answer(&b).expect("answer");
        assert_eq!(
            (a.via.len(), a.cache_from.len(), a.proxy_status.len()),
            (MAX_LIST, MAX_LIST, MAX_LIST)
        );
        assert_eq!((a.via[1].host(), a.proxy_status[1].name.as_str()), ("q0", "s1"));
        let a = parse_answer(b"HTTP/1.1 502 Bad Gateway\r\nProxy-Status: edge; error=connection_timeout\r\nproxy-status: gw; error=destination_unavailable\r\n\r\n").expect("answer");
        let ps: Vec<(&str, Option<&str>)> =
            a.proxy_status.iter().map(|p| (p.name.as_str(), p.error())).collect();
        assert_eq!(
            ps,
            [("edge", Some("connection_timeout")), ("gw", Some("destination_unavailable"))]
        );
    }

    #[test]
    fn strip_ports() {
        assert_eq!(strip_port("hop2-squid.test:31280"), "hop2-squid.test");
        assert_eq!(strip_port("gce-proxy"), "gce-proxy");
        assert_eq!(strip_port("[fd00::1]:3128"), "[fd00::1]");
        assert_eq!(strip_port("fd00::1"), "fd00::1");
        assert_eq!(strip_port("a:b"), "a:b");
    }

    #[test]
    fn never_panics_on_noise() {
        let mut seed = 7u64;
        let alphabet = b"HTTP/1.1 503 \r\n:,;()\"\\Via Proxy-Status x";
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = usize::try_from(seed % 300).unwrap_or(0);
            let mut b = b"HTTP/1.1 503 x\r\n".to_vec();
            let mut s = seed;
            for _ in 0..n {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                b.push(alphabet[usize::try_from((s >> 33) % 40).unwrap_or(0)]);
            }
            let _ = parse_answer(&b);
            let _ = parse_answer(&b[16..]);
        }
    }
}
