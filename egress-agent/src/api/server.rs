//! The daemon side of the API: history, fan-out, the socket.
//!
//! The pipeline hands each record, unserialized, to [`ApiHandle::publish`]
//! and, when the ring batch is done, the batch to a bounded queue with
//! [`ApiHandle::flush`] (one hand-off and one wake-up per batch, never
//! blocking the ring reader). One task appends batches to the history and
//! broadcasts them; one task per client serializes and writes. A queue that
//! is full or a client that reads too slowly loses records, and every one is
//! counted in `egress_api_records_dropped_total{reason}`.
//!
//! Clients are bounded ([`ApiLimits`]): at most `max_clients` at once (more
//! are told so and closed), a request line of at most
//! [`MAX_REQUEST_BYTES`](super::wire::MAX_REQUEST_BYTES) read within
//! `request_timeout`, and every write done within `write_timeout` or the
//! client is dropped (its undelivered records counted `slow_client`). Each
//! client the API turns away or cuts off is counted in
//! `egress_api_clients_dropped_total{reason}`. The socket file: [`super::socket`].
use std::{
    collections::VecDeque,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGauge};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, BufWriter},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{Semaphore, broadcast, mpsc, watch},
};

use super::{
    socket::{self, SocketError, SocketId},
    wire::{Control, MAX_REQUEST_BYTES, Request, RequestError, Status, parse_request},
};
use crate::{
    records::Record,
    sinks::register::{self as reg, MetricError},
};

/// Batches in flight to the history task.
const QUEUE: usize = 1024;
/// A batch is handed on at this size even before the ring batch ends.
const BATCH_MAX: usize = 1024;
const BROADCAST: usize = 16_384;

/// Reasons of `egress_api_clients_dropped_total`.
pub const CLIENT_DROP_REASONS: [&str; 5] =
    ["too_many_clients", "request_too_long", "bad_request", "request_timeout", "write_timeout"];

/// A record in the history and the live stream (shared, never copied).
/// Kept unserialized: a node nobody is looking at pays no JSON per record.
type Kept = Arc<Record>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Metrics(#[from] MetricError),
}

/// How much one client may take from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Clients connected at once; more are told so and closed.
    pub max_clients: usize,
    /// Time a client has to send its request line.
    pub request_timeout: Duration,
    /// Time any one write to a client may take; a client that does not
    /// read for that long is dropped.
    pub write_timeout: Duration,
}

/// Default of `run --api-max-clients`.
pub const DEFAULT_MAX_CLIENTS: u16 = 32;
/// Default of `run --api-write-timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_clients: DEFAULT_MAX_CLIENTS as usize,
            request_timeout: Duration::from_secs(5),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

struct Shared {
    history: VecDeque<Kept>,
    capacity: usize,
    live: broadcast::Sender<Kept>,
}

/// The records held now, oldest first (see [`History::with`]).
pub type HistoryIter<'a> =
    std::iter::Map<std::collections::vec_deque::Iter<'a, Kept>, fn(&'a Kept) -> &'a Record>;

/// Read access to the history: the peer API (`api::peer`) answers from it.
#[derive(Clone)]
pub struct History(Arc<Mutex<Shared>>);

impl History {
    /// Run `f` over the records held now, under the history's lock (keep
    /// `f` short: the pipeline's batches wait meanwhile). None if a panic
    /// poisoned the lock.
    pub fn with<R>(&self, f: impl FnOnce(HistoryIter<'_>) -> R) -> Option<R> {
        let s = self.0.lock().ok()?;
        let deref: fn(&Kept) -> &Record = |k| k;
        Some(f(s.history.iter().map(deref)))
    }
}

/// What the pipeline holds to publish records.
pub struct ApiHandle {
    queue: mpsc::Sender<Vec<Kept>>,
    batch: Vec<Kept>,
    dropped: IntCounterVec,
    history: History,
}

impl ApiHandle {
    /// Add one record to the current batch.
    pub fn publish(&mut self, item: Record) {
        self.batch.push(Arc::new(item));
        if self.batch.len() >= BATCH_MAX {
            self.flush();
        }
    }

