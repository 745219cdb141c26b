//! The flow table's TLS side: whether a held flow is a TLS flow or a
//! tunnel, where its ClientHello and the server's first record are, and when
//! its record can go out.
use super::Held;
use crate::pipeline::{
    tls::{self, TlsStart},
    vantage,
};

impl Held {
    /// A TLS flow (to a TLS port, or whose client spoke TLS first, as to an
    /// SNI-routing hop) rather than a proxy's CONNECT.
    pub(super) fn is_tls(&self) -> bool {
        self.tls_port || self.tx.contiguous().first() == Some(&tls::CONTENT_HANDSHAKE)
    }

    /// The client's and the server's first TLS bytes: the stream's start on
    /// a TLS flow; the tunnel's after a CONNECT request and a 2xx answer.
    fn tls_bytes(&self) -> Option<(&[u8], &[u8])> {
        let (tx, rx) = (self.tx.contiguous(), self.rx.contiguous());
        if self.is_tls() {
            return Some((tx, rx));
        }
        let status = vantage::parse_answer(rx).filter(|_| self.rx.header_complete())?.status;
        let at = tls::tunnel_start(tx).filter(|_| (200..300).contains(&status))?;
        Some((&tx[at..], self.rx.body()))
    }

    pub(super) fn tls_start(&self) -> Option<TlsStart> {
        let (client, server) = self.tls_bytes()?;
        TlsStart::read(client, self.tx.is_full(), server)
    }

    /// Whether the record can go out now. A proxy's error answer waits for
    /// its body; a tunnel that opened and a TLS flow wait for their TLS
    /// start (the ClientHello, then the server's first record), each at
    /// most the answer wait once started (`header_done_ns`).
    pub(super) fn settle(&mut self, now: u64) -> bool {
        if self.is_tls() {
            let client = tls::client_start(self.tx.contiguous(), self.tx.is_full());
            return match client {
                // The server spoke first: not a TLS client's start.
                tls::ClientStart::Pending if self.rx.contiguous().is_empty() => false,
                tls::ClientStart::Pending | tls::ClientStart::NotTls => true,
                tls::ClientStart::Hello(_) => self.wait_tls(now),
            };
        }
        if !self.rx.header_complete() {
            return false;
        }
        let Some(answer) = vantage::parse_answer(self.rx.contiguous()) else { return false };
        if (200..300).contains(&answer.status) {
            // The tunnel opened: its first bytes say whether TLS starts.
            let tx = self.tx.contiguous();
            let client = tls::tunnel_start(tx)
                .map(|at| tls::client_start(&tx[at..], self.tx.is_full()))
                .unwrap_or(tls::ClientStart::NotTls);
            return match client {
                tls::ClientStart::NotTls => true,
                tls::ClientStart::Pending | tls::ClientStart::Hello(_) => self.wait_tls(now),
            };
        }
        let body_complete = answer.content_length.is_some_and(|n| self.rx.body().len() as u64 >= n);
        if answer.status < 300 || body_complete || self.rx.is_full() {
            return true;
        }
        self.header_done_ns.get_or_insert(now);
        false
    }

    /// The TLS start is known (release), or the wait for it starts.
    fn wait_tls(&mut self, now: u64) -> bool {
        self.tls = self.tls_start();
        if self.tls.as_ref().is_some_and(TlsStart::settled) {
            return true;
        }
        self.header_done_ns.get_or_insert(now);
        false
    }
}
