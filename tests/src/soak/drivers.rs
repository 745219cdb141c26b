//! What the soak runs against the agent, each on its own thread until the
//! stop flag: paced traffic from the app pod's namespace through the chain
//! lab (CONNECT to the healthy origin, to a refused one, a hop-1 denial,
//! direct connects refused at the origin, DNS lookups answered and
//! NXDOMAIN), pods coming and going on the fake API server with a request
//! from each pod's own (kubelet-shaped) cgroup, transient systemd-style units
//! (`run-r<random>.scope`) each making one request, local API clients
//! (`flows`, `watch`) attaching and leaving, and conntrack flushed in the
//! NAT namespaces.
use std::{
    collections::VecDeque,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    Netns,
    agent::agent_bin,
    cgroups::{Layout, TestCgroup, v2_root},
    chain_lab::{ChainLab, wait_output},
    fake_apiserver::{
        FakeApiServer,
        objects::{self, PodSpec},
    },
};

/// Attempts and outcomes of one driver.
#[derive(Debug, Default)]
pub struct Tally {
    pub attempts: AtomicU64,
    /// Ended as this driver expects (a failure it provokes counts as expected).
    pub expected: AtomicU64,
    pub unexpected: AtomicU64,
}

impl Tally {
    fn count(&self, ok: bool) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.expected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.attempts.load(Ordering::Relaxed),
            self.expected.load(Ordering::Relaxed),
            self.unexpected.load(Ordering::Relaxed),
        )
    }
}

/// A named tally (the report lists them).
pub type Tallies = Vec<(&'static str, Arc<Tally>)>;

/// Runs `f(i)` `rate` times a second on a thread inside `ns` until `stop`.
fn paced(
    ns: &Netns,
    name: &'static str,
    rate: f64,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    mut f: impl FnMut(u64) -> bool + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    ns.spawn(name, move || {
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(200)));
                continue;
            }
            tally.count(f(i));
            i += 1;
        }
    })
}

/// `CONNECT target` through `proxy` in one write; the status code, and for a
/// 200 a `GET /` through the tunnel read to its end.
fn connect_through(proxy: SocketAddr, target: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(8))).ok()?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&b[..n]);
    }
    let status: u16 = std::str::from_utf8(&head).ok()?.split_whitespace().nth(1)?.parse().ok()?;
    if status == 200 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n").ok()?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).ok()?;
        if !rest.starts_with(b"HTTP/1.1 200") {
            return None;
        }
    }
    Some(status)
}

/// A tunnel through `proxy` to `target`, left open (the origin sends its banner).
fn open_tunnel(proxy: SocketAddr, target: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(8))).ok()?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).ok()?;
    let mut b = [0u8; 1024];
    let n = s.read(&mut b).ok()?;
    b[..n].starts_with(b"HTTP/1.1 200").then_some(s)
}

/// A DNS query for `name` (A) to `server`; the rcode of the answer.
fn dns_rcode(server: SocketAddr, name: &str, id: u16) -> Option<u8> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server).ok()?;
    let mut b = [0u8; 512];
    let (n, _) = sock.recv_from(&mut b).ok()?;
    (n >= 4 && b[0] == q[0] && b[1] == q[1]).then_some(b[3] & 0x0f)
}

/// Requests per second of each kind of traffic (times the soak's `--rate`).
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub chain_ok: f64,
    pub chain_refused: f64,
    pub hop1_denied: f64,
    pub direct_refused: f64,
    /// Direct connects to the blackholed origin (the kernel gives up after ≈3 s).
    pub direct_timeout: f64,
    /// Tunnels opened a second, each held [`TUNNEL_HOLD`].
    pub tunnels: f64,
    pub dns: f64,
}

/// How long a long-lived tunnel stays open (under the origin's 30 s).
pub const TUNNEL_HOLD: Duration = Duration::from_secs(25);
/// Threads sharing the timeouts (each blocks ≈3 s per attempt).
const TIMEOUT_THREADS: usize = 6;

impl Rates {
    /// ≈ 240 TCP connections a second (a chain request is 3: app → hop 1 →
    /// hop 2 → origin) and 20 lookups.
    pub fn scaled(k: f64) -> Self {
        Self {
            chain_ok: 40.0 * k,
            chain_refused: 10.0 * k,
            hop1_denied: 10.0 * k,
            direct_refused: 80.0 * k,
            direct_timeout: 1.0 * k,
            tunnels: 0.4 * k,
            dns: 20.0 * k,
        }
    }

