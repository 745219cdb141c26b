//! The client side of the API: `watch`, `flows`, `explain` and tests.
use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::UnixStream,
};

use super::wire::{Message, Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket, or nobody listening on it.
    #[error(
        "no agent is serving {0} (is `egress-agent run` running on this host? \
         Start one, or run `egress-agent watch`, which loads the probes itself in standalone mode)"
    )]
    Absent(PathBuf),
    #[error(
        "permission denied on {0}: the agent's API socket is root-only; run this command as root"
    )]
    Denied(PathBuf),
    #[error("cannot connect to {0}: {1}")]
    Other(PathBuf, std::io::Error),
}

impl ConnectError {
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("agent sent a line that is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("agent: {0}")]
    Agent(String),
    #[error("agent closed the connection")]
    Closed,
    #[error("agent's status: {0}")]
    Status(serde_json::Error),
    #[error("encoding the request: {0}")]
    Encode(serde_json::Error),
}

pub async fn connect(path: &Path) -> Result<UnixStream, ConnectError> {
    UnixStream::connect(path).await.map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            ConnectError::Absent(path.to_path_buf())
        }
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
    /// The next line; Ok(None) when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<Message>, ClientError> {
        while let Some(line) = self.lines.next_line().await? {
            match serde_json::from_str::<Message>(&line) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&line).map_err(|_| ClientError::NotJson(e))?;
                    if let Some(msg) = v.get("error").and_then(|m| m.as_str()) {
                        return Err(ClientError::Agent(msg.to_string()));
                    }
                    self.skipped += 1;
                }
            }
        }
        Ok(None)
    }
}

async fn send(path: &Path, req: &Request) -> Result<UnixStream, ClientError> {
    let mut s = connect(path).await?;
    let line = serde_json::to_string(req).map_err(ClientError::Encode)?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    Ok(s)
}

/// Send `req` and return the answer's lines.
pub async fn open(path: &Path, req: &Request) -> Result<RecordStream, ClientError> {
    let s = send(path, req).await?;
    Ok(RecordStream { lines: BufReader::new(s).lines(), skipped: 0 })
}

pub async fn status(path: &Path) -> Result<Status, ClientError> {
    let s = send(path, &Request::Status).await?;
    let line = BufReader::new(s).lines().next_line().await?.ok_or(ClientError::Closed)?;
    serde_json::from_str(&line).map_err(ClientError::Status)
}

/// The agent's history, oldest first.
pub async fn snapshot(path: &Path) -> Result<Vec<Message>, ClientError> {
    let mut s = open(path, &Request::Snapshot).await?;
    let mut out = Vec::new();
    while let Some(r) = s.next().await? {
        out.push(r);
    }
    Ok(out)
}
