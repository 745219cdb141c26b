//! What an error answer says went wrong, and where relative to its maker.
//!
//! Checked in this order; the first that speaks decides:
//! 1. RFC 9209 `Proxy-Status` (the member carrying `error`): `http_request_denied`
//!    → denied at the maker; `dns_error`/`dns_timeout` → DNS at the maker;
//!    `connection_timeout` → timeout, `destination_ip_unroutable` →
//!    unreachable, `connection_terminated` → reset, response/read timeouts →
//!    timeout, all at the next hop; `connection_refused` and
//!    `destination_unavailable` → the next hop, the cause taken from
//!    `details` first (Envoy reports EVERY connect failure as
//!    `connection_refused`); other types fall through.
//! 2. Squid's `X-Squid-Error`: `ERR_ACCESS_DENIED` & co → denied at the
//!    maker; `ERR_CONNECT_FAIL <errno>` → the next hop, reason from the
//!    errno; `ERR_DNS_FAIL` → DNS at the maker; `ERR_CANNOT_FORWARD` →
//!    [`Place::CannotForward`]; read/lifetime timeouts → timeout at the next hop.
//! 3. 403 / 407 → denied at the maker.
//! 4. DNS wording (apache "DNS lookup failure", privoxy `404 No such domain`
//!    / "could not be resolved", "Unable to determine IP address") → DNS at
//!    the maker.
//! 5. A connect failure without an errno (tinyproxy `500 Unable to connect`,
//!    `502 Unable to connect to upstream proxy`, privoxy `503 Connect failed`,
//!    apache's generic 503, Envoy's "upstream connect error … delayed connect
//!    error: 111") → the next hop; an errno or cause words in the text are
//!    used, else the judge infers from the answer's latency.
//! 6. 504 → timeout at the next hop (the gateway says its upstream timed out).
//! 7. Any other ≥ 500 → `proxy_upstream_error` at the maker; 3xx/4xx → `other`.
use crate::records::Reason;

use super::answer::ProxyAnswer;
use super::maker::product_name;

/// Where the failure lies relative to the answer's maker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The maker itself (it denied, its lookup failed, it failed).
    Maker,
    /// The hop after the maker (`internet` past the last hop).
    Next,
    /// Squid's `ERR_CANNOT_FORWARD`: at a last hop Squid 5.7's DNS failure;
    /// with a parent configured, no live parent (the next hop).
    CannotForward,
}

/// How the reason is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// Stated by the answer (errno, error type, status).
    Stated(Reason),
    /// A connect failed and the answer gives no errno; `weak` is a label the
    /// answer gave that timing may overrule (Envoy's `connection_refused`).
    NoErrno { weak: Option<Reason> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub place: Place,
    pub what: What,
    /// The words of the answer that decided it, for the evidence line.
    pub text: String,
}

/// An errno (client socket, `X-Squid-Error`, Envoy details) as a reason.
/// EINVAL and EACCES are what a `blackhole` / `prohibit` route gives.
pub fn errno_reason(errno: i32) -> Option<Reason> {
    match errno {
        libc::ECONNREFUSED => Some(Reason::Refused),
        libc::ETIMEDOUT => Some(Reason::Timeout),
        libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EINVAL
        | libc::EACCES
        | libc::ENETDOWN
        | libc::EHOSTDOWN => Some(Reason::Unreachable),
        libc::ECONNRESET => Some(Reason::Reset),
        _ => None,
    }
}

