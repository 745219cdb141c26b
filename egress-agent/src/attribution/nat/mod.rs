//! Conntrack/NAT view: what NAT did to a TCP flow.
//!
//! One thread per configured network namespace enters it (`setns` moves only
//! the calling thread) and opens `NETLINK_NETFILTER` sockets there, which stay
//! bound to that namespace. It subscribes to `NFNLGRP_CONNTRACK_NEW` (1) and
//! `_DESTROY` (3) — not UPDATE (2), which shares NEW's message type — then
//! dumps the existing table (`IPCTNL_MSG_CT_GET` + `NLM_F_DUMP`) so flows
//! opened before the agent are known, and applies events from then on.
//! Messages are decoded with `netlink-packet-netfilter`.
//!
//! Entries are keyed by the original tuple as the client sent it; the reply
//! tuple says who answered (DNAT) and where the answer went (SNAT/MASQUERADE).
//! DESTROYed entries stay for [`NatOptions::destroyed_retention`] so a lookup
//! that comes after the flow ended still sees the translation.
//!
//! Entries known only from a dump may predate the subscription; with the
//! kernel default `net.netfilter.nf_conntrack_events=2` such entries never
//! send DESTROY. They are checked every 5 s with a GET by tuple (ENOENT =
//! gone), or by a full dump + sweep every 30 s while more than 256 remain.
//!
//! Losses are counted, not hidden: a socket overrun (ENOBUFS) increments
//! `egress_conntrack_lost_total{netns}` and schedules a resync dump that also
//! retires entries whose DESTROY was lost. Per-CPU `insert_failed` / `drop` /
//! `early_drop` (ctnetlink `IPCTNL_MSG_CT_GET_STATS_CPU`) are exported every
//! 10 s: the node-side face of NAT exhaustion.
//!
//! Where kprobes exist, the optional `conntrack_confirm` kprobe reports the
//! same entries from inside the kernel ([`NatTable::observe_kprobe`], fed by
//! the pipeline): an entry it reports first is usable at once and verified
//! like a dump-only one; an entry both report is compared once
//! (`egress_nat_source_comparisons_total{result}`), ctnetlink's reply kept.
//!
//! Conntrack confirms an entry (and emits NEW) when the first SYN leaves the
//! namespace, so the NEW usually precedes the agent's connect record, but the
//! two arrive through different sockets: a lookup right after a connect may
//! need to be retried for a short while.
mod counters;
mod ctnetlink;
mod forwarded;
mod socket;
mod store;
mod worker;

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::AtomicBool, atomic::Ordering,
    },
    time::{Duration, Instant},
};

pub use self::{
    forwarded::{Forwarded, OriginAnswer},
    worker::SetupError,
};

/// Decode one ctnetlink datagram as the conntrack worker does: (messages
/// decoded, messages refused). For the fuzz target (`egress-agent/fuzz`) and
/// tests; never panics, whatever the bytes.
pub fn decode_datagram(buf: &[u8]) -> (usize, usize) {
    let all = ctnetlink::decode_all(buf);
    let bad = all.iter().filter(|r| r.is_err()).count();
    (all.len() - bad, bad)
}
use self::{counters::NatMetrics, forwarded::ForwardedQueue, store::Store, worker::Worker};
use crate::sinks::MetricError;

/// Label (and [`NatEntry::netns`]) of the agent's own network namespace.
pub const OWN_NETNS: &str = "self";

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("conntrack: max_entries must be at least 1")]
    ZeroBound,
    #[error("conntrack: opening network namespace {}", path.display())]
    OpenNetns { path: PathBuf, source: std::io::Error },
    #[error("conntrack: too many network namespaces ({0})")]
    TooMany(usize),
    #[error("conntrack: inode of network namespace {label}")]
    NetnsInode { label: String, source: std::io::Error },
    #[error("conntrack: spawning a worker thread")]
    Spawn(#[source] std::io::Error),
    #[error("conntrack")]
    Setup(#[source] SetupError),
    #[error(
        "conntrack: {label} not ready within {START_TIMEOUT:?} (subscription or initial dump stalled)"
    )]
    NotReady { label: String },
    #[error(transparent)]
    Metrics(#[from] MetricError),
}

