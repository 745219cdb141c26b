//! The healthy origin server in the `internet` namespace.
//!
//! Per connection: if the client speaks first with an HTTP request within
//! 500 ms, answer `200 OK` with the banner as body (`GET /bytes/N` adds N
//! bytes) and close. Otherwise (a TLS ClientHello, or silence) write the
//! banner and wait for the client to close. So `curl -p -x PROXY
//! http://name:443/` gets a full answer through the tunnel, and a client that
//! only wants to see bytes come back gets the banner.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Netns;

/// Largest `/bytes/N` body served.
const MAX_BULK: usize = 64 << 20;

pub(crate) struct Origin {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Origin {
    pub fn start(ns: &Netns, addr: SocketAddr, banner: String) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = ns.spawn("eo-origin", move || -> anyhow::Result<()> {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            let _ = tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (flag, banner) = (flag.clone(), banner.clone());
                        std::thread::Builder::new()
                            .name("eo-origin-conn".into())
                            .spawn(move || serve(s, &banner, &flag))?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("origin on {addr} did not start"))?;
        Ok(Self { stop, handle: Some(handle) })
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut s: TcpStream, banner: &str, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = vec![0u8; 16 * 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    let first = &buf[..n];
    if first.starts_with(b"GET ") || first.starts_with(b"HEAD ") {
        let bulk = std::str::from_utf8(first)
            .ok()
            .and_then(|t| t.split_whitespace().nth(1))
            .and_then(|path| path.strip_prefix("/bytes/"))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_BULK);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            banner.len() + bulk
        );
        let _ = s.write_all(head.as_bytes());
        if !first.starts_with(b"HEAD ") {
            let _ = s.write_all(banner.as_bytes());
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = bulk;
            while left > 0 && !stop.load(Ordering::Relaxed) {
                let k = left.min(chunk.len());
                if s.write_all(&chunk[..k]).is_err() {
                    return;
                }
                left -= k;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    } else {
        let _ = s.write_all(banner.as_bytes());
    }
    // Wait for the client's FIN (bounded), so the client closes first.
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