    /// The history, for the peer API.
    pub fn history(&self) -> History {
        self.history.clone()
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
    pub limits: ApiLimits,
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
    let clients_dropped = reg::counter_vec(
        registry,
        "egress_api_clients_dropped_total",
        "Clients the local API turned away or cut off: too_many_clients, request_too_long, bad_request, request_timeout, write_timeout (did not read for --api-write-timeout)",
        &["reason"],
    )?;
    for r in ["queue_full", "slow_client"] {
        dropped.with_label_values(&[r]);
    }
    for r in CLIENT_DROP_REASONS {
        clients_dropped.with_label_values(&[r]);
    }
    let (listener, id) = socket::bind(&opts.path)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Mutex::new(Shared {
        history: VecDeque::new(),
        capacity: opts.history,
        live: broadcast::channel(BROADCAST).0,
    }));
    tokio::spawn(ingest(rx, shared.clone()));
    let history = History(shared.clone());
    let ctx = Arc::new(Conn {
        shared,
        status: opts.status,
        dropped: dropped.clone(),
        clients,
        clients_dropped,
        limits: opts.limits,
        slots: Arc::new(Semaphore::new(opts.limits.max_clients)),
    });
    tokio::spawn(accept(listener, (opts.path, id), ctx, shutdown));
    Ok(ApiHandle { queue: tx, batch: Vec::with_capacity(64), dropped, history })
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
    clients_dropped: IntCounterVec,
    limits: ApiLimits,
    /// One permit per connected client.
    slots: Arc<Semaphore>,
}

impl Conn {
    fn drop_client(&self, reason: &str) {
        self.clients_dropped.with_label_values(&[reason]).inc();
    }
}

async fn accept(
    listener: UnixListener,
    (path, id): (PathBuf, SocketId),
    ctx: Arc<Conn>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
                        // Told without waiting on the client, then closed.
                        let msg = format!(
                            "{{\"error\":\"too many clients (at most {}); try again later\"}}\n",
                            ctx.limits.max_clients
                        );
                        let _ = stream.try_write(msg.as_bytes());
                        ctx.drop_client("too_many_clients");
                        continue;
                    };
                    let ctx = ctx.clone();
                    let sd = shutdown.clone();
                    tokio::spawn(async move {
                        ctx.clients.inc();
                        if let Err(e) = serve(stream, &ctx, sd).await {
                            tracing::debug!("api client: {e}");
                        }
                        ctx.clients.dec();
                        drop(permit);
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
    socket::remove(&path, id);
}

/// Why a client's connection ended early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("client did not read for {0:?}: dropped")]
    WriteTimeout(Duration),
}

/// One write (or flush) to the client, within the write timeout.
async fn timed(
    limit: Duration,
    f: impl Future<Output = std::io::Result<()>>,
) -> Result<(), ServeError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ServeError::WriteTimeout(limit)),
    }
}

async fn write_line(
    wr: &mut BufWriter<OwnedWriteHalf>,
    limit: Duration,
    line: &str,
) -> Result<(), ServeError> {
    timed(limit, async {
        wr.write_all(line.as_bytes()).await?;
        wr.write_all(b"\n").await
    })
    .await
}

/// The request line: at most [`MAX_REQUEST_BYTES`], within the request
/// timeout. `Ok(None)`: the client left (or was refused, counted) without one.
async fn read_request(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: &mut BufWriter<OwnedWriteHalf>,
    ctx: &Conn,
) -> Result<Option<Request>, ServeError> {
    let mut line = Vec::with_capacity(64);
    let cap = (MAX_REQUEST_BYTES + 1) as u64;
    let read = tokio::time::timeout(
        ctx.limits.request_timeout,
        (&mut *rd).take(cap).read_until(b'\n', &mut line),
    )
    .await;
    match read {
        Err(_) => {
            ctx.drop_client("request_timeout");
            return Ok(None);
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let err = match parse_request(&line) {
        Ok(r) => return Ok(Some(r)),
        Err(e) => e,
    };
    let reason = match err {
        RequestError::TooLong => "request_too_long",
        RequestError::Malformed(_) => "bad_request",
    };
    ctx.drop_client(reason);
    let msg = serde_json::json!({"error": err.to_string(), "expected": [r#"{"op":"status"}"#, r#"{"op":"snapshot"}"#, r#"{"op":"follow","history":false}"#]});
    write_line(wr, ctx.limits.write_timeout, &msg.to_string()).await?;
    timed(ctx.limits.write_timeout, wr.flush()).await?;
    Ok(None)
}

async fn serve(
    stream: UnixStream,
    ctx: &Conn,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let Some(req) = read_request(&mut rd, &mut wr, ctx).await? else { return Ok(()) };
    let mut undelivered = 0u64;
    let r = answer(req, &mut rd, &mut wr, ctx, shutdown, &mut undelivered).await;
    if let Err(ServeError::WriteTimeout(_)) = &r {
        ctx.drop_client("write_timeout");
        ctx.dropped.with_label_values(&["slow_client"]).inc_by(undelivered);
    }
    r
}

/// Answer `req`. On a write timeout, `undelivered` is the number of records
/// this client was due and did not get.
async fn answer(
    req: Request,
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: &mut BufWriter<OwnedWriteHalf>,
    ctx: &Conn,
    mut shutdown: watch::Receiver<bool>,
    undelivered: &mut u64,
) -> Result<(), ServeError> {
    let limit = ctx.limits.write_timeout;
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
        write_line(wr, limit, &l).await?;
        return timed(limit, wr.flush()).await;
    }
    for (i, item) in history.iter().enumerate() {
        *undelivered = (history.len() - i) as u64;
        write_line(wr, limit, &item.json_line()).await?;
    }
    *undelivered = 0;
    timed(limit, wr.flush()).await?;
    let Some(live) = live.as_mut() else { return Ok(()) };
    write_line(wr, limit, &Control::HistoryEnd.line()).await?;
    timed(limit, wr.flush()).await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            r = live.recv() => match r {
                Ok(item) => {
                    *undelivered = 1 + live.len() as u64;
                    write_line(wr, limit, &item.json_line()).await?;
                    // Batch what is already queued, then flush once.
                    if live.is_empty() { timed(limit, wr.flush()).await?; }
                    *undelivered = 0;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    ctx.dropped.with_label_values(&["slow_client"]).inc_by(n);
                    write_line(wr, limit, &Control::Lost { count: n }.line()).await?;
                    timed(limit, wr.flush()).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // The client hung up (EOF) or sent something: either way, done.
            r = rd.read(&mut probe) => { let _ = r; return Ok(()); }
            _ = shutdown.changed() => return timed(limit, wr.flush()).await,
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
