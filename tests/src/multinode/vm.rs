//! A lab machine under QEMU/TCG: started inside one of the lab's network
//! namespaces, so its tap NIC is created there (never slirp: the machines
//! exchange real routed packets through the lab's bridge), and driven over
//! its second serial port by the control daemon (`egress-lab-node`), a
//! unix socket on the host: no network, no traffic any agent could see.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{Netns, qemu};

/// A kernel image and the lab initramfs for it (`cargo xtask lab
/// --multinode` builds them).
#[derive(Debug, Clone)]
pub struct VmImage {
    pub kernel: String,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

/// Booting takes seconds under TCG; the agent's verifier more.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

pub struct Vm {
    pub name: String,
    pub kernel: String,
    child: Child,
    ctl: Mutex<Control>,
    pub console: PathBuf,
}

struct Control {
    sock: UnixStream,
    pending: Vec<u8>,
    /// Id of the last request: an answer to an earlier one (that timed
    /// out) is skipped, never taken for this one's.
    seq: u64,
}

impl Vm {
    /// Boot `image` as `name` with its tap `ifname` (MAC `mac`) in `ns`;
    /// returns once its control daemon answers.
    pub fn boot(
        name: &str,
        image: &VmImage,
        ns: &Netns,
        tap: qemu::Tap,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let sock = dir.join(format!("{name}.ctl"));
        let console = dir.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&sock);
        let mut spec = qemu::Spec::new(&image.vmlinuz, &image.initramfs);
        spec.tap = Some(tap);
        spec.control = Some(sock.clone());
        spec.append = format!("eo.hostname={name}");
        let q = spec.command();
        let out = std::fs::File::create(&console)?;
        let mut args = vec!["netns".to_string(), "exec".into(), ns.name.clone()];
        args.push(q.get_program().to_string_lossy().into_owned());
        args.extend(q.get_args().map(|a| a.to_string_lossy().into_owned()));
        let child = std::process::Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting qemu-system-x86_64 in the lab's namespace")?;
        let mut vm = Self {
            name: name.to_string(),
            kernel: image.kernel.clone(),
            child,
            ctl: Mutex::new(Control { sock: connect(&sock)?, pending: Vec::new(), seq: 0 }),
            console,
        };
        let deadline = Instant::now() + BOOT_LIMIT;
        loop {
            if let Some(st) = vm.child.try_wait()? {
                bail!("{name} ({}) exited while booting ({st}):\n{}", vm.kernel, vm.console_tail());
            }
            match vm.request_timeout(&json!({"op": "hello"}), Duration::from_secs(2)) {
                Ok(_) => return Ok(vm),
                Err(_) if Instant::now() < deadline => {}
                Err(e) => bail!(
                    "{name} did not come up within {BOOT_LIMIT:?}: {e:#}\n{}",
                    vm.console_tail()
                ),
            }
        }
    }

    /// The last lines of the serial console (for errors).
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// One request; the answer, or its `error`.
    pub fn request(&self, req: &Value) -> anyhow::Result<Value> {
        self.request_timeout(req, Duration::from_secs(180))
    }

    fn request_timeout(&self, req: &Value, timeout: Duration) -> anyhow::Result<Value> {
        let mut c = self.ctl.lock().map_err(|_| anyhow::anyhow!("control poisoned"))?;
        c.seq += 1;
        let id = c.seq;
        let mut req = req.clone();
        req["id"] = json!(id);
        let mut line = req.to_string();
        line.push('\n');
        c.sock.write_all(line.as_bytes()).context("writing to the control port")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = c.pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = c.pending.drain(..=i).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&l) else { continue };
                if v["id"].as_u64() != Some(id) {
                    continue;
                }
                if v["ok"] != true {
                    bail!("{}: {}", self.name, v["error"].as_str().unwrap_or("failed"));
                }
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: no answer to {} within {timeout:?}", self.name, req["op"]);
            }
            c.sock.set_read_timeout(Some(left.min(Duration::from_millis(500))))?;
            let mut buf = [0u8; 65536];
            match c.sock.read(&mut buf) {
                Ok(0) => bail!("{}: control port closed:\n{}", self.name, self.console_tail()),
                Ok(n) => c.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Ask nicely (the daemon kills what it started), then SIGKILL our
        // own child (ip netns exec execs qemu in place: the PID is qemu's).
        let _ = self.request_timeout(&json!({"op": "poweroff"}), Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// qemu creates the socket after it starts: retry (bounded).
fn connect(sock: &Path) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to {}", sock.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