/// A cause in free text (`details`, an Envoy body): an errno after
/// "connect error", else words.
fn text_reason(t: &str) -> Option<Reason> {
    let l = t.to_ascii_lowercase();
    for key in ["connect error", "connect_error"] {
        for (p, _) in l.match_indices(key) {
            let digits: String = l[p + key.len()..]
                .trim_start_matches([':', '_', ' ', '\t'])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Some(r) = digits.parse().ok().and_then(errno_reason) {
                return Some(r);
            }
        }
    }
    if ["timed out", "timed_out", "timeout"].iter().any(|w| l.contains(w)) {
        Some(Reason::Timeout)
    } else if l.contains("refused") {
        Some(Reason::Refused)
    } else if ["unreachable", "no route", "no_route"].iter().any(|w| l.contains(w)) {
        Some(Reason::Unreachable)
    } else {
        None
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn from_proxy_status(a: &ProxyAnswer) -> Option<Cause> {
    let p = a.proxy_status.iter().find(|p| p.error().is_some())?;
    let e = p.error().unwrap_or_default().to_ascii_lowercase();
    let details = p.param("details").unwrap_or_default();
    let mut text = format!("Proxy-Status: {}; error={e}", p.name);
    for k in ["details", "rcode", "next-hop"] {
        if let Some(v) = p.param(k) {
            text.push_str(&format!("; {k}=\"{}\"", cut(v, 100)));
        }
    }
    let stated = |place, r| Some(Cause { place, what: What::Stated(r), text: text.clone() });
    match e.as_str() {
        "http_request_denied" => stated(Place::Maker, Reason::ProxyDenied),
        "dns_error" | "dns_timeout" => stated(Place::Maker, Reason::DnsFailed),
        "connection_timeout"
        | "http_response_timeout"
        | "connection_read_timeout"
        | "connection_write_timeout" => stated(Place::Next, Reason::Timeout),
        "destination_ip_unroutable" => stated(Place::Next, Reason::Unreachable),
        "connection_terminated" => stated(Place::Next, Reason::Reset),
        "connection_refused" => match text_reason(details) {
            Some(r) => stated(Place::Next, r),
            None => Some(Cause {
                place: Place::Next,
                what: What::NoErrno { weak: Some(Reason::Refused) },
                text,
            }),
        },
        "destination_unavailable" => {
            stated(Place::Next, text_reason(details).unwrap_or(Reason::ProxyUpstreamError))
        }
        _ => None,
    }
}

fn from_squid(a: &ProxyAnswer) -> Option<Cause> {
    let e = a.squid_error.as_ref()?;
    let text = match e.errno {
        Some(n) => format!("X-Squid-Error: {} {n}", e.code),
        None => format!("X-Squid-Error: {}", e.code),
    };
    let errno = e.errno.and_then(errno_reason);
    let (place, what) = match e.code.as_str() {
        "ERR_ACCESS_DENIED"
        | "ERR_CACHE_ACCESS_DENIED"
        | "ERR_CACHE_MGR_ACCESS_DENIED"
        | "ERR_FORWARDING_DENIED" => (Place::Maker, What::Stated(Reason::ProxyDenied)),
        "ERR_CONNECT_FAIL" => {
            (Place::Next, errno.map_or(What::NoErrno { weak: None }, What::Stated))
        }
        "ERR_DNS_FAIL" => (Place::Maker, What::Stated(Reason::DnsFailed)),
        "ERR_CANNOT_FORWARD" => (Place::CannotForward, What::Stated(Reason::ProxyUpstreamError)),
        "ERR_READ_TIMEOUT" | "ERR_LIFETIME_EXP" => (Place::Next, What::Stated(Reason::Timeout)),
        "ERR_READ_ERROR" | "ERR_WRITE_ERROR" | "ERR_ZERO_SIZE_OBJECT" => {
            (Place::Next, What::Stated(errno.unwrap_or(Reason::ProxyUpstreamError)))
        }
        "ERR_SECURE_CONNECT_FAIL" => (Place::Next, What::Stated(Reason::Other)),
        _ => return None,
    };
    Some(Cause { place, what, text })
}

const DNS_WORDS: &[&str] = &[
    "dns lookup failure",
    "could not be resolved",
    "unable to determine ip address",
    "no such domain",
    "name or service not known",
];
const CONNECT_PHRASES: &[&str] = &["unable to connect", "connect failed"];
const ENVOY_CONNECT: &str = "upstream connect error";

/// The cause an error answer (status ≥ 300) states. `body` is what was
/// captured of its body (may be cut).
pub fn classify(a: &ProxyAnswer, body: &[u8]) -> Cause {
    if let Some(c) = from_proxy_status(a).or_else(|| from_squid(a)) {
        return c;
    }
    let line = a.status_line();
    let stated = |place, r: Reason, text: String| Cause { place, what: What::Stated(r), text };
    if matches!(a.status, 403 | 407) {
        return stated(Place::Maker, Reason::ProxyDenied, line);
    }
    let reason = a.reason.to_ascii_lowercase();
    let body_l = String::from_utf8_lossy(body).to_ascii_lowercase();
    if let Some(w) = DNS_WORDS.iter().find(|w| reason.contains(*w) || body_l.contains(*w)) {
        return stated(Place::Maker, Reason::DnsFailed, format!("{line} (\"{w}\")"));
    }
    if a.status >= 500 {
        let apache =
            a.status == 503 && a.server.as_deref().map(product_name).as_deref() == Some("apache");
        let envoy = body_l.find(ENVOY_CONNECT);
        if CONNECT_PHRASES.iter().any(|p| reason.contains(p))
            || body_l.contains("unable to connect")
            || apache
            || envoy.is_some()
        {
            let server = a.server.as_deref().map(|s| format!(" (Server: {s})")).unwrap_or_default();
            // Envoy's body carries the cause ("… delayed connect error: 111").
            let said =
                envoy.and_then(|p| text_reason(&body_l[p..].chars().take(300).collect::<String>()));
            let text = match envoy {
                Some(p) => format!(
                    "{line}: \"{}\"",
                    cut(String::from_utf8_lossy(body).get(p..).unwrap_or_default().trim(), 120)
                ),
                None => format!("{line}{server}"),
            };
            return Cause {
                place: Place::Next,
                what: said.map_or(What::NoErrno { weak: None }, What::Stated),
                text,
            };
        }
        if a.status == 504 {
            return stated(Place::Next, Reason::Timeout, line);
        }
        return stated(Place::Maker, Reason::ProxyUpstreamError, line);
    }
    stated(Place::Maker, Reason::Other, line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::vantage::answer::parse_answer;

    fn c(head: &str, body: &str) -> (Place, What) {
        let a = parse_answer(head.as_bytes()).expect("answer");
        let c = classify(&a, body.as_bytes());
        (c.place, c.what)
    }

    use Place::*;
    use Reason::*;
    use What::*;

    #[test]
    fn errnos() {
        for (e, r) in [
            (111, Refused),
            (110, Timeout),
            (113, Unreachable),
            (101, Unreachable),
            (22, Unreachable),
            (13, Unreachable),
            (100, Unreachable),
            (112, Unreachable),
            (104, Reset),
        ] {
            assert_eq!(errno_reason(e), Some(r), "errno {e}");
        }
        assert_eq!(errno_reason(0), None);
        assert_eq!(errno_reason(99), None);
    }

    #[test]
    fn proxy_status_types() {
        let ps = |v: &str| c(&format!("HTTP/1.1 502 Bad Gateway\r\nProxy-Status: {v}\r\n\r\n"), "");
        assert_eq!(ps("e; error=http_request_denied"), (Maker, Stated(ProxyDenied)));
        assert_eq!(ps("e; error=dns_error; rcode=NXDOMAIN"), (Maker, Stated(DnsFailed)));
        assert_eq!(ps("e; error=dns_timeout"), (Maker, Stated(DnsFailed)));
        assert_eq!(ps("e; error=connection_timeout"), (Next, Stated(Timeout)));
        assert_eq!(ps("e; error=destination_ip_unroutable"), (Next, Stated(Unreachable)));
        assert_eq!(ps("e; error=connection_refused"), (Next, NoErrno { weak: Some(Refused) }));
        assert_eq!(
            ps(
                "e; error=connection_refused; details=\"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_timed_out}\""
            ),
            (Next, Stated(Timeout))
        );
        assert_eq!(
            ps(
                "e; error=connection_refused; details=\"upstream_reset_before_response_started{connection_failure,delayed_connect_error:_111}\""
            ),
            (Next, Stated(Refused))
        );
        assert_eq!(
            ps(
                "e; error=connection_refused; details=\"upstream_reset_before_response_started{connection_timeout|connect_timeout}\""
            ),
            (Next, Stated(Timeout))
        );
        assert_eq!(ps("e; error=destination_unavailable"), (Next, Stated(ProxyUpstreamError)));
        assert_eq!(ps("e; error=connection_terminated"), (Next, Stated(Reset)));
        assert_eq!(
            ps("e; error=proxy_internal_error"),
            (Maker, Stated(ProxyUpstreamError)),
            "unmapped types fall through to the status"
        );
        assert_eq!(
            ps("e"),
            (Maker, Stated(ProxyUpstreamError)),
            "no error parameter: no statement"
        );
    }

    #[test]
    fn squid_codes() {
        let sq = |v: &str| {
            c(&format!("HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: {v}\r\n\r\n"), "")
        };
        assert_eq!(sq("ERR_ACCESS_DENIED 0"), (Maker, Stated(ProxyDenied)));
        assert_eq!(sq("ERR_CONNECT_FAIL 110"), (Next, Stated(Timeout)));
        assert_eq!(sq("ERR_CONNECT_FAIL 22"), (Next, Stated(Unreachable)));
        assert_eq!(sq("ERR_CONNECT_FAIL 0"), (Next, NoErrno { weak: None }));
        assert_eq!(sq("ERR_DNS_FAIL 0"), (Maker, Stated(DnsFailed)));
        assert_eq!(sq("ERR_CANNOT_FORWARD 0"), (CannotForward, Stated(ProxyUpstreamError)));
        assert_eq!(sq("ERR_READ_ERROR 104"), (Next, Stated(Reset)));
        assert_eq!(sq("ERR_SOMETHING_NEW 0"), (Maker, Stated(ProxyUpstreamError)));
    }

    #[test]
    fn generic_signatures() {
        assert_eq!(
            c("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", ""),
            (Maker, Stated(ProxyDenied))
        );
        assert_eq!(c("HTTP/1.1 404 No such domain\r\n\r\n", ""), (Maker, Stated(DnsFailed)));
        assert_eq!(
            c(
                "HTTP/1.1 502 Proxy Error\r\nServer: Apache/2.4.71 (Debian)\r\n\r\n",
                "<p>Reason: <strong>DNS lookup failure for: x.invalid</strong>"
            ),
            (Maker, Stated(DnsFailed))
        );
        assert_eq!(
            c("HTTP/1.1 500 Unable to connect\r\nServer: tinyproxy/1.11.1\r\n\r\n", ""),
            (Next, NoErrno { weak: None })
        );
        assert_eq!(
            c("HTTP/1.1 502 Unable to connect to upstream proxy\r\n\r\n", ""),
            (Next, NoErrno { weak: None })
        );
        assert_eq!(c("HTTP/1.1 503 Connect failed\r\n\r\n", ""), (Next, NoErrno { weak: None }));
        assert_eq!(
            c(
                "HTTP/1.1 503 Service Unavailable\r\nServer: Apache/2.4.71 (Debian)\r\n\r\n",
                "maintenance"
            ),
            (Next, NoErrno { weak: None })
        );
        let envoy = "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: delayed connect error: 111";
        assert_eq!(
            c("HTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\n\r\n", envoy),
            (Next, Stated(Refused))
        );
        assert_eq!(
            c(
                "HTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\n\r\n",
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
            ),
            (Next, Stated(Timeout))
        );
        assert_eq!(c("HTTP/1.1 504 Gateway Timeout\r\n\r\n", ""), (Next, Stated(Timeout)));
        assert_eq!(
            c("HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\n\r\n", ""),
            (Maker, Stated(ProxyUpstreamError))
        );
        assert_eq!(c("HTTP/1.1 400 Bad Request\r\n\r\n", ""), (Maker, Stated(Other)));
        assert_eq!(c("HTTP/1.1 302 Found\r\n\r\n", ""), (Maker, Stated(Other)));
    }
}
