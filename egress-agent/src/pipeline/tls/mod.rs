//! What the first bytes of a TLS connection say, in each direction:
//!
//! - client → server: the ClientHello's `server_name` (SNI), ALPN protocols and
//!   versions ([`parse_client_hello`]), also inside an HTTP CONNECT tunnel
//!   ([`client_hello_after_connect`]);
//! - server → client: did the handshake go on, or did the server answer with
//!   an alert (and which), or not speak TLS at all ([`classify_server_start`]).
//!
//! Pure and bounded: linear in the input, no panics on any bytes, and built for
//! TRUNCATED captures (the kernel copies at most ~1 KiB; a ClientHello may be
//! larger and span records and segments). Errors say precisely whether more
//! bytes could help ([`TlsParseError::Incomplete`]) or not.
use std::fmt;

mod hello;
mod start;
#[cfg(test)]
mod tests;

pub use start::{ClientStart, End, TlsStart, client_start};

/// TLS record content types (RFC 8446 §5.1).
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// TLSPlaintext.length limit (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;

/// What a ClientHello says. Fields come from the captured bytes only: when
/// `truncated`, the extensions after the cut are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The first record's `legacy_record_version` (usually 0x0301).
    pub record_version: u16,
    /// `legacy_version` (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The `host_name` of the server_name extension, as sent (ASCII, case
    /// kept). With `ech`, this is the ECH outer (public) name.
    pub sni: Option<String>,
    /// ALPN protocol names in client order (`h2`, `http/1.1`).
    pub alpn: Vec<String>,
    /// supported_versions in client order, GREASE values removed; empty when
    /// absent (a TLS ≤ 1.2 client).
    pub supported_versions: Vec<u16>,
    /// An encrypted_client_hello extension is present.
    pub ech: bool,
    /// The input ended inside the ClientHello, after the server_name extension
    /// (or its place) was read: `sni` is final, later extensions are unknown.
    pub truncated: bool,
}

impl ClientHello {
    /// The highest version offered: from supported_versions, else `legacy_version`.
    pub fn max_version(&self) -> u16 {
        self.supported_versions.iter().copied().max().unwrap_or(self.legacy_version)
    }
}

/// Why no ClientHello came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsParseError {
    /// A valid prefix of a ClientHello that ends before the server_name
    /// extension could be read (or before the hello's end, when it has none).
    /// `needed`: at least this many bytes from the start would hold the whole
    /// ClientHello (more if further records split it), when already known.
    #[error("incomplete ClientHello (needs at least {needed:?} bytes)")]
    Incomplete { needed: Option<usize> },
    /// Does not start with a TLS handshake record (content type 22, version 3.x).
    #[error("not TLS")]
    NotTls,
    /// A TLS handshake record, but its first message is not a ClientHello.
    #[error("TLS handshake message {handshake_type} is not a ClientHello")]
    NotClientHello { handshake_type: u8 },
    /// TLS framing whose contents break the ClientHello grammar.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the ClientHello that `bytes` start with (at a record boundary).
/// `Ok` means the server_name question is answered: `sni: None` in an `Ok`
/// is a hello WITHOUT SNI, never an unread one. Bytes after the hello are ignored.
pub fn parse_client_hello(bytes: &[u8]) -> Result<ClientHello, TlsParseError> {
    hello::parse(bytes)
}

/// Finds the ClientHello sent inside an HTTP CONNECT tunnel: `stream` is what
/// the client sent, from `CONNECT host:port HTTP/1.1`; the tunnel's first bytes
/// follow the blank line ending the request headers (CRLF or bare LF).
/// `None`: not a CONNECT request, its headers are not complete, or nothing
/// was sent after them yet.
pub fn client_hello_after_connect(stream: &[u8]) -> Option<Result<ClientHello, TlsParseError>> {
    let tunnel = &stream[tunnel_start(stream)?..];
    (!tunnel.is_empty()).then(|| parse_client_hello(tunnel))
}

