//! A flow's TLS start, from its captured bytes: the client's ClientHello
//! (its SNI) and what the server sent back first, and the verdict they give.
//!
//! The client bytes are the stream's start on a TLS flow (a TLS port, an
//! SNI-routing gateway) or the tunnel's first bytes after a CONNECT request.
//! The server bytes are the stream's start, or what follows the proxy's 2xx
//! header block. A ClientHello answered by an alert, by bytes that are not
//! TLS, or by a close with nothing back is a failed handshake; handshake
//! bytes back mean it went on.
use super::{ClientHello, TlsOutcome, TlsParseError, classify_server_start, parse_client_hello};

/// What the client's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStart {
    /// Nothing yet, or a prefix of a ClientHello too short to say.
    Pending,
    /// Not a TLS ClientHello (plain HTTP in a tunnel, another protocol).
    NotTls,
    Hello(ClientHello),
}

/// Reads the client's first bytes. `full`: the capture holds no more bytes
/// than these (its bound is reached), so a hello cut before its SNI is final.
pub fn client_start(bytes: &[u8], full: bool) -> ClientStart {
    if bytes.is_empty() {
        return ClientStart::Pending;
    }
    match parse_client_hello(bytes) {
        Ok(h) => ClientStart::Hello(h),
        Err(TlsParseError::Incomplete { .. }) if full => {
            ClientStart::Hello(ClientHello { truncated: true, ..ClientHello::default() })
        }
        Err(TlsParseError::Incomplete { .. }) => ClientStart::Pending,
        Err(_) => ClientStart::NotTls,
    }
}

/// How the flow ended, if it did, as far as the TLS start cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Still open (or its end not known yet).
    Open,
    /// Closed by an orderly close (FIN).
    Closed,
    /// Reset.
    Reset,
}

/// A flow's TLS start: the hello's SNI and the server's first answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStart {
    /// The client sent a ClientHello.
    pub hello: bool,
    /// Its server_name.
    pub sni: Option<String>,
    /// The server's first bytes (`None`: none seen).
    pub server: Option<TlsOutcome>,
}

impl TlsStart {
    /// From both sides' first bytes; `None` while the client's are pending
    /// or when they are not a ClientHello.
    pub fn read(client: &[u8], client_full: bool, server: &[u8]) -> Option<Self> {
        let ClientStart::Hello(h) = client_start(client, client_full) else { return None };
        let server = (!server.is_empty()).then(|| classify_server_start(server));
        Some(Self { hello: true, sni: h.sni, server })
    }

    /// Whether the server's answer is known (the verdict will not change
    /// before the end of the flow).
    pub fn settled(&self) -> bool {
        matches!(self.server, Some(s) if s != TlsOutcome::Incomplete)
    }

    /// Why the handshake failed (the record's evidence), or `None` when it
    /// went on or its outcome is not known yet.
    pub fn failure(&self, end: End) -> Option<String> {
        if !self.hello {
            return None;
        }
        let name = self.sni.as_deref().map_or_else(String::new, |s| format!(" for {s}"));
        match self.server {
            Some(TlsOutcome::Handshake) => None,
            Some(o @ TlsOutcome::Alert { .. }) => {
                Some(format!("TLS: {o} after the ClientHello{name}"))
            }
            Some(TlsOutcome::NotTls) | Some(TlsOutcome::Unexpected { .. }) => {
                let o = self.server.map(|o| o.to_string()).unwrap_or_default();
                Some(format!("TLS: the ClientHello{name} was answered with {o} bytes"))
            }
            None | Some(TlsOutcome::Incomplete) => match end {
                End::Open => None,
                End::Closed => Some(format!(
                    "TLS: closed after the ClientHello{name}, no handshake bytes back"
                )),
                End::Reset => {
                    Some(format!("TLS: reset after the ClientHello{name}, no handshake bytes back"))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str) -> Vec<u8> {
        // A minimal TLS 1.2 hello with one server_name.
        let host = name.as_bytes();
        let mut sni = vec![0, 0];
        let list_len = (host.len() + 3) as u16;
        sni.extend_from_slice(&(list_len + 2).to_be_bytes());
        sni.extend_from_slice(&list_len.to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
        sni.extend_from_slice(host);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        body.extend_from_slice(&sni);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    const SERVER_HELLO: &[u8] = &[22, 3, 3, 0, 60, 2, 0, 0, 56];
    const ALERT_40: &[u8] = &[21, 3, 3, 0, 2, 2, 40];

    #[test]
    fn client_starts() {
        let h = hello("api.example.test");
        assert_eq!(client_start(&[], false), ClientStart::Pending);
        assert_eq!(client_start(&h[..20], false), ClientStart::Pending);
        assert!(
            matches!(client_start(&h[..20], true), ClientStart::Hello(ref c) if c.sni.is_none())
        );
        assert_eq!(client_start(b"GET / HTTP/1.1\r\n", false), ClientStart::NotTls);
        let ClientStart::Hello(c) = client_start(&h, false) else { panic!("a hello") };
        assert_eq!(c.sni.as_deref(), Some("api.example.test"));
    }

    #[test]
    fn outcomes() {
        let h = hello("x.test");
        let ok = TlsStart::read(&h, false, SERVER_HELLO).expect("hello");
        assert!(ok.settled());
        assert_eq!(ok.failure(End::Reset), None, "handshake bytes came back: ok");

        let alert = TlsStart::read(&h, false, ALERT_40).expect("hello");
        assert!(alert.settled());
        let why = alert.failure(End::Open).expect("an alert fails");
        assert!(why.contains("handshake_failure") && why.contains("x.test"), "{why}");

        let http = TlsStart::read(&h, false, b"HTTP/1.1 400 Bad Request\r\n").expect("hello");
        assert!(http.failure(End::Open).expect("not TLS back").contains("not TLS"));

        let silent = TlsStart::read(&h, false, &[]).expect("hello");
        assert!(!silent.settled());
        assert_eq!(silent.failure(End::Open), None, "still open: not known yet");
        assert!(silent.failure(End::Reset).expect("reset").contains("reset after"));
        assert!(silent.failure(End::Closed).expect("closed").contains("closed after"));

        let partial = TlsStart::read(&h, false, &[22, 3]).expect("hello");
        assert!(!partial.settled());

        assert_eq!(TlsStart::read(b"GET / HTTP/1.1\r\n\r\n", false, &[]), None);
        assert_eq!(TlsStart::read(&[], false, ALERT_40), None);
    }
}
