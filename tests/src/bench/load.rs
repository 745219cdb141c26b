//! The realistic node load: what the agent costs on a node at an ordinary
//! rate (issue 17: ≈2k connects/s spread over 50 pods, 5 % failures, some
//! through a proxy port), as opposed to the storm's worst case.
//!
//! In a network namespace of its own (no port of the host is taken):
//! a plain server on `127.0.0.{2..11}:8080` that answers and closes, a
//! proxy on `10.128.2.100:3128` (the deployed configuration's `gce-proxy`
//! hop) that answers CONNECTs with 200 or 403, and no listener on port 9
//! (refused). One worker process per kubelet-shaped pod cgroup paces its
//! share of the rate. Every loop is bounded by a count and a deadline.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, ChildStdout, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    Netns,
    cgroups::{Layout, TestCgroup},
};

/// The proxy hop the workers tunnel through (deploy/kubernetes/base/config.yaml).
pub const PROXY: &str = "10.128.2.100:3128";
const PLAIN_PORT: u16 = 8080;
const PLAIN_DESTINATIONS: u8 = 10;
const REFUSED: &str = "127.0.0.1:9";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What one connection of a worker does, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connect, read the server's answer, close.
    Plain,
    /// CONNECT through the proxy, answered 200.
    Proxied,
    /// CONNECT through the proxy, answered 403 (a failure).
    Denied,
    /// Connect to a port nobody listens on (a failure).
    Refused,
}

/// Of every 100 connections: 4 refused and 1 denied (5 % failures), 9
/// tunnelled, the rest plain; shifted per worker so that the failures of
/// the 50 workers do not come at once.
pub fn kind(worker: usize, i: u64) -> Kind {
    match (i + worker as u64 * 7) % 100 {
        0..=3 => Kind::Refused,
        4 => Kind::Denied,
        5..=13 => Kind::Proxied,
        _ => Kind::Plain,
    }
}

/// The body of a worker (run inside the namespace, moved into its cgroup
/// by the parent before it writes the `go` line): `rate` connections per
/// second for `seconds`, then `done plain=… proxied=… failed=… errors=…`.
pub fn worker(index: usize, rate: f64, seconds: f64) -> anyhow::Result<()> {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    if go.trim() != "go" {
        bail!("worker {index}: expected go, got {go:?}");
    }
    let n = (rate * seconds).round() as u64;
    let start = Instant::now();
    let hard_end = start + Duration::from_secs_f64(seconds + 10.0);
    let (mut plain, mut proxied, mut failed, mut errors) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if now > hard_end {
            break;
        }
        if at > now {
            std::thread::sleep(at - now);
        }
        match (kind(index, i), one(index, i)) {
            (Kind::Plain, Ok(())) => plain += 1,
            (Kind::Proxied, Ok(())) => proxied += 1,
            (Kind::Denied | Kind::Refused, Ok(())) => failed += 1,
            (_, Err(_)) => errors += 1,
        }
    }
    println!("done plain={plain} proxied={proxied} failed={failed} errors={errors}");
    std::io::stdout().flush()?;
    Ok(())
}

/// One connection of worker `index`; Ok when it went as its kind says.
fn one(index: usize, i: u64) -> anyhow::Result<()> {
    let plain_addr = || -> SocketAddr {
        let d = 2 + ((i + index as u64) % u64::from(PLAIN_DESTINATIONS)) as u8;
        SocketAddr::from(([127, 0, 0, d], PLAIN_PORT))
    };
    let k = kind(index, i);
    let addr: SocketAddr = match k {
        Kind::Plain => plain_addr(),
        Kind::Proxied | Kind::Denied => PROXY.parse()?,
        Kind::Refused => REFUSED.parse()?,
    };
    let s = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(s) => s,
        Err(e) if k == Kind::Refused && e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut s = s;
    if matches!(k, Kind::Proxied | Kind::Denied) {
        let target =
            if k == Kind::Denied { "denied.example:443" } else { "login.microsoft.com:443" };
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")?;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let want: &[u8] = match k {
        Kind::Plain => b"ok",
        Kind::Proxied => b"HTTP/1.1 200",
        Kind::Denied => b"HTTP/1.1 403",
        Kind::Refused => bail!("port 9 accepted"),
    };
    if !answer.starts_with(want) {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// Servers in the namespace until dropped.
struct Servers {
    stop: std::sync::Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accept until `stop`, answering each connection with `answer` (the
/// request read first, up to its blank line, when `read_request`).
fn serve(
    l: &TcpListener,
    stop: &AtomicBool,
    read_request: bool,
    answer: fn(&[u8]) -> &'static [u8],
) -> anyhow::Result<()> {
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: valid socket fd and option buffer.
    unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut c, _)) = l.accept() else { continue };
        let _ = c.set_read_timeout(Some(IO_TIMEOUT));
        let mut req = Vec::new();
        if read_request {
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") && req.len() < 4096 {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
        }
        let _ = c.write_all(answer(&req));
    }
    Ok(())
}

fn proxy_answer(req: &[u8]) -> &'static [u8] {
    if req.windows(6).any(|w| w == b"denied") {
        b"HTTP/1.1 403 Forbidden\r\nServer: squid\r\nVia: 1.1 instance-proxy (squid/6.1)\r\nX-Squid-Error: ERR_ACCESS_DENIED 0\r\nContent-Length: 0\r\n\r\n"
    } else {
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    }
}

