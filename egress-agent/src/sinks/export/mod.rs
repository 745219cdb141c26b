//! The export sink of `run`: the records that leave the node, as one JSON
//! object per line on stdout (what GKE ships to Cloud Logging and Fluent Bit
//! or Filebeat ship to ELK) and, with `--otlp-endpoint`, as OTLP logs.
//!
//! ```text
//! pipeline task ── select ──▶ bounded queue ──▶ router task ──▶ stdout queue ─▶ writer thread
//!  (classify, count ok)       (one hand-off        (hold, merge,   └▶ OTLP queue ──▶ sender task
//!                              per ring batch)      aggregate, ECS)
//! ```
//! - [`select`]: which records, decided on the pipeline's task without
//!   serializing anything; [`hold`]: legs held for their chain, lookups
//!   merged, `ok` counts per interval;
//! - [`ecs`]: the Elastic Common Schema mapping (`--log-format ecs`); the
//!   native format (`json`) is the records' own JSON;
//! - [`stdout`] and [`otlp`]: the sinks, each behind a bounded queue.
//!
//! Back-pressure never reaches the ring: every queue is `try_send`; what
//! does not fit is dropped and counted in `egress_export_dropped_total{sink}`
//! (`stdout`, `otlp`), what went out in `egress_export_records_total{sink}`.
pub mod ecs;
pub mod hold;
pub mod otlp;
pub mod select;
pub mod stdout;

use std::{
    io::Write,
    time::{Duration, Instant},
};

use prometheus::{IntCounter, Registry};
use serde_json::{Map, Value};
use tokio::{sync::mpsc, task::JoinHandle};

use self::{
    ecs::Observer,
    hold::{Holds, Ready},
    otlp::{OtlpError, OtlpOptions, OtlpSink},
    select::{Class, Counts, OkPolicy, Selection, Selector},
    stdout::StdoutSink,
};
use super::register::{self as reg, MetricError};
use crate::records::Record;

/// Ring batches in flight to the router at most.
const QUEUE: usize = 1024;
/// A batch is handed on at this size even before the ring batch ends.
const BATCH_MAX: usize = 1024;
/// How often the router looks at what it holds (a held lookup goes out at
/// most this late past its merge window).
const TICK: Duration = Duration::from_millis(100);

/// The line format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The records' own JSON (`"record":"flow"`, …).
    #[default]
    Json,
    /// Elastic Common Schema, with Cloud Logging's `severity` and `time`.
    Ecs,
}

/// What `run`'s flags say about export, as plain data.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub selection: Selection,
    pub ok: OkPolicy,
    pub format: Format,
    /// Write to stdout (else only OTLP).
    pub stdout: bool,
    pub otlp: Option<OtlpOptions>,
    pub observer: Observer,
}