    pub fn connections_per_s(&self) -> f64 {
        3.0 * (self.chain_ok + self.chain_refused + self.tunnels)
            + self.hop1_denied
            + self.direct_refused
            + self.direct_timeout
    }
}

/// The paced traffic of the app pod.
pub fn traffic(
    lab: &ChainLab,
    rates: Rates,
    stop: &Arc<AtomicBool>,
    tallies: &mut Tallies,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let cfg = lab.config().clone();
    let proxy = lab.cluster_addr();
    let port = cfg.origin_port;
    let mut threads = Vec::new();
    let mut add = |name: &'static str, rate: f64, f: Box<dyn FnMut(u64) -> bool + Send>| {
        let t = Arc::new(Tally::default());
        tallies.push((name, t.clone()));
        paced(&lab.ns.app, name, rate, stop.clone(), t, f).map(|h| threads.push(h))
    };
    let healthy = format!("{}:{port}", cfg.healthy.name);
    // Two threads for the healthy chain: a slow request must not stall the pace.
    for name in ["chain ok (a)", "chain ok (b)"] {
        let target = healthy.clone();
        add(
            name,
            rates.chain_ok / 2.0,
            Box::new(move |_| connect_through(proxy, &target) == Some(200)),
        )?;
    }
    let refused = format!("{}:{port}", cfg.refused.name);
    add(
        "chain, origin refuses (503)",
        rates.chain_refused,
        Box::new(move |_| connect_through(proxy, &refused) == Some(503)),
    )?;
    let denied = format!("{}:{port}", cfg.denied_at_hop1);
    add(
        "chain, hop 1 denies (403)",
        rates.hop1_denied,
        Box::new(move |_| connect_through(proxy, &denied) == Some(403)),
    )?;
    let direct = SocketAddr::new(cfg.refused.ip.into(), port);
    add(
        "direct, refused",
        rates.direct_refused,
        Box::new(move |_| {
            matches!(TcpStream::connect_timeout(&direct, Duration::from_secs(3)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        }),
    )?;
    for name in ["direct, timeout (SYN dropped)"; TIMEOUT_THREADS] {
        let blackhole = SocketAddr::new(cfg.blackhole.ip.into(), port);
        add(
            name,
            rates.direct_timeout / TIMEOUT_THREADS as f64,
            Box::new(move |_| {
                matches!(TcpStream::connect_timeout(&blackhole, Duration::from_secs(10)),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
            }),
        )?;
    }
    let target = healthy;
    let mut open: VecDeque<(TcpStream, Instant)> = VecDeque::new();
    add(
        "long-lived tunnels",
        rates.tunnels,
        Box::new(move |_| {
            while open.front().is_some_and(|(_, at)| at.elapsed() >= TUNNEL_HOLD) {
                open.pop_front();
            }
            match open_tunnel(proxy, &target) {
                Some(s) => {
                    open.push_back((s, Instant::now()));
                    true
                }
                None => false,
            }
        }),
    )?;
    let dns = SocketAddr::new(cfg.dns_ip.into(), 53);
    let name = cfg.healthy.name;
    add(
        "dns (half NXDOMAIN)",
        rates.dns,
        Box::new(move |i| {
            let (q, want) =
                if i % 2 == 0 { (name.clone(), 0) } else { (format!("nx{}.soak.test", i % 10), 3) };
            dns_rcode(dns, &q, i as u16) == Some(want)
        }),
    )?;
    Ok(threads)
}

/// curl through the chain, gated so `enter` can move it into a cgroup first.
fn gated_request(lab: &ChainLab, enter: impl FnOnce(u32) -> anyhow::Result<()>) -> bool {
    let args = lab.curl_via_chain_args(&lab.config().healthy.name, "/");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Ok(gated) = lab.spawn_client_gated(&args) else { return false };
    if enter(gated.pid()).is_err() {
        return false;
    }
    let Ok(mut child) = gated.release() else { return false };
    wait_output(&mut child, Duration::from_secs(15)).is_ok_and(|o| o.status.success())
}

pub const NODE: &str = "eo-soak-node";
pub const POD_NS: &str = "soak";
const WORKLOADS: [&str; 3] = ["web", "api", "worker"];

/// Every `every`: a new pod of one of three Deployments on the fake API
/// server, one request from a process in its cgroup, and the pod that is
/// `keep` pods old deleted. Seeds start at `seed0` (distinct per agent run
/// is not needed: pods are per soak).
pub fn pod_churn(
    lab: Arc<ChainLab>,
    api: Arc<FakeApiServer>,
    every: Duration,
    keep: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut live: VecDeque<String> = VecDeque::new();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let w = WORKLOADS[i as usize % WORKLOADS.len()];
            let hash = format!("{:010x}", 0x005d_8f7c_9b00_u64 + u64::from(i % 3));
            let Ok(cg) =
                TestCgroup::new(Layout::Systemd { qos: Some("burstable") }, 100_000 + u64::from(i))
            else {
                tally.count(false);
                continue;
            };
            let name = format!("{w}-{hash}-{i:05}");
            let ip = format!("10.0.{}.{}", 100 + (i / 250) % 100, 1 + i % 250);
            api.apply(objects::pod(&PodSpec {
                ns: POD_NS,
                name: &name,
                uid: cg.pod_uid.clone(),
                node: NODE,
                ip: &ip,
                owner: Some(("apps/v1", "ReplicaSet", &format!("{w}-{hash}"))),
                labels: json!({"app": w, "pod-template-hash": hash}),
                containers: vec![("app", "busybox:1.36", cg.container_id.clone())],
                ..PodSpec::default()
            }));
            live.push_back(format!("{POD_NS}/{name}"));
            // Give the agent's watch a moment to see the pod before it connects.
            std::thread::sleep(Duration::from_millis(300));
            tally.count(gated_request(&lab, |pid| cg.enter(pid)));
            drop(cg);
            while live.len() > keep {
                if let Some(old) = live.pop_front() {
                    api.delete("Pod", &old);
                }
            }
            i += 1;
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
    })
}

