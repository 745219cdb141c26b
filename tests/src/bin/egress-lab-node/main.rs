//! The control daemon of a lab machine (a TCG VM of `cargo xtask lab
//! --multinode`): its init runs it on the second serial port, and the
//! host's harness drives the machine through it — no network, so the
//! control channel is no traffic any agent could see.
//!
//! One JSON object per line each way, one request at a time:
//! - `{"op":"hello"}` → `kernel`, `hostname`;
//! - `{"op":"exec","argv":[…],"timeout_ms":N}` → `code` (null: killed at
//!   the timeout or by a signal), `stdout`, `stderr`;
//! - `{"op":"spawn","argv":[…],"out":PATH,"err":PATH,"cgroup":DIR}` →
//!   `pid`; the process joins the cgroup before it execs;
//! - `{"op":"wait","pid":N,"timeout_ms":N}` → `running`, `code`;
//! - `{"op":"kill","pid":N}` (SIGKILL, reaped);
//! - `{"op":"read","path":P,"offset":N,"max":N,"lines":B}` → `data`,
//!   `n` (bytes read), `size`; `lines`: whole lines only;
//! - `{"op":"write","path":P,"data":S,"mode":N}`;
//! - `{"op":"poweroff"}`: kills what it spawned and exits (init powers off).
//!
//! Every answer has `ok` (`ok:false` carries `error`) and the request's `id`.
use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _},
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

fn main() {
    let tty = std::env::args().nth(1).unwrap_or_else(|| "/dev/ttyS1".into());
    let port = match OpenOptions::new().read(true).write(true).open(&tty) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("egress-lab-node: opening {tty}: {e}");
            std::process::exit(1);
        }
    };
    let mut out = match port.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("egress-lab-node: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("EGRESS-LAB node ready on {tty}");
    let mut children: HashMap<u32, Child> = HashMap::new();
    for line in BufReader::new(port).lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (mut answer, stop, id) = match serde_json::from_str::<Value>(line) {
            Ok(req) => {
                let (a, stop) = handle(&req, &mut children);
                (a, stop, req["id"].clone())
            }
            Err(e) => (json!({"ok": false, "error": format!("not JSON: {e}")}), false, Value::Null),
        };
        answer["id"] = id;
        let mut text = answer.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
            break;
        }
        if stop {
            break;
        }
    }
    for (_, mut c) in children.drain() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn fail(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

fn argv(req: &Value) -> Result<Vec<String>, String> {
    let a: Vec<String> = req["argv"]
        .as_array()
        .ok_or("argv missing")?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or("argv holds a non-string"))
        .collect::<Result<_, _>>()?;
    if a.is_empty() {
        return Err("argv is empty".into());
    }
    Ok(a)
}

fn handle(req: &Value, children: &mut HashMap<u32, Child>) -> (Value, bool) {
    let r = match req["op"].as_str().unwrap_or("") {
        "hello" => Ok(json!({
            "ok": true,
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        })),
        "exec" => exec(req),
        "spawn" => spawn(req, children),
        "wait" => wait(req, children),
        "kill" => kill(req, children),
        "read" => read(req),
        "write" => write(req),
        "poweroff" => return (json!({"ok": true}), true),
        other => Err(format!("unknown op {other:?}")),
    };
    (r.unwrap_or_else(fail), false)
}

fn ms(req: &Value, key: &str, default: u64) -> Duration {
    Duration::from_millis(req[key].as_u64().unwrap_or(default))
}

fn exec(req: &Value) -> Result<Value, String> {
    let a = argv(req)?;
    let timeout = ms(req, "timeout_ms", 30_000);
    let mut child = Command::new(&a[0])
        .args(&a[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", a[0]))?;
    let collect = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let boxed = |r: Box<dyn std::io::Read + Send>| Some(r);
    let o = collect(child.stdout.take().and_then(|s| boxed(Box::new(s))));
    let e = collect(child.stderr.take().and_then(|s| boxed(Box::new(s))));
    let start = Instant::now();
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {}: {e}", a[0])),
        }
    };
    Ok(json!({
        "ok": true,
        "code": code,
        "stdout": o.join().unwrap_or_default(),
        "stderr": e.join().unwrap_or_default(),
    }))
}

