//! One thread per watched network namespace: enter it, open the ctnetlink
//! sockets there (they stay bound to it), subscribe to NEW/DESTROY, dump the
//! existing table, then apply events until the table handle is dropped.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    sync::{Arc, atomic::Ordering, mpsc::SyncSender},
    time::{Duration, Instant},
};

use super::{
    Shared,
    counters::NatMetrics,
    ctnetlink::{
        CpuStats, CtDecodeError, CtKind, Decoded, get_request, stats_dump_request,
        table_dump_request,
    },
    socket::CtSocket,
};

/// How often per-CPU insert_failed/drop counters are read.
pub(crate) const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How long one event-socket wait blocks (bounds shutdown latency).
const POLL: Duration = Duration::from_millis(250);
/// Messages handled per wake before periodic work gets a turn.
const DRAIN_BATCH: usize = 512;
/// A dump that takes longer than this is abandoned.
const DUMP_TIMEOUT: Duration = Duration::from_secs(20);
/// Receive timeout of the request socket.
const QUERY_RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Resync dumps after overruns are at least this far apart.
const RESYNC_MIN_GAP: Duration = Duration::from_secs(10);
/// How often entries known only from a dump are checked: they may predate
/// the subscription, and such entries never send DESTROY.
const VERIFY_INTERVAL: Duration = Duration::from_secs(5);
/// Up to this many are checked one by one (GET by tuple); above it, a full
/// dump + sweep every `FULL_VERIFY_INTERVAL` instead.
const VERIFY_MAX_GETS: usize = 256;
const FULL_VERIFY_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) struct Worker {
    pub idx: u16,
    pub label: String,
    /// The namespace to enter; `None` = stay in the agent's own.
    pub netns: Option<File>,
    pub shared: Arc<Shared>,
    pub metrics: NatMetrics,
}

impl Worker {
    /// Runs on its own thread; reports setup (sockets + initial dump) once
    /// on `ready`, then loops until `shared.stop`.
    pub(crate) fn run(self, ready: SyncSender<Result<(), SetupError>>) {
        let mut state = match self.setup() {
            Ok(s) => s,
            Err(e) => {
                // `start` gave up waiting: nobody to tell.
                let _ = ready.send(Err(e));
                return;
            }
        };
        // `start` gave up waiting: the worker still runs until stopped.
        let _ = ready.send(Ok(()));
        drop(ready);
        tracing::info!(netns = %self.label, "conntrack: following NEW/DESTROY events");
        self.event_loop(&mut state);
        tracing::debug!(netns = %self.label, "conntrack: worker stopped");
    }

