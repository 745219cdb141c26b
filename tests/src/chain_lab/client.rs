//! Client processes in the lab's `app` namespace: started at once or held at
//! a gate (so a test can move the PID into a cgroup before it connects), with
//! bounded waits, and curl's view of a CONNECT through the chain.
use std::{
    io::{Read as _, Write as _},
    process::{Child, ChildStdin, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A client process stopped before it runs its program: `sh` waiting on
/// stdin, which then execs the program in place (same PID). Move `pid()` into
/// a cgroup, then `release()`. Dropped unreleased, it exits without running
/// the program.
pub struct GatedClient {
    child: Option<Child>,
    gate: Option<ChildStdin>,
}

impl GatedClient {
    pub(super) fn new(mut child: Child) -> anyhow::Result<Self> {
        let gate = child.stdin.take().context("gate stdin")?;
        Ok(Self { child: Some(child), gate: Some(gate) })
    }

    /// PID of the process that will run the program.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Let the program run; the caller waits on the returned child.
    pub fn release(mut self) -> anyhow::Result<Child> {
        let mut gate = self.gate.take().context("released twice")?;
        gate.write_all(b"go\n").context("opening the client gate")?;
        drop(gate);
        self.child.take().context("released twice")
    }
}

impl Drop for GatedClient {
    fn drop(&mut self) {
        // Closing the gate without a line makes the shell exit (status 125).
        self.gate.take();
        if let Some(mut c) = self.child.take() {
            let _ = wait_output(&mut c, Duration::from_secs(5));
        }
    }
}

/// What a client process did.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientOutput {
    pub fn exit_code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Wait for `child` at most `timeout`, collecting its piped stdout/stderr.
/// On timeout the child is killed (by PID), reaped, and an error returned.
pub fn wait_output(child: &mut Child, timeout: Duration) -> anyhow::Result<ClientOutput> {
    let t0 = Instant::now();
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|r| -> Box<dyn std::io::Read + Send> { Box::new(r) }));
    let err = reader(child.stderr.take().map(|r| -> Box<dyn std::io::Read + Send> { Box::new(r) }));
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > timeout {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            bail!("client {} still running after {timeout:?}: killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(ClientOutput { status, stdout, stderr, elapsed: t0.elapsed() })
}

/// Marker before curl's `-w` summary line on stdout.
pub(super) const CURL_MARK: &str = "@@eo-curl";

/// curl's `-w` format: the marker, CONNECT status, HTTP status, times.
pub(super) fn curl_write_out() -> String {
    format!("\n{CURL_MARK} %{{http_connect}} %{{http_code}} %{{time_connect}} %{{time_total}}\n")
}

/// What curl saw: the proxy's answer to CONNECT and what came through the tunnel.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// curl's exit code (0 ok, 7 could not connect, 28 timeout, 56 CONNECT failed…).
    pub exit_code: Option<i32>,
    /// Status of the proxy's CONNECT answer (0: no CONNECT answer, or no proxy).
    pub connect_status: u16,
    /// Status of the response through the tunnel or direct (0: none).
    pub http_status: u16,
    /// Headers of the proxy's CONNECT answer, as received (name, value).
    pub proxy_headers: Vec<(String, String)>,
    /// Response body through the tunnel (or direct).
    pub body: String,
    /// curl's verbose stderr, for failure messages.
    pub stderr: String,
    pub elapsed: Duration,
}

impl CurlResult {
    pub fn parse(out: &ClientOutput) -> Self {
        let (body, summary) = match out.stdout.rfind(CURL_MARK) {
            Some(i) => (
                out.stdout[..i].strip_suffix('\n').unwrap_or(&out.stdout[..i]).to_string(),
                &out.stdout[i + CURL_MARK.len()..],
            ),
            None => (out.stdout.clone(), ""),
        };
        let mut f = summary.split_whitespace();
        let connect_status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let http_status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Self {
            exit_code: out.exit_code(),
            connect_status,
            http_status,
            proxy_headers: connect_headers(&out.stderr),
            body,
            stderr: out.stderr.clone(),
            elapsed: out.elapsed,
        }
    }

    /// First proxy header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.proxy_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The header block of the first `HTTP/` response curl -v printed with `< `
/// (the proxy's CONNECT answer when a proxy was used).
fn connect_headers(verbose: &str) -> Vec<(String, String)> {
    let mut started = false;
    let mut headers = Vec::new();
    for line in verbose.lines() {
        let Some(l) = line.strip_prefix("< ") else { continue };
        let l = l.trim_end_matches('\r');
        if !started {
            started = l.starts_with("HTTP/");
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    headers
}