fn spawn(req: &Value, children: &mut HashMap<u32, Child>) -> Result<Value, String> {
    let a = argv(req)?;
    let file = |key: &str| -> Result<Stdio, String> {
        match req[key].as_str() {
            Some(p) => File::create(p).map(Stdio::from).map_err(|e| format!("{p}: {e}")),
            None => Ok(Stdio::null()),
        }
    };
    let mut c = Command::new(&a[0]);
    c.args(&a[1..]).stdin(Stdio::null()).stdout(file("out")?).stderr(file("err")?);
    let procs = match req["cgroup"].as_str() {
        Some(cg) => Some(
            OpenOptions::new()
                .write(true)
                .open(format!("{cg}/cgroup.procs"))
                .map_err(|e| format!("{cg}/cgroup.procs: {e}"))?,
        ),
        None => None,
    };
    if let Some(fd) = procs.as_ref().map(AsRawFd::as_raw_fd) {
        // SAFETY: after fork, before exec: only write(2) on an fd opened
        // before the fork ("0" moves the writing process); no allocation.
        unsafe {
            c.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = c.spawn().map_err(|e| format!("spawning {}: {e}", a[0]))?;
    drop(procs);
    let pid = child.id();
    children.insert(pid, child);
    Ok(json!({"ok": true, "pid": pid}))
}

fn pid(req: &Value) -> Result<u32, String> {
    req["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or_else(|| "pid missing".into())
}

fn wait(req: &Value, children: &mut HashMap<u32, Child>) -> Result<Value, String> {
    let p = pid(req)?;
    let timeout = ms(req, "timeout_ms", 0);
    let start = Instant::now();
    loop {
        let c = children.get_mut(&p).ok_or_else(|| format!("no child {p}"))?;
        match c.try_wait() {
            Ok(Some(st)) => {
                children.remove(&p);
                return Ok(json!({"ok": true, "running": false, "code": st.code()}));
            }
            Ok(None) if start.elapsed() >= timeout => {
                return Ok(json!({"ok": true, "running": true, "code": null}));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {p}: {e}")),
        }
    }
}

fn kill(req: &Value, children: &mut HashMap<u32, Child>) -> Result<Value, String> {
    let p = pid(req)?;
    if let Some(mut c) = children.remove(&p) {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(json!({"ok": true}))
}

fn read(req: &Value) -> Result<Value, String> {
    let path = req["path"].as_str().ok_or("path missing")?;
    let offset = req["offset"].as_u64().unwrap_or(0);
    let max = req["max"].as_u64().unwrap_or(256 * 1024).min(1 << 20);
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(json!({"ok": true, "data": "", "size": 0, "missing": true}));
        }
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    f.seek(SeekFrom::Start(offset.min(size))).map_err(|e| format!("{path}: {e}"))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).map_err(|e| format!("{path}: {e}"))?;
    // `lines`: whole lines only, so a reader that goes on from offset + n
    // never splits a line (or a UTF-8 sequence).
    if req["lines"].as_bool() == Some(true) {
        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        buf.truncate(end);
    }
    Ok(json!({"ok": true, "data": String::from_utf8_lossy(&buf), "n": buf.len(), "size": size}))
}

fn write(req: &Value) -> Result<Value, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = req["path"].as_str().ok_or("path missing")?;
    let data = req["data"].as_str().ok_or("data missing")?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, data).map_err(|e| format!("{path}: {e}"))?;
    let mode = u32::try_from(req["mode"].as_u64().unwrap_or(0o644)).unwrap_or(0o644);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(json!({"ok": true}))
}
