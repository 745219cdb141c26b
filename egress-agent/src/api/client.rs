//! The client side of the API: `watch`, `flows`, `explain` and tests.
use std::{io::ErrorKind, path::{Path, PathBuf}};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::UnixStream,
};

use super::{Record, Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket, or nobody listening on it.
    #[error(
        "no agent is serving {0} (is `egress-agent run` running on this host? \
         Start one, or run `egress-agent watch`, which loads the probes itself in standalone mode)"
    )]
    Absent(PathBuf),
    #[error("permission denied on {0}: the agent's API socket is root-only; run this command as root")]
    Denied(PathBuf),
    #[error("cannot connect to {0}: {1}")]
    Other(PathBuf, std::io::Error),
}

impl ConnectError {
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent(_))
    }
}

pub async fn connect(path: &Path) -> Result<UnixStream, ConnectError> {
    UnixStream::connect(path).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ConnectError::Absent(path.to_path_buf()),
        ErrorKind::PermissionDenied => ConnectError::Denied(path.to_path_buf()),
        _ => ConnectError::Other(path.to_path_buf(), e),
    })
}

/// Records as they arrive on one connection.
pub struct RecordStream {
    lines: Lines<BufReader<UnixStream>>,
    /// Lines of record kinds this client does not know (a newer agent).
    pub skipped: u64,
}

impl RecordStream {
    /// The next record; Ok(None) when the agent closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Record>> {
        while let Some(line) = self.lines.next_line().await? {
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => return Ok(Some(r)),
                Err(e) => {
                    let v: serde_json::Value = serde_json::from_str(&line).map_err(|_| anyhow::anyhow!("agent sent a line that is not JSON: {e}"))?;
                    if let Some(msg) = v.get("error").and_then(|m| m.as_str()) {
                        anyhow::bail!("agent: {msg}");
                    }
                    self.skipped += 1;
                }
            }
        }
        Ok(None)
    }
}

/// Send `req` and return the answer's lines.
pub async fn open(path: &Path, req: &Request) -> anyhow::Result<RecordStream> {
    let mut s = connect(path).await?;
    s.write_all(format!("{}\n", serde_json::to_string(req)?).as_bytes()).await?;
    Ok(RecordStream { lines: BufReader::new(s).lines(), skipped: 0 })
}

pub async fn status(path: &Path) -> anyhow::Result<Status> {
    let mut s = connect(path).await?;
    s.write_all(format!("{}\n", serde_json::to_string(&Request::Status)?).as_bytes()).await?;
    let line = BufReader::new(s).lines().next_line().await?.ok_or_else(|| anyhow::anyhow!("agent closed the connection"))?;
    Ok(serde_json::from_str(&line)?)
}

/// The agent's history, oldest first.
pub async fn snapshot(path: &Path) -> anyhow::Result<Vec<Record>> {
    let mut s = open(path, &Request::Snapshot).await?;
    let mut out = Vec::new();
    while let Some(r) = s.next().await? {
        out.push(r);
    }
    Ok(out)
}
