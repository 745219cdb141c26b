//! What the first bytes of a proxy connection say (HTTP): the request line the
//! client sent (`CONNECT host:port HTTP/1.1`) and the status line and a few
//! headers the proxy answered with. Bounded and fail-open: whatever does not
//! parse is simply not known.
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyRequest {
    pub method: String,
    /// `host:port` of a CONNECT, or the host[:port] of an absolute-form URL.
    pub target: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyResponse {
    pub status: u16,
    /// `Server:` header (e.g. `squid/5.7`).
    pub server: Option<String>,
    /// `X-Squid-Error:` (e.g. `ERR_ACCESS_DENIED 0`): the proxy made this answer itself.
    pub error: Option<String>,
    /// `X-Cache: … from <host>` / `Via:`: which proxy produced the answer.
    pub via: Option<String>,
}

fn first_line(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok()
}

pub fn parse_request(b: &[u8]) -> Option<ProxyRequest> {
    let line = first_line(b)?;
    let mut parts = line.split_ascii_whitespace();
    let method = parts.next()?;
    let uri = parts.next()?;
    if !method.bytes().all(|c| c.is_ascii_uppercase()) || method.is_empty() {
        return None;
    }
    let target = if method == "CONNECT" {
        uri.to_string()
    } else {
        // absolute-form: http://host[:port]/path
        let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
        rest.split('/').next().filter(|h| !h.is_empty())?.to_string()
    };
    Some(ProxyRequest { method: method.to_string(), target })
}

pub fn parse_response(b: &[u8]) -> Option<ProxyResponse> {
    let line = first_line(b)?;
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok().filter(|s| (100..600).contains(s))?;
    let mut r = ProxyResponse { status, ..ProxyResponse::default() };
    let text = String::from_utf8_lossy(b);
    for h in text.split("\r\n").skip(1) {
        let Some((k, v)) = h.split_once(':') else { continue };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "server" => r.server = Some(v),
            "x-squid-error" => r.error = Some(v),
            "x-cache" => {
                r.via = v.split_once(" from ").map(|(_, h)| h.trim().to_string()).or(r.via)
            }
            "via" if r.via.is_none() => r.via = Some(v),
            _ => {}
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_request() {
        let r = parse_request(
            b"CONNECT login.microsoft.com:443 HTTP/1.1\r\nHost: login.microsoft.com:443\r\n",
        )
        .expect("req");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("CONNECT", "login.microsoft.com:443"));
        // Only the first segment may be captured: the line can be cut short.
        let r = parse_request(b"CONNECT api.example.test:8443 HTTP/1.1").expect("req");
        assert_eq!(r.target, "api.example.test:8443");
        let r = parse_request(b"GET http://example.test:8080/x HTTP/1.1\r\n").expect("req");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "example.test:8080"));
        assert_eq!(parse_request(b"\x16\x03\x01\x02\x00"), None, "TLS is not a proxy request");
        assert_eq!(parse_request(b""), None);
        assert_eq!(parse_request(b"CONNECT"), None);
    }

    #[test]
    fn status_lines() {
        let r = parse_response(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("resp");
        assert_eq!(r.status, 200);
        let r = parse_response(b"HTTP/1.1 403 Forbidden\r\nServer: squid/5.7\r\nMime-Version: 1.0\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\nX-Cache: MISS from gce-proxy\r\nVia: 1.1 gce-proxy (squid/5.7)\r\n").expect("resp");
        assert_eq!(
            (r.status, r.error.as_deref(), r.via.as_deref(), r.server.as_deref()),
            (403, Some("ERR_ACCESS_DENIED 0"), Some("gce-proxy"), Some("squid/5.7"))
        );
        assert_eq!(parse_response(b"HTTP/1.0 503").map(|r| r.status), Some(503));
        assert_eq!(parse_response(b"HTTP/1.1 999 x"), None);
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH"), None);
        // Cut in the middle of a header: what is there is used.
        assert_eq!(
            parse_response(b"HTTP/1.1 407 Proxy Authentication Required\r\nServ").map(|r| r.status),
            Some(407)
        );
    }
}