/// Where the tunnel's bytes start in `stream` (what the client sent, from
/// `CONNECT host:port HTTP/1.1`): just past the blank line ending the
/// request headers (CRLF or bare LF). `None`: not a CONNECT request, or its
/// headers are not complete.
pub fn tunnel_start(stream: &[u8]) -> Option<usize> {
    if !stream.starts_with(b"CONNECT ") {
        return None;
    }
    let mut line_start = 0;
    loop {
        let newline = line_start + stream.get(line_start..)?.iter().position(|&b| b == b'\n')?;
        let line = &stream[line_start..newline];
        let blank = line.is_empty() || line == b"\r";
        line_start = newline + 1;
        if blank {
            return Some(line_start);
        }
    }
}

/// An alert's level (RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertLevel {
    Warning,
    Fatal,
    Other(u8),
}

/// What the first bytes a server sent back say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    /// A handshake record (ServerHello, HelloRetryRequest): the handshake goes on.
    Handshake,
    /// A plaintext alert: the server refused the hello ([`alert_name`] names it).
    Alert { level: AlertLevel, description: u8 },
    /// TLS framing, but a record no server starts with (change_cipher_spec,
    /// application_data, heartbeat, an alert whose length is not 2).
    Unexpected { content_type: u8 },
    /// Not TLS (an HTTP error page, an SSH banner, …).
    NotTls,
    /// Too few bytes to tell (fewer than a record header, or an alert's 7).
    Incomplete,
}

/// Classifies the first bytes the server sent (from the start of its stream).
pub fn classify_server_start(bytes: &[u8]) -> TlsOutcome {
    let Some(&content_type) = bytes.first() else { return TlsOutcome::Incomplete };
    if !(CONTENT_CHANGE_CIPHER_SPEC..=24).contains(&content_type) {
        return TlsOutcome::NotTls;
    }
    match bytes.get(1..3) {
        Some([3, minor]) if *minor <= 4 => {}
        Some(_) => return TlsOutcome::NotTls,
        None if bytes.get(1).is_some_and(|&b| b != 3) => return TlsOutcome::NotTls,
        None => return TlsOutcome::Incomplete,
    }
    let Some(&[hi, lo]) = bytes.get(3..5) else { return TlsOutcome::Incomplete };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Ciphertext may exceed the plaintext limit by 256 (RFC 8446) / 2048 (5246).
    if len == 0 || len > MAX_PLAINTEXT + 2048 {
        return TlsOutcome::NotTls;
    }
    match content_type {
        CONTENT_HANDSHAKE => TlsOutcome::Handshake,
        CONTENT_ALERT if len == 2 => match bytes.get(5..7) {
            Some(&[level, description]) => {
                let level = match level {
                    1 => AlertLevel::Warning,
                    2 => AlertLevel::Fatal,
                    other => AlertLevel::Other(other),
                };
                TlsOutcome::Alert { level, description }
            }
            _ => TlsOutcome::Incomplete,
        },
        other => TlsOutcome::Unexpected { content_type: other },
    }
}

/// The RFC name of an alert description (RFC 8446 §6, 5246 §7.2, 6066, 7301,
/// 7507, ECH), e.g. 40 → `handshake_failure`, 112 → `unrecognized_name`.
pub fn alert_name(description: u8) -> Option<&'static str> {
    Some(match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => return None,
    })
}

/// The name of a protocol version: 0x0304 → `TLSv1.3`, 0x0300 → `SSLv3`.
pub fn version_name(version: u16) -> Option<&'static str> {
    Some(match version {
        0x0300 => "SSLv3",
        0x0301 => "TLSv1.0",
        0x0302 => "TLSv1.1",
        0x0303 => "TLSv1.2",
        0x0304 => "TLSv1.3",
        _ => return None,
    })
}

/// GREASE values (RFC 8701): 0x0A0A, 0x1A1A, …, 0xFAFA.
fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

impl fmt::Display for TlsOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsOutcome::Handshake => f.write_str("handshake"),
            TlsOutcome::Alert { level, description } => {
                let level = match level {
                    AlertLevel::Warning => "warning",
                    AlertLevel::Fatal => "fatal",
                    AlertLevel::Other(_) => "alert",
                };
                match alert_name(*description) {
                    Some(name) => write!(f, "{level} alert {name} ({description})"),
                    None => write!(f, "{level} alert {description}"),
                }
            }
            TlsOutcome::Unexpected { content_type } => {
                write!(f, "unexpected TLS record type {content_type}")
            }
            TlsOutcome::NotTls => f.write_str("not TLS"),
            TlsOutcome::Incomplete => f.write_str("incomplete"),
        }
    }
}
