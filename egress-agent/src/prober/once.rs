//! One probe, as an application makes it: connect to the first hop, send
//! CONNECT, read the answer; with `probes.tls`, after a `200` the TLS
//! handshake with the target inside the tunnel ([`super::tls`]). One
//! deadline bounds all of it: the probe's timeout.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use super::{Attempt, tls::TlsProbe};
use crate::{pipeline::proxy_http, records::Reason};

/// Bytes of the proxy's answer read at most.
const MAX_ANSWER: usize = 4096;

fn io_reason(e: &std::io::Error) -> Reason {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Reason::Refused,
        K::TimedOut | K::WouldBlock => Reason::Timeout,
        K::HostUnreachable | K::NetworkUnreachable => Reason::Unreachable,
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof => Reason::Reset,
        _ => Reason::Other,
    }
}

/// One probe: connect to `proxy` (resolved now), send CONNECT, read the
/// answer; with `tls`, complete the handshake with `target` after a `200`.
pub fn probe_once(proxy: &str, target: &str, timeout: Duration, tls: Option<&TlsProbe>) -> Attempt {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut a =
        Attempt { local: None, elapsed: Duration::ZERO, status: None, error: None, tls: None };
    match tunnel(&mut a, proxy, target, deadline) {
        Ok((mut s, status, early)) => {
            a.status = Some(status);
            if let (200, Some(t)) = (status, tls) {
                a.tls = Some(t.handshake(&mut s, target, &early, deadline));
            }
        }
        Err(e) => a.error = Some(io_reason(&e)),
    }
    a.elapsed = t0.elapsed();
    a
}

/// Time left until `deadline`, never zero (a zero socket timeout is none).
pub(super) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// The CONNECT exchange: the socket, the proxy's status and the bytes that
/// came after the answer's header block (the tunnel's first bytes, if any).
fn tunnel(
    a: &mut Attempt,
    proxy: &str,
    target: &str,
    deadline: Instant,
) -> std::io::Result<(TcpStream, u16, Vec<u8>)> {
    let addr = proxy.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "proxy name has no address")
    })?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // Bind first: the local port is known even when the connect fails.
    let any: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    sock.bind(&any.into())?;
    a.local = sock.local_addr()?.as_socket();
    sock.connect_timeout(&addr.into(), left(deadline))?;
    let mut s: TcpStream = sock.into();
    s.set_write_timeout(Some(left(deadline)))?;
    // One write, one segment: the kernel reads the request line from the
    // first payload packet (write! would issue a write per piece).
    s.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: egress-agent-probe\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i + 4);
        }
        if buf.len() >= MAX_ANSWER {
            break None;
        }
        s.set_read_timeout(Some(left(deadline)))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = proxy_http::parse_response(&buf)
        .map(|r| r.status)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no status line"))?;
    let early = end.map(|e| buf.split_off(e)).unwrap_or_default();
    Ok((s, status, early))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_against_a_local_proxy_stand_in() {
        // A loopback listener answering like a proxy, then a closed port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut b = [0u8; 256];
            let n = s.read(&mut b).expect("read");
            let req = String::from_utf8_lossy(&b[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("write");
            req
        });
        let a =
            probe_once(&addr.to_string(), "login.example.test:443", Duration::from_secs(2), None);
        assert!(a.ok(), "{a:?}");
        assert!(a.local.is_some_and(|l| l.port() != 0));
        assert!(
            srv.join().expect("join").starts_with("CONNECT login.example.test:443 HTTP/1.1\r\n")
        );
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let a = probe_once(&closed.to_string(), "x.test:443", Duration::from_secs(2), None);
        assert_eq!((a.ok(), a.error), (false, Some(Reason::Refused)));
    }
}
