//! Load generators on loopback: a connect storm (N threads connect and
//! close with an RST as fast as they can for a fixed time, one thread
//! accepts and closes) and a hold of many open connections. Every loop is
//! bounded by a deadline and a count.
use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The storm's listener: 127.0.0.1, the node's largest backlog, and a
/// receive timeout so that its accept thread sees the end of a storm.
pub fn storm_listener() -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind loopback listener")?;
    // std listens with a backlog of 128; the storm wants the node's maximum.
    // SAFETY: valid listening socket fd.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: valid socket fd and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(l)
}

/// Close with an RST (SO_LINGER 0): no TIME_WAIT, so the ephemeral ports
/// do not run out during a storm of short connections.
pub fn set_linger_zero(s: &TcpStream) {
    linger_zero(s.as_raw_fd());
}

fn linger_zero(fd: i32) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid socket fd and option buffer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

/// CPU time of the calling thread: (user, system) seconds.
pub fn thread_cpu() -> (f64, f64) {
    // SAFETY: all-zero is a valid rusage.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(r.ru_utime), s(r.ru_stime))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StormResult {
    pub connects: u64,
    pub errors: u64,
    pub accepted: u64,
    pub elapsed: Duration,
    /// CPU of the storm's threads (connecting and accepting), user and
    /// system seconds. System time includes the loopback receive path
    /// (softirq work runs on the sending thread) and every tracing hook.
    pub user_s: f64,
    pub sys_s: f64,
}

impl StormResult {
    pub fn rate(&self) -> f64 {
        self.connects as f64 / self.elapsed.as_secs_f64()
    }

    /// The storm's own CPU per connection, µs.
    pub fn cpu_us_per_connect(&self) -> f64 {
        (self.user_s + self.sys_s) / self.connects.max(1) as f64 * 1e6
    }

    /// The share of the storm's CPU spent in its own code (not the kernel):
    /// small means the generator is not what limits the rate.
    pub fn user_share(&self) -> f64 {
        self.user_s / (self.user_s + self.sys_s).max(1e-9)
    }

    /// Cores the storm kept busy.
    pub fn busy_cores(&self) -> f64 {
        (self.user_s + self.sys_s) / self.elapsed.as_secs_f64()
    }
}

/// A bound on connections per thread, besides the deadline.
const MAX_CONNECTS_PER_THREAD: u64 = 100_000_000;

/// The storm of issue 17: `threads` threads connect to `listener` and close
/// with an RST, as fast as they can, for `dur`; one thread accepts and
/// closes the server sides. Raw syscalls: the generator's own code is a
/// few instructions per connection (see [`StormResult::user_share`]).
pub fn storm(listener: &TcpListener, threads: usize, dur: Duration) -> anyhow::Result<StormResult> {
    let SocketAddr::V4(addr) = listener.local_addr()? else { bail!("the storm is IPv4") };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let stop = AtomicBool::new(false);
    let accepted = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + dur;
    let (connect_side, accept_side) = std::thread::scope(|s| {
        let acceptor = s.spawn(|| {
            let before = thread_cpu();
            let lfd = listener.as_raw_fd();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid listening fd; no address wanted.
                let c = unsafe {
                    libc::accept4(
                        lfd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c >= 0 {
                    // SAFETY: the fd accept4 returned.
                    unsafe { libc::close(c) };
                    n += 1;
                }
            }
            accepted.store(n, Ordering::Relaxed);
            let after = thread_cpu();
            (after.0 - before.0, after.1 - before.1)
        });
        #[allow(
            clippy::needless_collect,
            reason = "every thread is spawned before any is joined: they run at once"
        )]
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let before = thread_cpu();
                    let (mut ok, mut err) = (0u64, 0u64);
                    while ok + err < MAX_CONNECTS_PER_THREAD && Instant::now() < deadline {
                        // SAFETY: plain socket syscalls on an fd this loop owns.
                        unsafe {
                            let fd = libc::socket(
                                libc::AF_INET,
                                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                                0,
                            );
                            if fd < 0 {
                                err += 1;
                                continue;
                            }
                            if libc::connect(
                                fd,
                                (&raw const sa).cast(),
                                size_of::<libc::sockaddr_in>() as u32,
                            ) == 0
                            {
                                linger_zero(fd);
                                ok += 1;
                            } else {
                                err += 1;
                            }
                            libc::close(fd);
                        }
                    }
                    let after = thread_cpu();
                    (ok, err, after.0 - before.0, after.1 - before.1)
                })
            })
            .collect();
        let connect_side: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        stop.store(true, Ordering::Relaxed);
        (connect_side, acceptor.join())
    });
    let elapsed = start.elapsed();
    let mut r = StormResult { elapsed, ..StormResult::default() };
    for w in connect_side {
        let (ok, err, u, s) = w.map_err(|_| anyhow::anyhow!("storm thread panicked"))?;
        r.connects += ok;
        r.errors += err;
        r.user_s += u;
        r.sys_s += s;
    }
    let (u, s) = accept_side.map_err(|_| anyhow::anyhow!("accept thread panicked"))?;
    r.user_s += u;
    r.sys_s += s;
    r.accepted = accepted.load(Ordering::Relaxed);
    if r.connects == 0 {
        bail!("connect storm made no connection ({} errors)", r.errors);
    }
    Ok(r)
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
        let l = storm_listener().expect("listener");
        let r = storm(&l, 2, Duration::from_millis(300)).expect("storm");
        assert!(r.connects > 10, "{r:?}");
        assert!(r.elapsed < Duration::from_secs(3), "{r:?}");
        // The accept thread takes (nearly) every connection it was offered.
        assert!(r.accepted > 0 && r.accepted <= r.connects + 1, "{r:?}");
        assert!(r.user_s + r.sys_s > 0.0 && r.cpu_us_per_connect() > 0.0, "{r:?}");
        // The same listener serves the next storm.
        assert!(storm(&l, 1, Duration::from_millis(100)).expect("again").connects > 0);
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