    fn setup(&self) -> Result<State, SetupError> {
        if let Some(f) = &self.netns {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(SetupError::new(
                    format!("entering network namespace {}", self.label),
                    io::Error::last_os_error(),
                ));
            }
        }
        // Subscribe first, dump second: nothing created in between is missed.
        let events = CtSocket::events()
            .map_err(|e| SetupError::new(format!("ctnetlink event socket in {}", self.label), e))?;
        let query = CtSocket::query(QUERY_RECV_TIMEOUT)
            .map_err(|e| SetupError::new(format!("ctnetlink socket in {}", self.label), e))?;
        let now = Instant::now();
        let mut st = State {
            events,
            query,
            seq: 1,
            cpu_last: Vec::new(),
            last_stats: now,
            last_purge: now,
            last_verify: now,
            resync_at: None,
            last_resync: None,
        };
        let n = self.dump_table(&mut st).map_err(|e| {
            SetupError::new(format!("dumping the conntrack table of {}", self.label), e)
        })?;
        tracing::info!(netns = %self.label, entries = n, "conntrack: initial dump");
        // Exported at 0 from the start: an alert's increase() cannot see the
        // first loss of a series that appears with it.
        self.metrics.lost.with_label_values(&[&self.label]);
        if let Err(e) = self.poll_stats(&mut st) {
            tracing::warn!(netns = %self.label, error = %e, "conntrack: per-CPU stats unavailable");
        }
        Ok(st)
    }

    fn event_loop(&self, st: &mut State) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            match st.events.wait_readable(POLL) {
                Ok(true) => self.drain(st),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(netns = %self.label, error = %e, "conntrack: poll failed");
                    std::thread::sleep(POLL);
                }
            }
            let now = Instant::now();
            if now.duration_since(st.last_purge) >= Duration::from_secs(1) {
                st.last_purge = now;
                let mut store = self.shared.write();
                store.purge(Instant::now());
                self.metrics.entries.set(store.len() as i64);
            }
            if now.duration_since(st.last_stats) >= STATS_INTERVAL {
                st.last_stats = now;
                if let Err(e) = self.poll_stats(st) {
                    tracing::debug!(netns = %self.label, error = %e, "conntrack: stats poll failed");
                }
            }
            if now.duration_since(st.last_verify) >= VERIFY_INTERVAL {
                st.last_verify = now;
                self.verify_dump_only(st);
            }
            if st.resync_at.is_some_and(|t| now >= t) {
                st.resync_at = None;
                st.last_resync = Some(now);
                let before = self.shared.write().next_seq();
                match self.dump_table(st) {
                    Ok(n) => {
                        let gone = self.shared.write().sweep(self.idx, before, Instant::now());
                        tracing::info!(netns = %self.label, entries = n, gone, "conntrack: resynced after lost events");
                    }
                    Err(e) => {
                        tracing::warn!(netns = %self.label, error = %e, "conntrack: resync dump failed")
                    }
                }
            }
        }
    }

    /// Read what is queued on the event socket, bounded per wake.
    fn drain(&self, st: &mut State) {
        for _ in 0..DRAIN_BATCH {
            let decoded = match st.events.recv(true) {
                Ok(data) => super::ctnetlink::decode_all(data),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped events for this socket: count, and
                    // resync from a fresh dump (rate-limited).
                    self.metrics.lost.with_label_values(&[&self.label]).inc();
                    let soon = Instant::now() + Duration::from_secs(1);
                    let at = st.last_resync.map_or(soon, |t| soon.max(t + RESYNC_MIN_GAP));
                    st.resync_at.get_or_insert(at);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.metrics.decode_errors.inc();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(netns = %self.label, error = %e, "conntrack: receive failed");
                    return;
                }
            };
            self.apply(decoded, false);
        }
    }

    /// Apply decoded messages under one write lock. Returns TCP entries applied.
    fn apply(&self, decoded: Vec<Result<Decoded, CtDecodeError>>, from_dump: bool) -> usize {
        let mut flows = 0;
        let mut evicted = 0;
        let mut counts = [0u64; 3]; // new, destroy, dump
        let mut errors = 0u64;
        let mut mappings = 0u64;
        let compared;
        let watching = self.shared.forwarded().is_watching();
        let mut ended = Vec::new();
        {
            let mut store = self.shared.write();
            for d in decoded {
                let kind = match &d {
                    Ok(Decoded::Flow { kind, .. } | Decoded::OtherProto { kind, .. }) => *kind,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(netns = %self.label, error = %e, "conntrack: undecodable message");
                        errors += 1;
                        continue;
                    }
                };
                counts[match (from_dump, kind) {
                    (true, _) => 2,
                    (false, CtKind::New) => 0,
                    (false, CtKind::Destroy) => 1,
                }] += 1;
                if let Ok(Decoded::Flow { original, reply, status, tcp_state, .. }) = d {
                    flows += 1;
                    evicted += match kind {
                        CtKind::New => {
                            mappings += 1;
                            store.upsert(self.idx, original, reply, from_dump)
                        }
                        CtKind::Destroy => {
                            if watching {
                                ended.push((original, reply, status, tcp_state));
                            }
                            store.destroy(self.idx, original, reply, Instant::now())
                        }
                    };
                }
            }
            self.metrics.entries.set(store.len() as i64);
            compared = store.take_comparisons();
        }
        self.metrics.mappings.with_label_values(&["ctnetlink"]).inc_by(mappings);
        self.metrics.compared(compared);
        for (i, ty) in ["new", "destroy", "dump"].into_iter().enumerate() {
            if counts[i] > 0 {
                self.metrics.events.with_label_values(&[&self.label, ty]).inc_by(counts[i]);
            }
        }
        self.metrics.decode_errors.inc_by(errors);
        self.metrics.evicted.inc_by(evicted);
        if !ended.is_empty() {
            let mut q = self.shared.forwarded();
            let dropped: u64 =
                ended.into_iter().map(|(o, r, s, t)| q.on_destroy(o, r, (s, t), &self.label)).sum();
            self.metrics.forwarded_dropped.inc_by(dropped);
        }
        flows
    }

    /// Retire entries known only from a dump once the kernel no longer has
    /// them (their DESTROY may never come).
    fn verify_dump_only(&self, st: &mut State) {
        let keys = self.shared.read().dump_only_live(self.idx);
        if keys.is_empty() {
            return;
        }
        if keys.len() > VERIFY_MAX_GETS {
            if st.resync_at.is_none()
                && st.last_resync.is_none_or(|t| t.elapsed() >= FULL_VERIFY_INTERVAL)
            {
                st.resync_at = Some(Instant::now());
            }
            return;
        }
        for key in keys {
            let seq = st.next_seq();
            match st.query.exists(&get_request(seq, &key), seq, Instant::now() + QUERY_RECV_TIMEOUT)
            {
                Ok(true) => {}
                Ok(false) => {
                    self.shared.write().mark_gone(self.idx, key, Instant::now());
                }
                Err(e) => {
                    tracing::debug!(netns = %self.label, error = %e, "conntrack: GET failed");
                    return;
                }
            }
        }
    }

    fn dump_table(&self, st: &mut State) -> io::Result<usize> {
        let seq = st.next_seq();
        let mut batch = Vec::new();
        let mut total = 0;
        let deadline = Instant::now() + DUMP_TIMEOUT;
        // Apply in batches so a huge dump does not hold everything in memory.
        let mut flush = |batch: &mut Vec<Result<Decoded, CtDecodeError>>| {
            total += self.apply(std::mem::take(batch), true)
        };
        st.query.dump(&table_dump_request(seq), seq, deadline, |d| {
            batch.push(d);
            if batch.len() >= 1024 {
                flush(&mut batch);
            }
        })?;
        flush(&mut batch);
        Ok(total)
    }

    /// Per-CPU insert_failed / drop / early_drop: cumulative kernel counts,
    /// exported as counters by adding each CPU's (wrapping u32) delta.
    fn poll_stats(&self, st: &mut State) -> io::Result<()> {
        let seq = st.next_seq();
        let mut got: Vec<CpuStats> = Vec::new();
        let mut errors = 0;
        st.query.dump(
            &stats_dump_request(seq),
            seq,
            Instant::now() + DUMP_TIMEOUT,
            |d| match d {
                Ok(Decoded::Stats { stats, .. }) => got.push(stats),
                Ok(_) => {}
                Err(_) => errors += 1,
            },
        )?;
        self.metrics.decode_errors.inc_by(errors);
        let (mut insert_failed, mut drop, mut early_drop) = (0u64, 0u64, 0u64);
        for s in got {
            let i = usize::from(s.cpu);
            if st.cpu_last.len() <= i {
                st.cpu_last.resize(i + 1, CpuStats::default());
            }
            let last = st.cpu_last[i];
            insert_failed += u64::from(s.insert_failed.wrapping_sub(last.insert_failed));
            drop += u64::from(s.drop.wrapping_sub(last.drop));
            early_drop += u64::from(s.early_drop.wrapping_sub(last.early_drop));
            st.cpu_last[i] = s;
        }
        let l = [self.label.as_str()];
        self.metrics.insert_failed.with_label_values(&l).inc_by(insert_failed);
        self.metrics.drop.with_label_values(&l).inc_by(drop);
        self.metrics.early_drop.with_label_values(&l).inc_by(early_drop);
        Ok(())
    }
}

struct State {
    events: CtSocket,
    query: CtSocket,
    seq: u32,
    cpu_last: Vec<CpuStats>,
    last_stats: Instant,
    last_purge: Instant,
    last_verify: Instant,
    resync_at: Option<Instant>,
    last_resync: Option<Instant>,
}

impl State {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }
}

/// A worker could not follow its namespace: what it was doing, the error,
/// and what the operator should check.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error}{}", hint(error))]
pub struct SetupError {
    what: String,
    error: io::Error,
}

impl SetupError {
    fn new(what: String, error: io::Error) -> Self {
        Self { what, error }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            " (ctnetlink needs CAP_NET_ADMIN in that network namespace)"
        }
        Some(libc::EPROTONOSUPPORT | libc::ENOENT | libc::EOPNOTSUPP) => {
            " (ctnetlink unavailable: load nf_conntrack_netlink with `modprobe nf_conntrack_netlink`)"
        }
        _ => "",
    }
}
