//! The client side of the API: `watch`, `flows`, `explain` and tests.
//!
//! What the client takes from the socket is bounded: a line longer than
//! [`MAX_LINE_BYTES`] is an error as soon as that many bytes are buffered (a
//! record is a few KiB); a snapshot may total at most [`MAX_SNAPSHOT_BYTES`]
//! and must arrive within [`REPLY_TIMEOUT`], as must a status answer and the
//! connect itself.
use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::wire::{Message, Request, Status};

/// Longest line the client accepts from the agent.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most bytes a snapshot (the whole history) may take.
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// Time for the connect, a status answer, or a whole snapshot.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error(
        "the agent sent a line longer than {limit} bytes: not an agent answer (wrong --api-socket?)"
    )]
    LineTooLong { limit: usize },
    #[error("the agent's answer exceeds {limit} bytes: not read further")]
    TooLarge { limit: usize },
    #[error("no complete answer from the agent within {0:?}")]
    Timeout(Duration),
}

pub async fn connect(path: &Path) -> Result<UnixStream, ConnectError> {
    let timed_out = || std::io::Error::new(ErrorKind::TimedOut, "connect timed out");
    let r = tokio::time::timeout(REPLY_TIMEOUT, UnixStream::connect(path))
        .await
        .unwrap_or_else(|_| Err(timed_out()));
    r.map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            ConnectError::Absent(path.to_path_buf())
        }
        ErrorKind::PermissionDenied => ConnectError::Denied(path.to_path_buf()),
        _ => ConnectError::Other(path.to_path_buf(), e),
    })
}

/// Records as they arrive on one connection.
pub struct RecordStream {
    reader: BufReader<UnixStream>,
    line: Vec<u8>,
    /// The request could not be written (the agent closed first): the
    /// error, unless the agent's answer says why.
    unsent: Option<std::io::Error>,
    /// Bytes read so far on this connection.
    pub bytes: usize,
    /// Lines of record kinds this client does not know (a newer agent).
    pub skipped: u64,
}

impl RecordStream {
    /// The next line, at most [`MAX_LINE_BYTES`]; Ok(None) at the end.
    async fn next_line(&mut self) -> Result<Option<&[u8]>, ClientError> {
        self.line.clear();
        let cap = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.reader).take(cap).read_until(b'\n', &mut self.line).await?;
        self.bytes += n;
        if n == 0 {
            return match self.unsent.take() {
                Some(e) if self.bytes == 0 => Err(e.into()),
                _ => Ok(None),
            };
        }
        if self.line.last() != Some(&b'\n') && self.line.len() > MAX_LINE_BYTES {
            return Err(ClientError::LineTooLong { limit: MAX_LINE_BYTES });
        }
        Ok(Some(self.line.strip_suffix(b"\n").unwrap_or(&self.line)))
    }

    /// The next message; Ok(None) when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<Message>, ClientError> {
        while let Some(line) = self.next_line().await? {
            match serde_json::from_slice::<Message>(line) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(line).map_err(|_| ClientError::NotJson(e))?;
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

/// Connect and send `req`. An agent that refuses a client (too many) says
/// why and closes before reading: the write then fails, the answer is
/// still there to read, so that error waits for the answer (`unsent`).
async fn send(
    path: &Path,
    req: &Request,
) -> Result<(UnixStream, Option<std::io::Error>), ClientError> {
    let mut s = connect(path).await?;
    let line = serde_json::to_string(req).map_err(ClientError::Encode)?;
    match s.write_all(format!("{line}\n").as_bytes()).await {
        Ok(()) => Ok((s, None)),
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            Ok((s, Some(e)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Send `req` and return the answer's lines.
pub async fn open(path: &Path, req: &Request) -> Result<RecordStream, ClientError> {
    let (s, unsent) = send(path, req).await?;
    Ok(RecordStream { reader: BufReader::new(s), line: Vec::new(), unsent, bytes: 0, skipped: 0 })
}

pub async fn status(path: &Path) -> Result<Status, ClientError> {
    let work = async {
        let mut s = open(path, &Request::Status).await?;
        let line = s.next_line().await?.ok_or(ClientError::Closed)?;
        match serde_json::from_slice::<Status>(line) {
            Ok(st) => Ok(st),
            Err(e) => {
                let v: Option<serde_json::Value> = serde_json::from_slice(line).ok();
                match v.as_ref().and_then(|v| v.get("error")).and_then(|m| m.as_str()) {
                    Some(msg) => Err(ClientError::Agent(msg.to_string())),
                    None => Err(ClientError::Status(e)),
                }
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, work)
        .await
        .unwrap_or(Err(ClientError::Timeout(REPLY_TIMEOUT)))
}

/// The agent's history, oldest first (bounded: [`MAX_SNAPSHOT_BYTES`],
/// [`REPLY_TIMEOUT`]).
pub async fn snapshot(path: &Path) -> Result<Vec<Message>, ClientError> {
    snapshot_within(path, REPLY_TIMEOUT, MAX_SNAPSHOT_BYTES).await
}

async fn snapshot_within(
    path: &Path,
    limit: Duration,
    max_bytes: usize,
) -> Result<Vec<Message>, ClientError> {
    let work = async {
        let mut s = open(path, &Request::Snapshot).await?;
        let mut out = Vec::new();
        while let Some(r) = s.next().await? {
            if s.bytes > max_bytes {
                return Err(ClientError::TooLarge { limit: max_bytes });
            }
            out.push(r);
        }
        Ok(out)
    };
    tokio::time::timeout(limit, work).await.unwrap_or(Err(ClientError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;
    use crate::records::{FlowRecord, Record};

    /// A fake agent on a socket in a scratch dir that answers every client
    /// with `answer` (then holds the connection open for `hold`).
    async fn fake_agent(tag: &str, answer: Vec<u8>, hold: Duration) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("eo-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("api.sock");
        let l = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut req = [0u8; 64];
                    let _ = s.read(&mut req).await;
                    let _ = s.write_all(&answer).await;
                    tokio::time::sleep(hold).await;
                });
            }
        });
        path
    }

    #[tokio::test]
    async fn a_huge_line_is_refused_once_the_cap_is_reached() {
        // 8 MiB of one line, never ending: the client stops at 1 MiB.
        let path = fake_agent("huge", vec![b'{'; 8 << 20], Duration::from_secs(30)).await;
        let err = snapshot(&path).await.expect_err("refused");
        assert!(matches!(err, ClientError::LineTooLong { limit: MAX_LINE_BYTES }), "{err}");
        let err = status(&path).await.expect_err("refused");
        assert!(matches!(err, ClientError::LineTooLong { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_reply_that_never_ends_or_grows_too_big_is_bounded() {
        let line = Record::Flow(FlowRecord { pid: 1, ..FlowRecord::default() }).json_line();
        let path =
            fake_agent("slow", format!("{line}\n").into_bytes(), Duration::from_secs(30)).await;
        // The agent answers one record and then neither ends nor sends more.
        let t0 = std::time::Instant::now();
        let err = snapshot_within(&path, Duration::from_millis(300), MAX_SNAPSHOT_BYTES)
            .await
            .expect_err("timeout");
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let many = format!("{line}\n").repeat(1000).into_bytes();
        let path = fake_agent("big", many, Duration::ZERO).await;
        let err = snapshot_within(&path, REPLY_TIMEOUT, 10_000).await.expect_err("too large");
        assert!(matches!(err, ClientError::TooLarge { limit: 10_000 }), "{err}");
        assert_eq!(snapshot(&path).await.expect("within bounds").len(), 1000);
    }
}
