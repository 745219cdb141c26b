//! The ring reader: one async task that waits for the kernel's wake-up (or
//! its poll tick), drains the ring into the [`Processor`], and drains it
//! once more at shutdown.
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};

use super::processor::{Output, Processor};

const TICK: Duration = Duration::from_millis(20);
/// The kernel wakes the reader only when an eighth of the ring is unread
/// (one wake-up per batch, not per event); the rest is read on this tick,
/// which bounds how late a record of a quiet node can be.
pub const POLL: Duration = Duration::from_millis(10);

pub struct Pipeline<S> {
    ring: AsyncFd<RingBuf<MapData>>,
    proc: Processor<S>,
    /// Test hook: do not read the ring for this long after start.
    stall: Option<Duration>,
}

impl<S: FnMut(Output)> Pipeline<S> {
    pub fn new(
        ring: RingBuf<MapData>,
        proc: Processor<S>,
        stall: Option<Duration>,
    ) -> std::io::Result<Self> {
        // SAFETY: the ring owns its map fd, which stays open and unchanged
        // for as long as the AsyncFd owns the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { ring, proc, stall })
    }

    /// Run until `shutdown` turns true, then drain what the ring still holds.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
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
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    let n = self.proc.drain(guard.get_inner_mut());
                    guard.clear_ready();
                    if n > 0 { self.proc.account(); }
                }
                _ = poll.tick() => {
                    if self.proc.drain(self.ring.get_mut()) > 0 { self.proc.account(); }
                }
                _ = tick.tick(), if self.proc.waiting() => self.proc.tick(),
                _ = shutdown.changed() => {}
            }
            self.proc.idle();
        }
        self.proc.drain(self.ring.get_mut());
        self.proc.finish();
        Ok(())
    }
}
