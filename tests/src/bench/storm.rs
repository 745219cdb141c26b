//! Load generators on loopback: a connect storm (N threads connect/close as
//! fast as they can for a fixed time) and a hold of many open connections.
//! Every loop is bounded by a deadline and a count.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Listeners on 127.0.0.1 that accept and close at once, until [`Listeners::stop`].
pub struct Listeners {
    pub addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub accepted: Arc<AtomicU64>,
}

impl Listeners {
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").context("bind loopback listener")?;
            // std listens with a backlog of 128; the storm wants the node's maximum.
            // SAFETY: valid listening socket fd.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            addrs.push(l.local_addr()?);
            let (stop, accepted) = (stop.clone(), accepted.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
        }
        Ok(Self { addrs, stop, threads, accepted })
    }

    /// Stop accepting (one wake-up connect per listener).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for a in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for t in self.threads {
            drop(t.join());
        }
    }
}

/// Close with an RST (SO_LINGER 0): no TIME_WAIT, so the ephemeral ports
/// do not run out during a storm of short connections.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket fd and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StormResult {
    pub connects: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl StormResult {
    pub fn rate(&self) -> f64 {
        self.connects as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` threads connect to `addr` and close, as fast as they can, for `dur`.
pub fn storm(addr: SocketAddr, threads: usize, dur: Duration) -> anyhow::Result<StormResult> {
    let start = Instant::now();
    let deadline = start + dur;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut err) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match TcpStream::connect(addr) {
                        Ok(s) => {
                            set_linger_zero(&s);
                            ok += 1;
                        }
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let (mut connects, mut errors) = (0, 0);
    for w in workers {
        let (o, e) = w.join().map_err(|_| anyhow::anyhow!("storm thread panicked"))?;
        connects += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    if connects == 0 {
        bail!("connect storm made no connection ({errors} errors)");
    }
    Ok(StormResult { connects, errors, elapsed })
}

/// Listeners that never accept: handshakes complete into their accept
/// queues (up to the backlog, net.core.somaxconn), so the connecting side
/// is ESTABLISHED while this process holds one fd per listener only.
pub fn queue_listeners(n: usize) -> anyhow::Result<Vec<TcpListener>> {
    (0..n)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").context("bind loopback listener")?;
            // SAFETY: valid listening socket fd.
            unsafe { libc::listen(l.as_raw_fd(), 4096) };
            Ok(l)
        })
        .collect()
}

/// Connections one process may hold: RLIMIT_NOFILE's hard limit cannot be
/// raised without CAP_SYS_RESOURCE, so many connections need many processes.
pub const PER_PROCESS: usize = 15_000;

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns it.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    r.rlim_cur
}

/// `n` connections opened round-robin over `addrs` and held open, within `within`.
pub fn open_many(
    addrs: &[SocketAddr],
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<TcpStream>> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if Instant::now() > deadline {
            bail!("opened only {i} of {n} connections within {within:?}");
        }
        let s = TcpStream::connect(addrs[i % addrs.len()])
            .with_context(|| format!("connection {i} of {n}"))?;
        out.push(s);
    }
    Ok(out)
}

/// The body of a hold worker process: open `n` connections over `addrs`,
/// print `held N`, keep them until stdin closes (or `max_hold`), then close
/// them with RSTs.
pub fn hold_worker(addrs: &[SocketAddr], n: usize, max_hold: Duration) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let limit = raise_nofile();
    if n as u64 + 64 > limit {
        bail!("{n} connections need more than RLIMIT_NOFILE {limit}");
    }
    let held = open_many(addrs, n, Duration::from_secs(120))?;
    println!("held {}", held.len());
    std::io::stdout().flush()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(max_hold);
    for s in &held {
        set_linger_zero(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_counts_connections_and_stops_in_time() {
        let l = Listeners::start(1).expect("listener");
        let r = storm(l.addrs[0], 2, Duration::from_millis(300)).expect("storm");
        assert!(r.connects > 10, "{r:?}");
        assert!(r.elapsed < Duration::from_secs(3), "{r:?}");
        l.stop();
    }

    #[test]
    fn queued_connections_are_established_without_accept() {
        let ls = queue_listeners(2).expect("listeners");
        let addrs: Vec<_> = ls.iter().map(|l| l.local_addr().expect("addr")).collect();
        let held = open_many(&addrs, 50, Duration::from_secs(10)).expect("open");
        assert_eq!(held.len(), 50);
        assert!(held.iter().all(|s| s.peer_addr().is_ok()), "connected");
        drop(held);
        // The queued peers are still there to accept.
        ls[0].set_nonblocking(true).expect("nonblocking");
        assert!(ls[0].accept().is_ok());
    }
}
