//! Lines on stdout, written by a thread of their own behind a bounded
//! queue: a stdout that blocks (a full pipe nobody reads, a stuck log
//! shipper) blocks that thread only. The queue fills and further lines are
//! dropped and counted; the pipeline and the ring never wait for it.
use std::{
    io::Write,
    sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    thread::JoinHandle,
};

use prometheus::IntCounter;

/// Lines waiting for stdout at most.
pub const QUEUE: usize = 8192;

pub struct StdoutSink {
    tx: SyncSender<String>,
    dropped: IntCounter,
}

impl StdoutSink {
    /// Start the writer thread on `out` (stdout, or a test's pipe).
    pub fn start(
        out: Box<dyn Write + Send>,
        queue: usize,
        written: IntCounter,
        dropped: IntCounter,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = sync_channel(queue.max(1));
        let t = std::thread::Builder::new()
            .name("export-stdout".into())
            .spawn(move || write_lines(out, &rx, &written))?;
        Ok((Self { tx, dropped }, t))
    }

    /// Queue one line; a full queue (stdout blocked) drops it, counted.
    pub fn offer(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// Write until the queue closes; a batch of queued lines is one write.
fn write_lines(mut out: Box<dyn Write + Send>, rx: &Receiver<String>, written: &IntCounter) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        let mut n = 1;
        buf.clear();
        buf.extend_from_slice(first.as_bytes());
        buf.push(b'\n');
        while buf.len() < 64 * 1024 {
            let Ok(line) = rx.try_recv() else { break };
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            n += 1;
        }
        // A closed stdout (EPIPE) is not the agent's problem: lines are then
        // drained and not written, and the agent goes on observing.
        if broken {
            continue;
        }
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Ok(()) => written.inc_by(n),
            Err(e) => {
                tracing::warn!("stdout: {e}; records are no longer written there");
                broken = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use super::*;

    /// A writer that blocks until released, then records what it got.
    #[derive(Clone)]
    struct Gate {
        open: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !*self.open.lock().expect("lock") {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.got.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_stdout_drops_counted_and_never_blocks_the_caller() {
        let gate = Gate { open: Arc::new(Mutex::new(false)), got: Arc::default() };
        let written = IntCounter::new("w", "w").expect("counter");
        let dropped = IntCounter::new("d", "d").expect("counter");
        let (sink, t) =
            StdoutSink::start(Box::new(gate.clone()), 4, written.clone(), dropped.clone())
                .expect("start");
        let t0 = Instant::now();
        for i in 0..100 {
            sink.offer(format!("line {i}"));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "offer blocked");
        // The writer holds one batch (what it took before the write blocked),
        // the queue 4 more; the rest is dropped.
        let lost = dropped.get();
        assert!(lost >= 50, "dropped {lost}");
        *gate.open.lock().expect("lock") = true;
        drop(sink);
        t.join().expect("join");
        let got = String::from_utf8(gate.got.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(got.lines().count() as u64, written.get());
        assert_eq!(written.get() + lost, 100);
        assert!(got.starts_with("line 0\n"), "{got}");
    }
}
