//! Real TCP traffic inside namespaces: servers that answer with a payload and
//! clients that connect, read and report what the kernel said.
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

/// A listener inside a namespace that writes `reply` bytes to each client.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<anyhow::Result<()>>>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr, reply: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = ns.spawn("eo-server", move || -> anyhow::Result<()> {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            let _ = tx.send(());
            let payload = vec![b'x'; reply];
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false)?;
                        s.set_write_timeout(Some(Duration::from_secs(20)))?;
                        let _ = s.write_all(&payload);
                        let _ = s.shutdown(std::net::Shutdown::Write);
                        // Wait for the client's FIN so the client closes first.
                        s.set_read_timeout(Some(Duration::from_secs(10)))?;
                        let mut sink = [0u8; 16 * 1024];
                        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
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
            .map_err(|_| anyhow::anyhow!("server on {addr} did not start"))?;
        Ok(Self { addr, stop, handle: Some(handle) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What a client saw.
#[derive(Debug)]
pub struct ClientResult {
    pub connect: Result<(), std::io::Error>,
    pub bytes: usize,
    pub elapsed: Duration,
}

/// Connect from inside `ns` on a thread named `comm`, send `upload` bytes,
/// read to EOF, close.
pub fn fetch(
    ns: &Netns,
    comm: &str,
    addr: SocketAddr,
    upload: usize,
    timeout: Duration,
) -> anyhow::Result<ClientResult> {
    ns.within(comm, move || {
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout));
                let _ = s.set_write_timeout(Some(timeout));
                if upload > 0 {
                    let _ = s.write_all(&vec![b'u'; upload]);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut buf = vec![0u8; 64 * 1024];
                let mut bytes = 0;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    bytes += n;
                }
                ClientResult { connect: Ok(()), bytes, elapsed: t0.elapsed() }
            }
            Err(e) => ClientResult { connect: Err(e), bytes: 0, elapsed: t0.elapsed() },
        }
    })
}

/// A loopback connect storm on the host (two connecting threads and an
/// accepting one), bounded in count and time: it keeps the agent's
/// programs running in tasks on both CPUs, so that a state change a
/// softirq traces often lands nested in one of their runs.
pub struct LoopbackStorm {
    stop: Arc<AtomicBool>,
    made: Arc<std::sync::atomic::AtomicU64>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl LoopbackStorm {
    /// At most `max` connects, for at most `limit`.
    pub fn start(max: u64, limit: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut threads = Vec::new();
        let st = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    break;
                }
            }
        }));
        for _ in 0..2 {
            let (stop, made) = (stop.clone(), made.clone());
            threads.push(std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed)
                    && made.load(Ordering::Relaxed) < max
                    && t0.elapsed() < limit
                {
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Self { stop, made, addr, threads })
    }

    /// Stop it; the connects it made.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.made.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut threads = std::mem::take(&mut self.threads);
        if threads.is_empty() {
            return;
        }
        // The connecting threads first; then one connect wakes the acceptor.
        for t in threads.drain(1..) {
            let _ = t.join();
        }
        drop(TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for LoopbackStorm {
    fn drop(&mut self) {
        self.halt();
    }
}