fn start_servers(ns: &Netns) -> anyhow::Result<Servers> {
    ns.run(&["ip", "addr", "add", "10.128.2.100/32", "dev", "lo"])?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut s = Servers { stop: stop.clone(), threads: Vec::new() };
    type Answer = fn(&[u8]) -> &'static [u8];
    let specs: [(u16, bool, Answer); 2] =
        [(PLAIN_PORT, false, |_| b"ok\n"), (3128, true, proxy_answer)];
    for (port, read_request, answer) in specs {
        let l = ns.within("load-bind", move || TcpListener::bind(("0.0.0.0", port)))??;
        // Two acceptors per server: a slow client never holds up the rest.
        for _ in 0..2 {
            let (l, stop) = (l.try_clone()?, stop.clone());
            s.threads.push(std::thread::spawn(move || serve(&l, &stop, read_request, answer)));
        }
    }
    Ok(s)
}

/// Knobs of the realistic load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub rate: f64,
    pub cgroups: usize,
    pub duration: Duration,
}

/// What the workers did.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadCounts {
    pub plain: u64,
    pub proxied: u64,
    pub failed: u64,
    pub errors: u64,
}

impl LoadCounts {
    pub fn connects(&self) -> u64 {
        self.plain + self.proxied + self.failed
    }

    fn add_line(&mut self, line: &str) -> anyhow::Result<()> {
        let rest = line.trim().strip_prefix("done ").context("no done line")?;
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=').context("key=value")?;
            let v: u64 = v.parse()?;
            match k {
                "plain" => self.plain += v,
                "proxied" => self.proxied += v,
                "failed" => self.failed += v,
                "errors" => self.errors += v,
                _ => bail!("unknown count {k}"),
            }
        }
        Ok(())
    }
}

/// Worker processes, killed if still running when dropped.
struct Workers(Vec<(Child, BufReader<ChildStdout>)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (c, _) in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Run the load: `worker(args)` is this program re-run with arguments that
/// call [`worker`]; `during` runs once the workers are released and gets
/// the load's duration (it measures). Returns the workers' counts, the
/// wall time and what `during` returned.
pub fn run<T>(
    o: &LoadOptions,
    worker_cmd: &dyn Fn(usize, f64, f64) -> Vec<String>,
    during: impl FnOnce(Duration) -> anyhow::Result<T>,
) -> anyhow::Result<(LoadCounts, Duration, T)> {
    let ns = Netns::new("load")?;
    let servers = start_servers(&ns)?;
    let cgroups: Vec<TestCgroup> = (0..o.cgroups)
        .map(|i| TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 17_000 + i as u64))
        .collect::<anyhow::Result<_>>()?;
    let per_worker = o.rate / o.cgroups.max(1) as f64;
    let secs = o.duration.as_secs_f64();
    let result = (|| {
        let mut workers = Workers(Vec::new());
        for (i, cg) in cgroups.iter().enumerate() {
            let args = worker_cmd(i, per_worker, secs);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut child = ns
                .command(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawning a load worker")?;
            let out = BufReader::new(child.stdout.take().context("worker stdout")?);
            // `ip netns exec` execs the worker: same pid.
            cg.enter(child.id())?;
            workers.0.push((child, out));
        }
        let start = Instant::now();
        for (c, _) in &mut workers.0 {
            c.stdin.as_mut().context("worker stdin")?.write_all(b"go\n")?;
        }
        let measured = during(o.duration)?;
        let mut counts = LoadCounts::default();
        for (c, out) in &mut workers.0 {
            let mut line = String::new();
            out.read_line(&mut line)?;
            counts.add_line(&line).with_context(|| format!("load worker said {line:?}"))?;
            c.wait()?;
        }
        Ok((counts, start.elapsed(), measured))
    })();
    drop(servers);
    // Leaves first: parents shared by several pods go with the last of them.
    let mut cgroups = cgroups;
    while let Some(cg) = cgroups.pop() {
        drop(cg);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_percent_fail_and_some_go_through_the_proxy() {
        for w in [0, 13, 49] {
            let kinds: Vec<Kind> = (0..100).map(|i| kind(w, i)).collect();
            let n = |k| kinds.iter().filter(|&&x| x == k).count();
            assert_eq!(n(Kind::Refused) + n(Kind::Denied), 5);
            assert_eq!(n(Kind::Proxied), 9);
            assert_eq!(n(Kind::Plain), 86);
        }
    }

    #[test]
    fn counts_add_up_from_worker_lines() {
        let mut c = LoadCounts::default();
        c.add_line("done plain=86 proxied=9 failed=5 errors=0\n").expect("line");
        c.add_line("done plain=1 proxied=0 failed=0 errors=2").expect("line");
        assert_eq!((c.connects(), c.errors), (101, 2));
        assert!(c.add_line("held 3").is_err());
    }

    #[test]
    fn proxy_answers_by_target() {
        assert!(
            proxy_answer(b"CONNECT denied.example:443 HTTP/1.1\r\n\r\n")
                .starts_with(b"HTTP/1.1 403")
        );
        assert!(proxy_answer(b"CONNECT a:443 HTTP/1.1\r\n\r\n").starts_with(b"HTTP/1.1 200"));
    }
}
