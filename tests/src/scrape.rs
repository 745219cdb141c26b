//! Reaching an agent's metrics port over TLS, as Prometheus does: the
//! certificates come from `deploy/tls/make-certs.sh` (so the shipped recipe
//! is what the tests run), requests from `curl` (any network namespace:
//! `ip netns exec NS curl …`), with or without the client certificate or a
//! bearer token.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::manifests::deploy_dir;

/// The name the server certificate carries and clients verify.
pub const SERVER_NAME: &str = "egress-agent.egress-observer.svc";

/// A directory of make-certs.sh output: ca.crt, tls.crt/key, client.crt/key.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Run deploy/tls/make-certs.sh into `dir` (extra SANs as it takes them).
    pub fn make(dir: &Path, sans: &[&str]) -> anyhow::Result<Self> {
        let out = Command::new("sh")
            .arg(deploy_dir().join("tls/make-certs.sh"))
            .arg(dir)
            .arg("2")
            .args(sans)
            .output()
            .context("running deploy/tls/make-certs.sh")?;
        if !out.status.success() {
            bail!("make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The agent's flags for TLS with client certificates of this CA.
    pub fn agent_args(&self) -> Vec<String> {
        [
            ("--metrics-tls-cert", "tls.crt"),
            ("--metrics-tls-key", "tls.key"),
            ("--metrics-client-ca", "ca.crt"),
        ]
        .iter()
        .flat_map(|(flag, f)| [flag.to_string(), self.file(f)])
        .collect()
    }
}

/// What a client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    ClientCert,
    Bearer(&'a str),
}

/// `curl` for `https://SERVER_NAME:port{path}` at `addr`, verifying the
/// agent against the CA, printing the body then the status code on its own
/// last line. `prefix` runs it through another program (`ip netns exec NS`).
pub fn curl(
    prefix: &[&str],
    certs: &Certs,
    addr: SocketAddr,
    path: &str,
    cred: Credential<'_>,
) -> Command {
    let mut c = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    c.args(["-sS", "--max-time", "10", "--cacert", &certs.file("ca.crt")])
        .args(["--resolve", &format!("{SERVER_NAME}:{}:{}", addr.port(), addr.ip())])
        .args(["-w", "\n%{http_code}"]);
    match cred {
        Credential::None => {}
        Credential::ClientCert => {
            c.args(["--cert", &certs.file("client.crt"), "--key", &certs.file("client.key")]);
        }
        Credential::Bearer(t) => {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
    }
    c.arg(format!("https://{SERVER_NAME}:{}{path}", addr.port()));
    c
}

/// Run a [`curl`] command: Ok((status, body)) when an HTTP answer came
/// (any status), Err with curl's words when none did.
pub fn fetch(mut c: Command) -> anyhow::Result<(u16, String)> {
    let out = c.output().with_context(|| format!("spawning {c:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if !out.status.success() || code == 0 {
        bail!("no HTTP answer ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((code, body.to_string()))
}

/// GET `path` with the client certificate; the body if the status is 200.
pub fn get_with_cert(certs: &Certs, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    match fetch(curl(&[], certs, addr, path, Credential::ClientCert))? {
        (200, body) => Ok(body),
        (code, body) => bail!("GET {path}: HTTP {code}: {body}"),
    }
}
