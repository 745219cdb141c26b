//! The daemon side of the API: history, fan-out, the socket.
//!
//! The pipeline hands each record, unserialized, to [`ApiHandle::publish`]
//! and, when the ring batch is done, the batch to a bounded queue with
//! [`ApiHandle::flush`] (one hand-off and one wake-up per batch, never
//! blocking the ring reader). One task appends batches to the history and
//! broadcasts them; one task per client serializes and writes. A queue that
//! is full or a client that reads too slowly loses records, and every one is
//! counted in `egress_api_records_dropped_total{reason}`.
use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGauge};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, watch},
};

use super::wire::{Control, Request, Status};
use crate::{
    records::Record,
    sinks::register::{self as reg, MetricError},
};

/// Batches in flight to the history task.
const QUEUE: usize = 1024;
/// A batch is handed on at this size even before the ring batch ends.
const BATCH_MAX: usize = 1024;
const BROADCAST: usize = 16_384;

/// A record in the history and the live stream (shared, never copied).
/// Kept unserialized: a node nobody is looking at pays no JSON per record.
type Kept = Arc<Record>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create {}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("another agent already serves {} (stop it, or pass --api-socket)", path.display())]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {}", path.display())]
    Stale { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on --api-socket {}", path.display())]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("cannot restrict {} to root", path.display())]
    Permissions { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] MetricError),
}

struct Shared {
    history: VecDeque<Kept>,
    capacity: usize,
    live: broadcast::Sender<Kept>,
}

/// What the pipeline holds to publish records.
pub struct ApiHandle {
    queue: mpsc::Sender<Vec<Kept>>,
    batch: Vec<Kept>,
    dropped: IntCounterVec,
}

impl ApiHandle {
    /// Add one record to the current batch.
    pub fn publish(&mut self, item: Record) {
        self.batch.push(Arc::new(item));
        if self.batch.len() >= BATCH_MAX {
            self.flush();
        }
    }

    /// Hand the batch to the history task; a full queue loses it, counted.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(64));
        let n = batch.len() as u64;
        if self.queue.try_send(batch).is_err() {
            self.dropped.with_label_values(&["queue_full"]).inc_by(n);
        }
    }
}

pub struct ApiOptions {
    pub path: PathBuf,
    pub history: usize,
    pub status: Status,
}

/// Bind the socket (root-only), start the tasks; they end with `shutdown`
/// and remove the socket file.
pub fn start(
    opts: ApiOptions,
    registry: &prometheus::Registry,
    shutdown: watch::Receiver<bool>,
) -> Result<ApiHandle, ServerError> {
    let dropped = reg::counter_vec(
        registry,
        "egress_api_records_dropped_total",
        "Records the local API could not deliver: queue_full (the API task fell behind the pipeline) or slow_client (a client read too slowly)",
        &["reason"],
    )?;
    let clients =
        reg::gauge(registry, "egress_api_clients", "Clients connected to the local API socket")?;
    for r in ["queue_full", "slow_client"] {
        dropped.with_label_values(&[r]);
    }
    let listener = bind(&opts.path)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Mutex::new(Shared {
        history: VecDeque::new(),
        capacity: opts.history,
        live: broadcast::channel(BROADCAST).0,
    }));
    tokio::spawn(ingest(rx, shared.clone()));
    let ctx = Arc::new(Conn { shared, status: opts.status, dropped: dropped.clone(), clients });
    tokio::spawn(accept(listener, opts.path, ctx, shutdown));
    Ok(ApiHandle { queue: tx, batch: Vec::with_capacity(64), dropped })
}

/// Create the directory (0700) and the socket (0600); a stale socket is
/// replaced, a live one (another agent) is an error.
fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let only_root = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|source| ServerError::Permissions { path: p.to_path_buf(), source })
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| ServerError::CreateDir { path: dir.to_path_buf(), source })?;
        only_root(dir, 0o700)?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::InUse { path: path.to_path_buf() }),
            Err(_) => std::fs::remove_file(path)
                .map_err(|source| ServerError::Stale { path: path.to_path_buf(), source })?,
        }
    }
    let l = UnixListener::bind(path)
        .map_err(|source| ServerError::Listen { path: path.to_path_buf(), source })?;
    only_root(path, 0o600)?;
    Ok(l)
}

async fn ingest(mut rx: mpsc::Receiver<Vec<Kept>>, shared: Arc<Mutex<Shared>>) {
    while let Some(batch) = rx.recv().await {
        let Ok(mut s) = shared.lock() else { return };
        let followed = s.live.receiver_count() > 0;
        for item in batch {
            if s.capacity > 0 && s.history.len() >= s.capacity {
                s.history.pop_front();
            }
            if followed {
                let _ = s.live.send(item.clone());
            }
            if s.capacity > 0 {
                s.history.push_back(item);
            }
        }
    }
}

struct Conn {
    shared: Arc<Mutex<Shared>>,
    status: Status,
    dropped: IntCounterVec,
    clients: IntGauge,
}

