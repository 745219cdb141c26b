//! TLS pieces for root tests: a self-signed certificate, `openssl s_server`
//! origins, an SNI-routing passthrough gateway (HAProxy in TCP mode,
//! `req.ssl_sni`), a small Squid for CONNECT tunnels, and `openssl s_client`
//! runs (direct or through a CONNECT proxy) inside a namespace. Every
//! process is started inside a namespace, waited for until it listens, and
//! killed by PID on drop.
use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{Netns, cmd, sh};

/// One daemon inside a namespace, killed by PID on drop.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Start `args` in `ns` (output to `log`) and wait until something
    /// listens on `addr` (`ip:port`) there.
    pub fn start(
        ns: &Netns,
        name: &str,
        args: &[&str],
        log: &Path,
        addr: &str,
    ) -> anyhow::Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = ns
            .command(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let mut d = Self { name: name.to_string(), child, log: log.to_path_buf() };
        d.wait_listening(ns, addr)?;
        Ok(d)
    }

    fn wait_listening(&mut self, ns: &Netns, addr: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited ({st}) before listening:\n{}", self.name, self.log_text());
            }
            let listening = ns.run(&["ss", "-Hltn"])?;
            if listening.split_whitespace().any(|w| w == addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 15 s:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A self-signed P-256 certificate and key (`cert.pem`, `key.pem` in `dir`).
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    sh(&mut cmd(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sni.test",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ],
    ))?;
    Ok((cert, key))
}

/// `openssl s_server -www` on `addr` (`ip:port`); `extra` adds options
/// (e.g. `-tls1_3`: a client without TLS 1.3 gets a protocol_version alert).
pub fn s_server(
    ns: &Netns,
    dir: &Path,
    (cert, key): (&Path, &Path),
    addr: &str,
    extra: &[&str],
) -> anyhow::Result<Daemon> {
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let mut args =
        vec!["openssl", "s_server", "-www", "-accept", addr, "-cert", &cert, "-key", &key];
    args.extend_from_slice(extra);
    let log = dir.join(format!("s_server-{}.log", addr.replace([':', '.'], "_")));
    Daemon::start(ns, "s_server", &args, &log, addr)
}

/// HAProxy as an SNI router in TCP mode (a TLS passthrough, as an Istio
/// egress gateway is): listening on `bind`, each `(server name, backend
/// ip:port)` routed there; any other name is rejected as soon as its
/// ClientHello is read (the connection closed, nothing sent back).
pub fn haproxy_sni(
    ns: &Netns,
    dir: &Path,
    bind: &str,
    routes: &[(&str, &str)],
) -> anyhow::Result<Daemon> {
    let names: Vec<&str> = routes.iter().map(|(n, _)| *n).collect();
    let mut c = String::new();
    let _ = writeln!(c, "global\n    maxconn 256\n");
    let _ = writeln!(
        c,
        "defaults\n    mode tcp\n    retries 0\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n"
    );
    let _ = writeln!(c, "frontend sni\n    bind {bind}\n    tcp-request inspect-delay 5s");
    let _ = writeln!(
        c,
        "    tcp-request content reject if {{ req.ssl_hello_type 1 }} !{{ req.ssl_sni -i {} }}",
        names.join(" ")
    );
    let _ = writeln!(c, "    tcp-request content accept if {{ req.ssl_hello_type 1 }}");
    for (i, (name, _)) in routes.iter().enumerate() {
        let _ = writeln!(c, "    use_backend b{i} if {{ req.ssl_sni -i {name} }}");
    }
    for (i, (_, backend)) in routes.iter().enumerate() {
        let _ = writeln!(c, "\nbackend b{i}\n    server s{i} {backend}");
    }
    let conf = dir.join("haproxy.cfg");
    fs::write(&conf, c).with_context(|| format!("writing {}", conf.display()))?;
    let conf = conf.to_string_lossy().into_owned();
    // -db: foreground, no daemon; -Ws would need systemd.
    Daemon::start(ns, "haproxy", &["haproxy", "-db", "-f", &conf], &dir.join("haproxy.log"), bind)
}

/// A Squid on `listen` (`ip:port`) that opens CONNECT tunnels for `client`
/// (a CIDR) to `ports`, with `hosts` (`ip name…` lines) as its only names.
pub fn squid(
    ns: &Netns,
    dir: &Path,
    listen: &str,
    client: &str,
    ports: &[u16],
    hosts: &str,
) -> anyhow::Result<Daemon> {
    let dir = dir.join("squid");
    fs::create_dir_all(&dir)?;
    // Squid starts as root and drops to `proxy`, which writes its logs here.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
    let hosts_file = dir.join("hosts");
    fs::write(&hosts_file, hosts)?;
    fs::set_permissions(&hosts_file, fs::Permissions::from_mode(0o644))?;
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let d = dir.display();
    let conf = format!(
        "http_port {listen}\nvisible_hostname tls-squid\nacl tunnel_ports port {ports}\n\
         acl clients src {client}\nacl CONNECT method CONNECT\n\
         http_access allow CONNECT clients tunnel_ports\nhttp_access deny all\n\
         cache deny all\ncache_mem 8 MB\nmax_filedescriptors 1024\nhosts_file {hosts}\n\
         dns_nameservers 127.0.0.1\nconnect_timeout 3 seconds\nshutdown_lifetime 0 seconds\n\
         pinger_enable off\ncache_effective_user proxy\npid_filename {d}/squid.pid\n\
         cache_log {d}/cache.log\naccess_log stdio:{d}/access.log squid\ncoredump_dir {d}\n\
         logfile_rotate 0\n",
        ports = ports.join(" "),
        hosts = hosts_file.display(),
    );
    let conf_path = dir.join("squid.conf");
    fs::write(&conf_path, conf)?;
    fs::set_permissions(&conf_path, fs::Permissions::from_mode(0o644))?;
    let conf_path = conf_path.to_string_lossy().into_owned();
    let service = format!("eotls{}", std::process::id());
    Daemon::start(
        ns,
        "squid",
        &["squid", "-N", "-n", &service, "-f", &conf_path],
        &dir.join("squid.out"),
        listen,
    )
}

/// What one `openssl s_client` run printed, and whether the handshake
/// completed (`-brief` prints the protocol it negotiated).
#[derive(Debug, Clone)]
pub struct SClient {
    pub output: String,
    pub handshake: bool,
}

/// `openssl s_client` in `ns` to `connect` (`host:port`) with `server_name`
/// as SNI, through the CONNECT proxy `proxy` when given; stdin at EOF, so
/// it closes once the handshake is over (or failed). Bounded by `timeout`.
pub fn s_client(
    ns: &Netns,
    connect: &str,
    server_name: &str,
    proxy: Option<&str>,
    extra: &[&str],
    timeout: Duration,
) -> anyhow::Result<SClient> {
    let secs = timeout.as_secs().max(1).to_string();
    let mut args = vec!["timeout", &secs, "openssl", "s_client", "-brief", "-connect", connect];
    args.extend_from_slice(&["-servername", server_name]);
    if let Some(p) = proxy {
        args.extend_from_slice(&["-proxy", p]);
    }
    args.extend_from_slice(extra);
    let out = ns.command(&args).stdin(Stdio::null()).output().context("running s_client")?;
    let output =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let handshake = output.contains("Protocol version:");
    Ok(SClient { output, handshake })
}