/// What to follow and how much to keep.
#[derive(Clone, Debug)]
pub struct NatOptions {
    /// Network namespace paths (e.g. `/run/netns/node`); empty = the agent's own.
    pub netns: Vec<PathBuf>,
    /// Bound on entries held; the oldest insert/refresh is evicted (and
    /// counted in `egress_conntrack_evicted_total`).
    pub max_entries: usize,
    /// How long DESTROYed entries stay visible to late lookups.
    pub destroyed_retention: Duration,
    /// Egress IPs of the routed hops this machine may be the gateway of:
    /// ended entries SNATed to one are queued for the gateway vantage.
    pub snat_watch: Vec<IpAddr>,
}

impl Default for NatOptions {
    fn default() -> Self {
        Self {
            netns: Vec::new(),
            max_entries: 65_536,
            destroyed_retention: Duration::from_secs(30),
            snat_watch: Vec::new(),
        }
    }
}

/// A TCP flow in its original direction, as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// One conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatEntry {
    pub original: FlowKey,
    /// Reply tuple as conntrack reports it: (src = who answers, dst = where the answer goes).
    pub reply: FlowKey,
    /// The namespace path it was seen in, or [`OWN_NETNS`].
    pub netns: String,
    /// A DESTROY was seen (kept for the retention period).
    pub destroyed: bool,
}

impl NatEntry {
    /// Where DNAT sent the flow (e.g. the backend behind a ClusterIP).
    pub fn dnat_to(&self) -> Option<SocketAddr> {
        (self.reply.src != self.original.dst).then_some(self.reply.src)
    }

    /// The address the flow was SNAT'ed / masqueraded to.
    pub fn snat_to(&self) -> Option<SocketAddr> {
        (self.reply.dst != self.original.src).then_some(self.reply.dst)
    }
}

pub(crate) struct Shared {
    store: RwLock<Store>,
    /// Ended forwarded flows SNATed to a watched egress IP.
    forwarded: Mutex<ForwardedQueue>,
    stop: AtomicBool,
    /// Network namespace inode of each watched namespace, by index.
    netns_inodes: Vec<u64>,
    /// None for the disabled table.
    metrics: Option<NatMetrics>,
}