impl ExportOptions {
    pub fn enabled(&self) -> bool {
        self.selection != Selection::None && (self.stdout || self.otlp.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Metrics(#[from] MetricError),
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    #[error("starting the stdout writer")]
    Thread(#[source] std::io::Error),
}

/// The counters of one sink.
#[derive(Clone)]
struct Counters {
    written: IntCounter,
    dropped: IntCounter,
}

/// One hand-off from the pipeline: the records chosen in a ring batch and
/// the `ok` flows it counted.
struct Batch {
    items: Vec<(Record, Class)>,
    counts: Counts,
}

/// What the pipeline holds: [`ExportHandle::offer`] each record,
/// [`ExportHandle::flush`] at the end of each ring batch. Never blocks.
pub struct ExportHandle {
    selector: Selector,
    batch: Vec<(Record, Class)>,
    queue: mpsc::Sender<Batch>,
    /// A full queue loses the batch for every sink.
    dropped: Vec<IntCounter>,
}

impl ExportHandle {
    pub fn offer(&mut self, r: &Record) {
        let class = self.selector.classify(r);
        if class != Class::Skip {
            self.batch.push((r.clone(), class));
            if self.batch.len() >= BATCH_MAX {
                self.flush();
            }
        }
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() && self.selector.counts.is_empty() {
            return;
        }
        let items = std::mem::replace(&mut self.batch, Vec::with_capacity(64));
        let n = items.len() as u64;
        let counts = std::mem::take(&mut self.selector.counts);
        if self.queue.try_send(Batch { items, counts }).is_err() {
            for d in &self.dropped {
                d.inc_by(n);
            }
        }
    }
}

impl Drop for ExportHandle {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The tasks behind the handle: wait for them to write what they hold
/// once the handle is dropped (the pipeline ended).
pub struct Exporting {
    router: JoinHandle<()>,
    stdout: Option<std::thread::JoinHandle<()>>,
    otlp: Option<JoinHandle<()>>,
}

impl Exporting {
    /// Drain: everything held is written, the OTLP queue sent, within `grace`.
    pub async fn finish(self, grace: Duration) {
        let by = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(by, self.router).await.is_err() {
            tracing::warn!("export: records still held after {grace:?}; not written");
        }
        if let Some(t) = self.otlp
            && tokio::time::timeout_at(by, t).await.is_err()
        {
            tracing::warn!("export: OTLP queue not sent within {grace:?}");
        }
        // A blocked stdout keeps its writer in write(): the agent stops
        // anyway (the thread ends with the process), it does not hang.
        if let Some(t) = self.stdout {
            while !t.is_finished() && tokio::time::Instant::now() < by {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !t.is_finished() {
                tracing::warn!(
                    "export: stdout still blocked after {grace:?}; its queued lines are lost"
                );
            }
        }
    }
}

/// The counters of the `stdout` and `otlp` sinks, both exported from the start.
fn counters(registry: &Registry) -> Result<[Counters; 2], MetricError> {
    let written = reg::counter_vec(
        registry,
        "egress_export_records_total",
        "Records written by an export sink: stdout (lines written), otlp (records the collector accepted)",
        &["sink"],
    )?;
    let dropped = reg::counter_vec(
        registry,
        "egress_export_dropped_total",
        "Records an export sink dropped: its queue was full (stdout blocked, collector slow or down) or, for otlp, the batch failed after its retries",
        &["sink"],
    )?;
    Ok(["stdout", "otlp"].map(|s| Counters {
        written: written.with_label_values(&[s]),
        dropped: dropped.with_label_values(&[s]),
    }))
}

/// Start the sinks and the router; `out` is stdout (a test's pipe in tests).
pub fn start(
    opts: &ExportOptions,
    registry: &Registry,
    out: Box<dyn Write + Send>,
) -> Result<(ExportHandle, Exporting), ExportError> {
    let [out_c, otlp_c] = counters(registry)?;
    let mut dropped = Vec::new();
    let (stdout, stdout_thread) = if opts.stdout {
        dropped.push(out_c.dropped.clone());
        let (s, t) = StdoutSink::start(out, stdout::QUEUE, out_c.written, out_c.dropped)
            .map_err(ExportError::Thread)?;
        (Some(s), Some(t))
    } else {
        (None, None)
    };
    let (otlp, otlp_task) = match &opts.otlp {
        Some(o) => {
            dropped.push(otlp_c.dropped.clone());
            let (s, t) = otlp::start(o, &opts.observer, otlp_c.written, otlp_c.dropped)?;
            (Some(s), Some(t))
        }
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let aggregate = match opts.ok {
        OkPolicy::Aggregate(every) if opts.selection == Selection::Audit => Some(every),
        _ => None,
    };
    let router = Router {
        holds: Holds::new(aggregate),
        format: opts.format,
        observer: opts.observer.clone(),
        stdout,
        otlp,
    };
    let router = tokio::spawn(router.run(rx));
    let handle = ExportHandle {
        selector: Selector::new(opts.selection, opts.ok),
        batch: Vec::with_capacity(64),
        queue: tx,
        dropped,
    };
    Ok((handle, Exporting { router, stdout: stdout_thread, otlp: otlp_task }))
}

struct Router {
    holds: Holds,
    format: Format,
    observer: Observer,
    stdout: Option<StdoutSink>,
    otlp: Option<OtlpSink>,
}

impl Router {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ready = Vec::new();
        loop {
            tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => self.take(b, &mut ready),
                    None => break,
                },
                _ = tick.tick() => self.holds.due(Instant::now(), false, &mut ready),
            }
            self.write(&mut ready);
        }
        self.holds.due(Instant::now(), true, &mut ready);
        self.write(&mut ready);
    }

    fn take(&mut self, b: Batch, ready: &mut Vec<Ready>) {
        let now = Instant::now();
        self.holds.count(b.counts);
        for (rec, class) in b.items {
            match (class, rec) {
                (Class::Hold(sampled), rec) => self.holds.leg(now, rec, sampled, ready),
                (Class::Merge, Record::Dns(d)) => self.holds.dns(now, d, ready),
                (Class::Write(sampled), rec) => {
                    if let Record::Chain(c) = &rec {
                        self.holds.chain(c);
                    }
                    ready.push(Ready::Record(rec, sampled));
                }
                (_, rec) => ready.push(Ready::Record(rec, None)),
            }
        }
    }

    fn write(&mut self, ready: &mut Vec<Ready>) {
        for r in ready.drain(..) {
            match r {
                // The native line exactly as the records write themselves.
                Ready::Record(rec, None) if self.format == Format::Json && self.otlp.is_none() => {
                    if let Some(s) = &self.stdout {
                        s.offer(rec.json_line());
                    }
                }
                Ready::Record(rec, sampled) => {
                    let Ok(Value::Object(mut m)) = serde_json::to_value(&rec) else { continue };
                    if let Some(n) = sampled {
                        m.insert("sampled".into(), n.into());
                    }
                    self.emit(m);
                }
                Ready::Row(m) => self.emit(m),
            }
        }
    }

    fn emit(&self, native: Map<String, Value>) {
        if self.format == Format::Json && self.otlp.is_none() {
            if let Some(s) = &self.stdout {
                s.offer(Value::Object(native).to_string());
            }
            return;
        }
        let json_line = (self.format == Format::Json && self.stdout.is_some())
            .then(|| Value::Object(native.clone()).to_string());
        let doc = ecs::document(native, &self.observer);
        if let Some(o) = &self.otlp {
            o.offer(&doc);
        }
        if let Some(s) = &self.stdout {
            s.offer(json_line.unwrap_or_else(|| Value::Object(doc).to_string()));
        }
    }
}

#[cfg(test)]
mod tests;