async fn accept(
    listener: UnixListener,
    path: PathBuf,
    ctx: Arc<Conn>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    let sd = shutdown.clone();
                    tokio::spawn(async move {
                        ctx.clients.inc();
                        if let Err(e) = serve(stream, &ctx, sd).await {
                            tracing::debug!("api client: {e}");
                        }
                        ctx.clients.dec();
                    });
                }
                Err(e) => {
                    tracing::warn!("api accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn serve(
    stream: UnixStream,
    ctx: &Conn,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Ok(()),
    }
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let msg = serde_json::json!({"error": format!("bad request: {e}"), "expected": [r#"{"op":"status"}"#, r#"{"op":"snapshot"}"#, r#"{"op":"follow","history":false}"#]});
            wr.write_all(format!("{msg}\n").as_bytes()).await?;
            return wr.flush().await;
        }
    };
    let mut status = ctx.status.clone();
    let (history, mut live) = {
        let s = ctx.shared.lock().map_err(|_| std::io::Error::other("api state poisoned"))?;
        status.history = s.history.len();
        match &req {
            Request::Status => (Vec::new(), None),
            Request::Snapshot => (s.history.iter().cloned().collect::<Vec<_>>(), None),
            // Subscribe under the same lock that appends: no record is both
            // in the history and the stream, none falls between.
            Request::Follow { history } => (
                if *history { s.history.iter().cloned().collect() } else { Vec::new() },
                Some(s.live.subscribe()),
            ),
        }
    };
    if req == Request::Status {
        let l = serde_json::to_string(&status).map_err(std::io::Error::other)?;
        wr.write_all(format!("{l}\n").as_bytes()).await?;
        return wr.flush().await;
    }
    for item in &history {
        wr.write_all(item.json_line().as_bytes()).await?;
        wr.write_all(b"\n").await?;
    }
    wr.flush().await?;
    let Some(live) = live.as_mut() else { return Ok(()) };
    wr.write_all(format!("{}\n", Control::HistoryEnd.line()).as_bytes()).await?;
    wr.flush().await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            r = live.recv() => match r {
                Ok(item) => {
                    wr.write_all(item.json_line().as_bytes()).await?;
                    wr.write_all(b"\n").await?;
                    // Batch what is already queued, then flush once.
                    if live.is_empty() { wr.flush().await?; }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    ctx.dropped.with_label_values(&["slow_client"]).inc_by(n);
                    wr.write_all(format!("{}\n", Control::Lost { count: n }.line()).as_bytes()).await?;
                    wr.flush().await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // The client hung up (EOF) or sent something: either way, done.
            r = tokio::io::AsyncReadExt::read(&mut rd, &mut probe) => { let _ = r; return Ok(()); }
            _ = shutdown.changed() => return wr.flush().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{client, wire::Message},
        records::FlowRecord,
    };

    fn status() -> Status {
        Status {
            version: "t".into(),
            pid: 1,
            started: String::new(),
            attached: "0/0".into(),
            history: 0,
            history_capacity: 3,
        }
    }

    #[tokio::test]
    async fn snapshot_is_bounded_and_follow_streams_in_order() {
        let dir = std::env::temp_dir().join(format!("eo-api-{}", std::process::id()));
        let path = dir.join("api.sock");
        let reg = prometheus::Registry::new();
        let (tx, rx) = watch::channel(false);
        let mut api =
            start(ApiOptions { path: path.clone(), history: 3, status: status() }, &reg, rx)
                .expect("start");
        let mode = std::fs::metadata(&path).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second agent on the same socket is refused.
        let (_t2, rx2) = watch::channel(false);
        assert!(
            start(
                ApiOptions { path: path.clone(), history: 3, status: status() },
                &prometheus::Registry::new(),
                rx2
            )
            .is_err()
        );
        let flow = |pid| Record::Flow(FlowRecord { pid, ..Default::default() });
        for i in 0..5 {
            api.publish(flow(i));
        }
        api.flush();
        let mut follow = None;
        for _ in 0..100 {
            let s = client::status(&path).await.expect("status");
            if s.history == 3 {
                follow = Some(
                    client::open(&path, &Request::Follow { history: false }).await.expect("follow"),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut follow = follow.expect("history filled");
        assert!(matches!(
            follow.next().await.expect("read"),
            Some(Message::Control(Control::HistoryEnd))
        ));
        let snap = client::snapshot(&path).await.expect("snapshot");
        let pids: Vec<u32> = snap
            .iter()
            .map(|r| match r {
                Message::Record(Record::Flow(f)) => f.pid,
                _ => 99,
            })
            .collect();
        assert_eq!(pids, [2, 3, 4], "oldest dropped first");
        for i in 5..8 {
            api.publish(flow(i));
        }
        // Nothing leaves before the batch is flushed.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), follow.next()).await.is_err(),
            "unflushed batch delivered"
        );
        api.flush();
        for want in 5..8 {
            let r = tokio::time::timeout(Duration::from_secs(2), follow.next())
                .await
                .expect("in time")
                .expect("read")
                .expect("record");
            assert!(matches!(&r, Message::Record(Record::Flow(f)) if f.pid == want), "{r:?}");
        }
        tx.send(true).expect("shutdown");
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!path.exists(), "socket removed at shutdown");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