/// A cgroup shaped like a transient systemd unit of `systemd-run`, removed on drop.
struct TransientUnit(PathBuf);

impl TransientUnit {
    fn new(n: u64) -> anyhow::Result<Self> {
        let dir = v2_root()?.join("system.slice");
        std::fs::create_dir_all(&dir)?;
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
        let path = dir.join(format!("run-r{x:016x}{:016x}.scope", x.rotate_left(17)));
        std::fs::create_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TransientUnit {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every `every`: a new `run-r<random>.scope` unit whose process makes one request.
pub fn unit_churn(
    lab: Arc<ChainLab>,
    every: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = TransientUnit::new(n).is_ok_and(|u| {
                gated_request(&lab, |pid| {
                    std::fs::write(u.0.join("cgroup.procs"), pid.to_string()).map_err(Into::into)
                })
            });
            tally.count(ok);
            n += 1;
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
    })
}

/// Every `every`, alternately: `flows --last 50` (to its end) and `watch`
/// for two seconds, then killed (by its PID). Both against `socket`.
pub fn api_clients(
    socket: PathBuf,
    every: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let sock = socket.display().to_string();
            let ok = if n.is_multiple_of(2) {
                Command::new(agent_bin())
                    .args(["flows", "--api-socket", &sock, "--last", "50", "-o", "jsonl"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
                    .and_then(|mut c| wait_output(&mut c, Duration::from_secs(10)).ok())
                    .is_some_and(|o| matches!(o.status.code(), Some(0 | 3)))
            } else {
                watch_for(&sock, Duration::from_secs(2))
            };
            tally.count(ok);
            n += 1;
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
    })
}

fn watch_for(sock: &str, how_long: Duration) -> bool {
    let Ok(mut c): Result<Child, _> = Command::new(agent_bin())
        .args(["watch", "--api-socket", sock, "-o", "jsonl"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    std::thread::sleep(how_long);
    let alive = matches!(c.try_wait(), Ok(None));
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    let _ = wait_output(&mut c, Duration::from_secs(5));
    alive
}

/// Every `every`: `conntrack -F` in each of `namespaces` (DESTROY storms).
pub fn conntrack_flush(
    namespaces: Vec<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            next += every;
            for ns in &namespaces {
                let ok = Command::new("ip")
                    .args(["netns", "exec", ns, "conntrack", "-F"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                tally.count(ok);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_add_up_to_a_few_hundred_connections() {
        let r = Rates::scaled(1.0);
        assert!((200.0..400.0).contains(&r.connections_per_s()), "{}", r.connections_per_s());
    }
}
