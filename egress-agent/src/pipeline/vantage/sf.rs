//! RFC 9209 `Proxy-Status`: a structured-field list (RFC 8941) of
//! intermediaries, nearest to the origin first. Each member is a name (token
//! or quoted string) with parameters: `error`, `details`, `next-hop`,
//! `rcode`, `received-status`, ….
//!
//! Example (Envoy, the only common proxy that emits it; it reports every
//! upstream connect failure as `connection_refused`, the cause in `details`):
//! `Proxy-Status: envoy; error=connection_refused; details="upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_timed_out}"`
//!
//! Tolerant and bounded: junk inside a member skips to the next top-level
//! comma; unterminated strings end at the end of the value; inner lists are
//! skipped; at most [`MAX_LIST`](super::answer::MAX_LIST) members and
//! [`MAX_PARAMS`] parameters per member are kept; every byte is looked at a
//! bounded number of times.
use serde::Serialize;

/// Parameters kept per `Proxy-Status` member.
pub const MAX_PARAMS: usize = 16;
/// Longest name or parameter value kept (longer ones are cut).
pub const MAX_VALUE: usize = 512;

/// One intermediary of a `Proxy-Status` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStatusEntry {
    /// The intermediary's name (`proxy_name` in Envoy; token or string).
    pub name: String,
    /// Parameters in order, keys lower-case; a bare key reads `?1`.
    /// String values are unquoted and unescaped.
    pub params: Vec<(String, String)>,
}

impl ProxyStatusEntry {
    /// The first parameter named `key` (lower-case).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The `error` parameter (an RFC 9209 error type), if any.
    pub fn error(&self) -> Option<&str> {
        self.param("error")
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// A quoted string after its opening quote; unescapes `\"` and `\\`.
    fn string(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        self.i += 1;
                        out.push(n);
                    }
                }
                _ => out.push(c),
            }
        }
        cut(String::from_utf8_lossy(&out).into_owned())
    }

    /// A bare item: token, number, boolean or byte sequence, up to a delimiter.
    fn bare(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b';' | b',' | b' ' | b'\t' | b'"' | b'(' | b')') {
                break;
            }
            self.i += 1;
        }
        cut(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    fn value(&mut self) -> String {
        if self.peek() == Some(b'"') {
            self.i += 1;
            self.string()
        } else {
            self.bare()
        }
    }

    /// Skip to just past the next top-level comma (quotes and parentheses respected).
    fn skip_member(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => {
                    self.string();
                }
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => return,
                _ => {}
            }
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut at = MAX_VALUE;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

fn is_key(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'*')
}

/// Append the members of one `Proxy-Status` field value to `out`, keeping at
/// most `cap` members in `out` in all.
pub fn parse_proxy_status(value: &str, out: &mut Vec<ProxyStatusEntry>, cap: usize) {
    let mut c = Cursor { b: value.as_bytes(), i: 0 };
    loop {
        c.skip_ows();
        let Some(first) = c.peek() else { return };
        if out.len() >= cap {
            return;
        }
        let name = match first {
            b',' => {
                c.i += 1;
                continue;
            }
            b'"' => {
                c.i += 1;
                c.string()
            }
            // inner lists and stray delimiters are not intermediaries
            b'(' | b';' | b')' | b'=' => String::new(),
            _ => c.bare(),
        };
        if name.is_empty() {
            c.skip_member();
            continue;
        }
        let mut entry = ProxyStatusEntry { name, params: Vec::new() };
        loop {
            c.skip_ows();
            if c.peek() != Some(b';') {
                break;
            }
            c.i += 1;
            c.skip_ows();
            let start = c.i;
            while c.peek().is_some_and(is_key) {
                c.i += 1;
            }
            let key = String::from_utf8_lossy(&c.b[start..c.i]).to_ascii_lowercase();
            let val = if c.peek() == Some(b'=') {
                c.i += 1;
                c.value()
            } else {
                "?1".to_string()
            };
            if key.is_empty() {
                break; // junk: drop the rest of this member
            }
            if entry.params.len() < MAX_PARAMS {
                entry.params.push((key, val));
            }
        }
        out.push(entry);
        // Whatever follows up to the next comma is junk (or nothing).
        c.skip_member();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Vec<ProxyStatusEntry> {
        let mut out = Vec::new();
        parse_proxy_status(v, &mut out, 16);
        out
    }

    #[test]
    fn rfc9209_examples() {
        let l = parse("r34.example.net; error=http_response_timeout, ExampleCDN");
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].name.as_str(), l[0].error()),
            ("r34.example.net", Some("http_response_timeout"))
        );
        assert_eq!((l[1].name.as_str(), l[1].error()), ("ExampleCDN", None));
        let l = parse("SomeReverseProxy; error=dns_error; rcode=NXDOMAIN");
        assert_eq!((l[0].error(), l[0].param("rcode")), (Some("dns_error"), Some("NXDOMAIN")));
        let l =
            parse("\"proxy \\\"one\\\"\"; error=connection_timeout; next-hop=\"10.0.0.7:3128\"");
        assert_eq!(
            (l[0].name.as_str(), l[0].param("next-hop")),
            ("proxy \"one\"", Some("10.0.0.7:3128"))
        );
    }

    #[test]
    fn envoy_details_keep_their_semicolons() {
        let v = "envoy; error=connection_refused; details=\"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}; UF\"";
        let l = parse(v);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].error(), Some("connection_refused"));
        assert_eq!(
            l[0].param("details"),
            Some(
                "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}; UF"
            )
        );
    }

    #[test]
    fn tolerates_junk_and_bounds() {
        let l = parse(
            " , ;x=1, (a b);error=x, ok;ERROR=dns_error;flag; =junk, \"unterminated; error=y",
        );
        let names: Vec<&str> = l.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ok", "unterminated; error=y"]);
        assert_eq!((l[0].error(), l[0].param("flag")), (Some("dns_error"), Some("?1")));
        let many = "p;error=x, ".repeat(100);
        assert_eq!(parse(&many).len(), 16);
        let params = format!("p{}", ";k=v".repeat(100));
        assert_eq!(parse(&params)[0].params.len(), MAX_PARAMS);
        let long = format!("p; details=\"{}\"", "é".repeat(1000));
        assert!(parse(&long)[0].param("details").is_some_and(|d| d.len() <= MAX_VALUE));
        for v in ["", ";", "\"", "\\", "p;", "p;=", "p;a=\"", "((((", "p;a=b c d, q", ",,,,"] {
            let _ = parse(v);
        }
        assert_eq!(
            parse("p;a=b c d, q").iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["p", "q"]
        );
    }
}
