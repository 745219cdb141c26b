//! `NETLINK_NETFILTER` sockets over `netlink-sys`: the event socket
//! (subscribed to NEW and DESTROY) and the request socket (dumps, stats,
//! single-entry GETs), both bound to the calling thread's network namespace.
use std::{
    io,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use super::ctnetlink::{
    CtDecodeError, Decoded, NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW, decode_all,
};

/// Receive buffer: far above one datagram (a dump batch is ≤ 32 KiB).
const RECV_BUF: usize = 256 * 1024;
/// Kernel socket buffer asked for on the event socket (SO_RCVBUFFORCE as
/// root, else SO_RCVBUF capped by rmem_max).
const EVENT_SOCKET_BUF: libc::c_int = 8 * 1024 * 1024;

/// A `NETLINK_NETFILTER` socket of the calling thread's network namespace.
pub(crate) struct CtSocket {
    sock: Socket,
    buf: Vec<u8>,
}

impl CtSocket {
    fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        Ok(Self { sock, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// Subscribed to NEW and DESTROY events, with a large receive buffer.
    pub(crate) fn events() -> io::Result<Self> {
        let s = Self::open()?;
        s.sock.add_membership(NFNLGRP_CONNTRACK_NEW)?;
        s.sock.add_membership(NFNLGRP_CONNTRACK_DESTROY)?;
        if setsockopt_int(&s.sock, libc::SO_RCVBUFFORCE, EVENT_SOCKET_BUF).is_err() {
            // Best effort: capped by net.core.rmem_max.
            let _ = setsockopt_int(&s.sock, libc::SO_RCVBUF, EVENT_SOCKET_BUF);
        }
        Ok(s)
    }

    /// For requests (dumps, stats); receives time out after `timeout`.
    pub(crate) fn query(timeout: Duration) -> io::Result<Self> {
        let s = Self::open()?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
        };
        // SAFETY: valid fd, option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                s.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    pub(crate) fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.sock.send_to(msg, &NlAddr::new(0, 0), 0).map(|_| ())
    }

    /// Wait up to `timeout` for data. EINTR reads as "not ready".
    pub(crate) fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        Ok(rc > 0)
    }

    /// One datagram. `nonblocking` maps "nothing queued" to WouldBlock;
    /// ENOBUFS (events dropped by the kernel) is returned as an error and
    /// the socket stays usable. A datagram larger than the buffer is an
    /// InvalidData error.
    pub(crate) fn recv(&mut self, nonblocking: bool) -> io::Result<&[u8]> {
        self.buf.clear();
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        let n = self.sock.recv(&mut self.buf, flags)?;
        if n > self.buf.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink datagram of {n} bytes truncated"),
            ));
        }
        Ok(&self.buf[..self.buf.len().min(n)])
    }

    /// Send a dump request and feed every decoded reply to `each` until
    /// NLMSG_DONE. Replies to other sequence numbers (a previous, abandoned
    /// dump) are skipped. Errors: the kernel's errno, a receive error, or
    /// TimedOut past `deadline`.
    pub(crate) fn dump(
        &mut self,
        request: &[u8],
        seq: u32,
        deadline: Instant,
        mut each: impl FnMut(Result<Decoded, CtDecodeError>),
    ) -> io::Result<()> {
        self.send(request)?;
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "conntrack dump did not finish in time",
                ));
            }
            let data = match self.recv(false) {
                Ok(d) => d,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    each(Err(CtDecodeError::Datagram(e)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for d in decode_all(data) {
                match d {
                    Ok(Decoded::Done { seq: s }) if s == seq => return Ok(()),
                    Ok(Decoded::Error { seq: s, errno }) if s == seq => {
                        return if errno == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(errno))
                        };
                    }
                    Ok(
                        Decoded::Flow { seq: s, .. }
                        | Decoded::OtherProto { seq: s, .. }
                        | Decoded::Stats { seq: s, .. }
                        | Decoded::Done { seq: s }
                        | Decoded::Error { seq: s, .. },
                    ) if s != seq => {}
                    other => each(other),
                }
            }
        }
    }
}

impl CtSocket {
    /// Send a single-entry GET: `Ok(true)` the kernel has it, `Ok(false)`
    /// it does not (ENOENT).
    pub(crate) fn exists(
        &mut self,
        request: &[u8],
        seq: u32,
        deadline: Instant,
    ) -> io::Result<bool> {
        self.send(request)?;
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "conntrack GET not answered in time",
                ));
            }
            let data = match self.recv(false) {
                Ok(d) => d,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::InvalidData
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            for d in decode_all(data) {
                match d {
                    Ok(Decoded::Flow { seq: s, .. } | Decoded::OtherProto { seq: s, .. })
                        if s == seq =>
                    {
                        return Ok(true);
                    }
                    Ok(Decoded::Error { seq: s, errno }) if s == seq && errno == libc::ENOENT => {
                        return Ok(false);
                    }
                    Ok(Decoded::Error { seq: s, errno }) if s == seq && errno != 0 => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    _ => {}
                }
            }
        }
    }
}

fn setsockopt_int(sock: &Socket, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd, an int option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
