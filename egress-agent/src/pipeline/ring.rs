//! The ring reader: one async task that waits for the kernel's wake-up (or
//! its poll tick), drains both rings (flow events, captures) into the
//! [`Processor`], drains the kernel's counts of clean flows once a second,
//! keeps the kernel's `CONTROL` in step (every flow as events while a client
//! watches), and drains once more at shutdown.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use egress_common::{AggKey, AggValue};
use tokio::{io::unix::AsyncFd, sync::watch};

use super::processor::{Output, Processor};
use crate::kernel::control::Control;

const TICK: Duration = Duration::from_millis(20);
/// The kernel wakes the reader only when an eighth of a ring is unread (one
/// wake-up per batch, not per event); the rest is read on this tick, which
/// bounds how late a record of a quiet node can be.
pub const POLL: Duration = Duration::from_millis(10);
/// How often the kernel's counts of clean flows become counted rows.
pub const AGGREGATE_EVERY: Duration = Duration::from_secs(1);

/// Who wants every flow as an event: `--log-flows`, a standalone watch, or
/// clients streaming from the local API (counted in `watchers`).
#[derive(Debug, Clone, Default)]
pub struct Verbosity {
    pub always: bool,
    pub watchers: Arc<AtomicUsize>,
}

impl Verbosity {
    fn wanted(&self) -> bool {
        self.always || self.watchers.load(Ordering::Relaxed) > 0
    }
}

pub struct Pipeline<S> {
    events: AsyncFd<RingBuf<MapData>>,
    capture: AsyncFd<RingBuf<MapData>>,
    control: Control,
    verbosity: Verbosity,
    proc: Processor<S>,
    /// Test hook: do not read the ring for this long after start.
    stall: Option<Duration>,
}

fn register(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring owns its map fd, which stays open and unchanged for
    // as long as the AsyncFd owns the ring.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

impl<S: FnMut(Output)> Pipeline<S> {
    pub fn new(
        events: RingBuf<MapData>,
        capture: RingBuf<MapData>,
        control: Control,
        verbosity: Verbosity,
        proc: Processor<S>,
        stall: Option<Duration>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            events: register(events)?,
            capture: register(capture)?,
            control,
            verbosity,
            proc,
            stall,
        })
    }

    /// Flows first, then captures, then the closes that waited for them: a
    /// flow's connect is committed before its first capture, and its last
    /// captures before its close, so this order sees each in its place.
    fn drain_all(&mut self) -> usize {
        let n = self.proc.drain(self.events.get_mut()) + self.proc.drain(self.capture.get_mut());
        self.proc.flush();
        n
    }

    /// Flip the kernel to the other count map; the one it left is read on
    /// the next round, when no program can still be adding to it.
    fn aggregate(
        &mut self,
        pending: &mut Option<usize>,
        since: &mut Instant,
        buf: &mut Vec<(AggKey, AggValue)>,
    ) {
        if let Some(old) = pending.take()
            && let Err(e) = self.control.drain(old, buf)
        {
            tracing::warn!("reading the kernel's flow counts: {e}");
        }
        let interval_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        *since = Instant::now();
        self.proc.on_aggregates(buf, interval_ms);
        match self.control.flip() {
            Ok(old) => *pending = Some(old),
            Err(e) => tracing::warn!("switching the kernel's flow counts: {e}"),
        }
        let wanted = self.verbosity.wanted();
        if wanted != self.control.verbose()
            && let Err(e) = self.control.set_verbose(wanted)
        {
            tracing::warn!("telling the kernel to send every flow: {e}");
        }
    }

    /// Run until `shutdown` turns true, then `stop` the kernel's side (no
    /// program writes to the rings any more) and drain what they still hold:
    /// a bounded amount, so the last drain ends even under a flood.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        stop: impl FnOnce() -> usize,
    ) -> std::io::Result<()> {
        if let Some(d) = self.stall.take() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.changed() => {}
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut agg = tokio::time::interval(AGGREGATE_EVERY);
        agg.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut pending, mut since, mut buf) = (None, Instant::now(), Vec::new());
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                guard = self.events.readable_mut() => {
                    guard?.clear_ready();
                    if self.drain_all() > 0 { self.proc.account(); }
                }
                guard = self.capture.readable_mut() => {
                    guard?.clear_ready();
                    if self.drain_all() > 0 { self.proc.account(); }
                }
                _ = poll.tick() => {
                    if self.drain_all() > 0 { self.proc.account(); }
                }
                _ = tick.tick(), if self.proc.waiting() => self.proc.tick(),
                _ = agg.tick() => {
                    self.aggregate(&mut pending, &mut since, &mut buf);
                    self.proc.forwarded();
                }
                _ = shutdown.changed() => {}
            }
            self.proc.idle();
        }
        let stopped = stop();
        let drained = self.drain_all();
        tracing::info!(programs = stopped, events = drained, "programs detached; rings drained");
        // Both count maps: the one left behind, and the current one (no
        // program will add to it once the rings are drained for good).
        self.aggregate(&mut pending, &mut since, &mut buf);
        self.aggregate(&mut pending, &mut since, &mut buf);
        self.proc.finish();
        Ok(())
    }
}