impl Shared {
    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn forwarded(&self) -> MutexGuard<'_, ForwardedQueue> {
        self.forwarded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the workers when the last [`NatTable`] clone is dropped (they
/// notice within ~250 ms and close their sockets).
struct Handle {
    shared: Arc<Shared>,
    enabled: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The conntrack view. Cheap to clone; lookups take a shared read lock.
#[derive(Clone)]
pub struct NatTable {
    inner: Arc<Handle>,
}

/// How long `start` waits for every namespace's sockets and initial dump.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl NatTable {
    /// Follow conntrack in `opts.netns` (or the agent's own namespace).
    /// Returns once every namespace is subscribed and dumped; fails with a
    /// clear message when a namespace path cannot be opened or entered, or
    /// ctnetlink is unavailable there (no `nf_conntrack_netlink`, no
    /// CAP_NET_ADMIN). Metrics are registered on `registry`.
    pub fn start(opts: NatOptions, registry: &prometheus::Registry) -> Result<NatTable, NatError> {
        if opts.max_entries == 0 {
            return Err(NatError::ZeroBound);
        }
        let mut targets = Vec::new();
        if opts.netns.is_empty() {
            targets.push((OWN_NETNS.to_string(), None));
        }
        for path in &opts.netns {
            let file = File::open(path)
                .map_err(|source| NatError::OpenNetns { path: path.clone(), source })?;
            targets.push((path.display().to_string(), Some(file)));
        }
        if targets.len() > usize::from(u16::MAX) {
            return Err(NatError::TooMany(targets.len()));
        }
        let labels = targets.iter().map(|(l, _)| l.clone()).collect();
        let netns_inodes = targets
            .iter()
            .map(|(label, f)| {
                match f {
                    Some(f) => f.metadata().map(|m| m.ino()),
                    None => std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()),
                }
                .map_err(|source| NatError::NetnsInode { label: label.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        let metrics = NatMetrics::register(registry)?;
        let shared = Arc::new(Shared {
            store: RwLock::new(Store::new(labels, opts.max_entries, opts.destroyed_retention)),
            forwarded: Mutex::new(ForwardedQueue::new(opts.snat_watch)),
            stop: AtomicBool::new(false),
            netns_inodes,
            metrics: Some(metrics.clone()),
        });
        let table = NatTable { inner: Arc::new(Handle { shared: shared.clone(), enabled: true }) };
        let mut waiting = Vec::new();
        for (idx, (label, netns)) in targets.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let w = Worker {
                idx: idx as u16,
                label: label.clone(),
                netns,
                shared: shared.clone(),
                metrics: metrics.clone(),
            };
            std::thread::Builder::new()
                .name(format!("conntrack-{idx}"))
                .spawn(move || w.run(tx))
                .map_err(NatError::Spawn)?;
            waiting.push((label, rx));
        }
        // On any error `table` is dropped here, which stops the started workers.
        let deadline = Instant::now() + START_TIMEOUT;
        for (label, rx) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(NatError::Setup(e)),
                Err(_) => return Err(NatError::NotReady { label }),
            }
        }
        Ok(table)
    }

    /// A table that never knows anything (NAT view off).
    pub fn disabled() -> NatTable {
        let shared = Arc::new(Shared {
            store: RwLock::new(Store::new(Vec::new(), 1, Duration::ZERO)),
            forwarded: Mutex::new(ForwardedQueue::default()),
            stop: AtomicBool::new(true),
            netns_inodes: Vec::new(),
            metrics: None,
        });
        NatTable { inner: Arc::new(Handle { shared, enabled: false }) }
    }

    /// False for [`NatTable::disabled`]: callers need not wait for entries.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// A mapping from the conntrack kprobe, in the network namespace with
    /// inode `netns`. Counted always (when the table is enabled); used
    /// when that namespace is one conntrack is followed in.
    pub fn observe_kprobe(&self, netns: u64, original: FlowKey, reply: FlowKey) {
        let shared = &self.inner.shared;
        let Some(m) = &shared.metrics else { return };
        m.mappings.with_label_values(&["kprobe"]).inc();
        let Some(ns) = shared.netns_inodes.iter().position(|&i| i == netns) else {
            m.kprobe_unwatched.inc();
            return;
        };
        let (evicted, compared, len) = {
            let mut store = shared.write();
            let evicted =
                store.upsert_kprobe(u16::try_from(ns).unwrap_or(u16::MAX), original, reply);
            (evicted, store.take_comparisons(), store.len())
        };
        m.evicted.inc_by(evicted);
        m.entries.set(len as i64);
        m.compared(compared);
    }

    /// What NAT did to `key` (original direction, as the client sent it).
    /// `None`: conntrack has not (yet) reported this flow in any watched
    /// namespace, or it was destroyed longer than the retention ago.
    pub fn lookup(&self, key: &FlowKey) -> Option<NatEntry> {
        self.inner.shared.read().lookup(key, Instant::now())
    }

    /// Forwarded flows SNATed to a watched egress IP
    /// ([`NatOptions::snat_watch`]) whose entries ended since the last call,
    /// oldest first.
    pub fn take_forwarded(&self) -> Vec<Forwarded> {
        self.inner.shared.forwarded().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_knows_nothing() {
        let t = NatTable::disabled();
        let k = FlowKey {
            src: "10.0.0.1:1".parse().expect("addr"),
            dst: "10.0.0.2:2".parse().expect("addr"),
        };
        assert!(!t.is_enabled());
        assert_eq!(t.lookup(&k), None);
    }

    #[test]
    fn nat_table_is_send_sync() {
        fn ok<T: Send + Sync + Clone + 'static>() {}
        ok::<NatTable>();
    }

    #[test]
    fn start_fails_clearly_on_a_missing_namespace() {
        let opts = NatOptions {
            netns: vec!["/run/netns/egress-nat-test-does-not-exist".into()],
            ..NatOptions::default()
        };
        let err = NatTable::start(opts, &prometheus::Registry::new()).err().expect("must fail");
        assert!(err.to_string().contains("egress-nat-test-does-not-exist"), "{err}");
    }

    #[test]
    fn start_rejects_a_zero_bound() {
        let opts = NatOptions { max_entries: 0, ..NatOptions::default() };
        assert!(NatTable::start(opts, &prometheus::Registry::new()).is_err());
    }
}
