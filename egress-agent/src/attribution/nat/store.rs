//! The NAT table: conntrack entries keyed by (original tuple, netns), bounded
//! (oldest insert/refresh evicted first), with DESTROYed entries kept for a
//! retention period so a late lookup still sees what NAT did.
//!
//! Time is passed in (`now`) so the logic is tested without sleeping. Callers
//! hold the write lock while they call `Instant::now()`, which keeps the
//! destroyed queue in time order.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{FlowKey, NatEntry};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct SlotKey {
    key: FlowKey,
    ns: u16,
}

#[derive(Debug)]
struct Slot {
    reply: FlowKey,
    /// Insert/refresh sequence: orders eviction and tells stale queue items.
    seq: u64,
    destroyed_at: Option<Instant>,
    /// Known only from a dump: the entry may predate the agent's
    /// subscription and then never sends DESTROY (with the default
    /// `nf_conntrack_events=2` the kernel gives events only to entries
    /// created while a listener exists), so it must be verified. Entries
    /// known only from the kprobe are unverified the same way.
    from_dump: bool,
    /// Reply tuple the conntrack kprobe reported for this entry.
    kprobe: Option<FlowKey>,
    /// ctnetlink reported this entry (an event or a dump).
    ctnetlink: bool,
}

/// Mappings given by both sources for one entry, compared once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Comparisons {
    pub agree: u64,
    pub disagree: u64,
}

pub(crate) struct Store {
    netns: Vec<Arc<str>>,
    map: HashMap<SlotKey, Slot>,
    /// Insert/refresh order, oldest first; items whose seq no longer matches
    /// the slot are stale and skipped.
    order: VecDeque<(SlotKey, u64)>,
    /// Destroy order (time order), oldest first; stale items skipped likewise.
    destroyed: VecDeque<(SlotKey, u64, Instant)>,
    next_seq: u64,
    max_entries: usize,
    retention: Duration,
    /// Since the last `take_comparisons`.
    compared: Comparisons,
}

impl Store {
    pub(crate) fn new(netns: Vec<String>, max_entries: usize, retention: Duration) -> Self {
        Self {
            netns: netns.into_iter().map(Arc::from).collect(),
            map: HashMap::new(),
            order: VecDeque::new(),
            destroyed: VecDeque::new(),
            next_seq: 0,
            max_entries: max_entries.max(1),
            retention,
            compared: Comparisons::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The sequence the next insert/refresh gets: take it before a resync
    /// dump, then `sweep` what the dump did not refresh.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn bump(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A conntrack entry exists (NEW event, or a dump when `from_dump`):
    /// insert or refresh it, live. Returns how many entries were evicted to
    /// stay in bound.
    pub(crate) fn upsert(
        &mut self,
        ns: u16,
        original: FlowKey,
        reply: FlowKey,
        from_dump: bool,
    ) -> u64 {
        let sk = SlotKey { key: original, ns };
        let seq = self.bump();
        let prev = self.map.get(&sk);
        // A dump refreshing an entry already seen live keeps what it knew.
        let from_dump = from_dump && prev.is_none_or(|s| s.destroyed_at.is_some() || s.from_dump);
        // The kprobe's view of the same live entry, compared once.
        let kprobe = prev.filter(|s| s.destroyed_at.is_none()).and_then(|s| s.kprobe);
        if let Some(k) = kprobe
            && prev.is_some_and(|s| !s.ctnetlink)
        {
            self.compare(&original, &reply, &k);
        }
        self.map.insert(
            sk,
            Slot { reply, seq, destroyed_at: None, from_dump, kprobe, ctnetlink: true },
        );
        self.push(sk, seq)
    }

    /// The conntrack kprobe saw `original` confirmed with `reply`. A live
    /// entry ctnetlink gave keeps its reply (the two are compared); an
    /// unknown tuple (or one reused after a destroy) becomes an entry known
    /// from the kprobe only, verified like a dump-only one until ctnetlink
    /// vouches for it. Returns evictions.
    pub(crate) fn upsert_kprobe(&mut self, ns: u16, original: FlowKey, reply: FlowKey) -> u64 {
        let sk = SlotKey { key: original, ns };
        if let Some(s) = self.map.get_mut(&sk)
            && s.destroyed_at.is_none()
            && s.kprobe.is_none()
        {
            s.kprobe = Some(reply);
            if s.ctnetlink {
                let ct = s.reply;
                self.compare(&original, &ct, &reply);
            }
            return 0;
        }
        let seq = self.bump();
        self.map.insert(
            sk,
            Slot {
                reply,
                seq,
                destroyed_at: None,
                from_dump: true,
                kprobe: Some(reply),
                ctnetlink: false,
            },
        );
        self.push(sk, seq)
    }

    /// Count (and log, at debug) one comparison of the two sources' reply
    /// tuples for `original`.
    fn compare(&mut self, original: &FlowKey, ctnetlink: &FlowKey, kprobe: &FlowKey) {
        let show = |k: &FlowKey| format!("{}->{}", k.src, k.dst);
        let verdict = if ctnetlink == kprobe {
            self.compared.agree += 1;
            "agree"
        } else {
            self.compared.disagree += 1;
            "disagree"
        };
        tracing::debug!(original = %show(original), ctnetlink = %show(ctnetlink), kprobe = %show(kprobe), "nat sources {verdict}");
    }

    /// Comparisons made since the last call.
    pub(crate) fn take_comparisons(&mut self) -> Comparisons {
        std::mem::take(&mut self.compared)
    }

    fn push(&mut self, sk: SlotKey, seq: u64) -> u64 {
        self.order.push_back((sk, seq));
        self.compact();
        self.evict_over_bound()
    }

    /// A DESTROY event: mark the entry destroyed at `now` (it stays for the
    /// retention period). An entry never seen alive (its NEW was lost or came
    /// before the agent) is inserted as destroyed. Returns evictions.
    pub(crate) fn destroy(
        &mut self,
        ns: u16,
        original: FlowKey,
        reply: FlowKey,
        now: Instant,
    ) -> u64 {
        let sk = SlotKey { key: original, ns };
        let mut evicted = 0;
        if !self.map.contains_key(&sk) {
            evicted = self.upsert(ns, original, reply, false);
        }
        if let Some(slot) = self.map.get_mut(&sk)
            && slot.destroyed_at.is_none()
        {
            slot.reply = reply;
            slot.ctnetlink = true;
            slot.destroyed_at = Some(now);
            self.destroyed.push_back((sk, slot.seq, now));
        }
        self.compact();
        evicted
    }

    /// Live entries of `ns` known only from a dump (see `Slot::from_dump`).
    pub(crate) fn dump_only_live(&self, ns: u16) -> Vec<FlowKey> {
        self.map
            .iter()
            .filter(|(sk, s)| sk.ns == ns && s.from_dump && s.destroyed_at.is_none())
            .map(|(sk, _)| sk.key)
            .collect()
    }

    /// The kernel no longer has this entry (a GET said ENOENT): mark it
    /// destroyed as a DESTROY event would.
    pub(crate) fn mark_gone(&mut self, ns: u16, original: FlowKey, now: Instant) -> bool {
        let sk = SlotKey { key: original, ns };
        match self.map.get(&sk) {
            Some(s) if s.destroyed_at.is_none() => {
                let reply = s.reply;
                self.destroy(ns, original, reply, now);
                true
            }
            _ => false,
        }
    }

    /// After a resync dump of `ns`: live entries not refreshed since
    /// `before_seq` are gone from the kernel (their DESTROY was lost).
    pub(crate) fn sweep(&mut self, ns: u16, before_seq: u64, now: Instant) -> usize {
        let mut gone = Vec::new();
        for (sk, slot) in self.map.iter_mut() {
            if sk.ns == ns && slot.seq < before_seq && slot.destroyed_at.is_none() {
                slot.destroyed_at = Some(now);
                gone.push((*sk, slot.seq, now));
            }
        }
        let n = gone.len();
        self.destroyed.extend(gone);
        n
    }

    /// Drop destroyed entries older than the retention period.
    pub(crate) fn purge(&mut self, now: Instant) {
        while let Some(&(sk, seq, t)) = self.destroyed.front() {
            if now.saturating_duration_since(t) < self.retention {
                break;
            }
            self.destroyed.pop_front();
            if self.map.get(&sk).is_some_and(|s| s.seq == seq && s.destroyed_at == Some(t)) {
                self.map.remove(&sk);
            }
        }
    }

    fn evict_over_bound(&mut self) -> u64 {
        let mut evicted = 0;
        while self.map.len() > self.max_entries {
            let Some((sk, seq)) = self.order.pop_front() else { break };
            if self.map.get(&sk).is_some_and(|s| s.seq == seq) {
                self.map.remove(&sk);
                evicted += 1;
            }
        }
        evicted
    }

    /// Keep the queues proportional to the map: drop stale items when they
    /// outnumber live ones.
    fn compact(&mut self) {
        let limit = 2 * self.map.len() + 1024;
        if self.order.len() > limit {
            let map = &self.map;
            self.order.retain(|(sk, seq)| map.get(sk).is_some_and(|s| s.seq == *seq));
        }
        if self.destroyed.len() > limit {
            let map = &self.map;
            self.destroyed.retain(|(sk, seq, t)| {
                map.get(sk).is_some_and(|s| s.seq == *seq && s.destroyed_at == Some(*t))
            });
        }
    }

    /// What NAT did to `key`, across the watched namespaces. Destroyed
    /// entries past retention are invisible even before `purge` runs. When
    /// several namespaces know the tuple, prefer one that translated it, then
    /// a live one, then the most recent.
    pub(crate) fn lookup(&self, key: &FlowKey, now: Instant) -> Option<NatEntry> {
        let mut best: Option<(bool, bool, u64, u16, &Slot)> = None;
        for ns in 0..self.netns.len() {
            let ns = u16::try_from(ns).unwrap_or(u16::MAX);
            let Some(slot) = self.map.get(&SlotKey { key: *key, ns }) else { continue };
            if slot.destroyed_at.is_some_and(|t| now.saturating_duration_since(t) >= self.retention)
            {
                continue;
            }
            let translated = slot.reply.src != key.dst || slot.reply.dst != key.src;
            let rank = (translated, slot.destroyed_at.is_none(), slot.seq);
            if best.as_ref().is_none_or(|b| (b.0, b.1, b.2) < rank) {
                best = Some((rank.0, rank.1, rank.2, ns, slot));
            }
        }
        best.map(|(_, _, _, ns, slot)| NatEntry {
            original: *key,
            reply: slot.reply,
            netns: self.netns.get(usize::from(ns)).map(|s| s.to_string()).unwrap_or_default(),
            destroyed: slot.destroyed_at.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey { src: sa(src), dst: sa(dst) }
    }

    /// Client 10.0.0.2:40000 → ClusterIP 10.96.0.10:80, DNAT to the backend
    /// 10.1.0.5:8080 and MASQUERADE to 10.2.0.1:40000.
    fn natted() -> (FlowKey, FlowKey) {
        (key("10.0.0.2:40000", "10.96.0.10:80"), key("10.1.0.5:8080", "10.2.0.1:40000"))
    }

    #[test]
    fn dnat_and_snat_from_the_reply_tuple() {
        let (orig, reply) = natted();
        let mut s = Store::new(vec!["router".into()], 10, Duration::from_secs(30));
        s.upsert(0, orig, reply, false);
        let e = s.lookup(&orig, Instant::now()).expect("entry");
        assert_eq!(e.dnat_to(), Some(sa("10.1.0.5:8080")));
        assert_eq!(e.snat_to(), Some(sa("10.2.0.1:40000")));
        assert_eq!(e.netns, "router");
        assert!(!e.destroyed);

        // No NAT: the reply is the original reversed.
        let plain = key("10.0.0.2:40001", "10.1.0.5:8080");
        s.upsert(0, plain, key("10.1.0.5:8080", "10.0.0.2:40001"), false);
        let e = s.lookup(&plain, Instant::now()).expect("entry");
        assert_eq!((e.dnat_to(), e.snat_to()), (None, None));

        // SNAT only (port rewritten too).
        let snat = key("10.0.0.2:40002", "192.0.2.1:443");
        s.upsert(0, snat, key("192.0.2.1:443", "10.2.0.1:1024"), false);
        let e = s.lookup(&snat, Instant::now()).expect("entry");
        assert_eq!((e.dnat_to(), e.snat_to()), (None, Some(sa("10.2.0.1:1024"))));
        assert_eq!(s.lookup(&key("10.0.0.9:1", "10.0.0.8:2"), Instant::now()), None);
    }

    #[test]
    fn evicts_oldest_insert_and_counts() {
        let mut s = Store::new(vec!["self".into()], 3, Duration::from_secs(30));
        let k = |p: u16| key(&format!("10.0.0.2:{p}"), "10.96.0.10:80");
        let r = |p: u16| key("10.1.0.5:8080", &format!("10.2.0.1:{p}"));
        assert_eq!(
            s.upsert(0, k(1), r(1), false)
                + s.upsert(0, k(2), r(2), false)
                + s.upsert(0, k(3), r(3), false),
            0
        );
        // Refresh 1: now 2 is the oldest.
        assert_eq!(s.upsert(0, k(1), r(1), false), 0);
        assert_eq!(s.upsert(0, k(4), r(4), false), 1);
        assert_eq!(s.len(), 3);
        let now = Instant::now();
        assert!(s.lookup(&k(2), now).is_none(), "oldest evicted");
        for p in [1, 3, 4] {
            assert!(s.lookup(&k(p), now).is_some(), "{p} kept");
        }
        // Many refreshes of one key keep the order queue bounded.
        for _ in 0..10_000 {
            s.upsert(0, k(4), r(4), false);
        }
        assert!(s.order.len() <= 2 * s.len() + 1024 + 1);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn destroyed_entries_are_kept_for_the_retention_then_dropped() {
        let (orig, reply) = natted();
        let t0 = Instant::now();
        let mut s = Store::new(vec!["router".into()], 10, Duration::from_secs(30));
        s.upsert(0, orig, reply, false);
        s.destroy(0, orig, reply, t0);
        let e = s.lookup(&orig, t0 + Duration::from_secs(29)).expect("kept");
        assert!(e.destroyed);
        assert_eq!(e.dnat_to(), Some(sa("10.1.0.5:8080")));
        // Invisible once expired, even before purge.
        assert!(s.lookup(&orig, t0 + Duration::from_secs(30)).is_none());
        s.purge(t0 + Duration::from_secs(29));
        assert_eq!(s.len(), 1);
        s.purge(t0 + Duration::from_secs(31));
        assert_eq!(s.len(), 0);
        assert!(s.destroyed.is_empty());
    }

    #[test]
    fn a_revived_tuple_is_not_purged_by_its_old_destroy() {
        let (orig, reply) = natted();
        let t0 = Instant::now();
        let mut s = Store::new(vec!["router".into()], 10, Duration::from_secs(30));
        s.upsert(0, orig, reply, false);
        s.destroy(0, orig, reply, t0);
        s.destroy(0, orig, reply, t0 + Duration::from_secs(1)); // duplicate: ignored
        assert_eq!(s.destroyed.len(), 1);
        s.upsert(0, orig, reply, false); // same tuple reused
        s.purge(t0 + Duration::from_secs(60));
        let e = s.lookup(&orig, t0 + Duration::from_secs(60)).expect("live again");
        assert!(!e.destroyed);
    }

    #[test]
    fn destroy_without_new_is_remembered() {
        let (orig, reply) = natted();
        let t0 = Instant::now();
        let mut s = Store::new(vec!["router".into()], 10, Duration::from_secs(30));
        s.destroy(0, orig, reply, t0);
        let e = s.lookup(&orig, t0).expect("entry");
        assert!(e.destroyed);
        assert_eq!(e.snat_to(), Some(sa("10.2.0.1:40000")));
    }

    #[test]
    fn sweep_marks_what_a_resync_dump_did_not_refresh() {
        let t0 = Instant::now();
        let mut s = Store::new(vec!["a".into(), "b".into()], 10, Duration::from_secs(30));
        let (k1, k2, k3) = (
            key("10.0.0.2:1", "10.96.0.1:80"),
            key("10.0.0.2:2", "10.96.0.1:80"),
            key("10.0.0.2:3", "10.96.0.1:80"),
        );
        let r = key("10.1.0.5:80", "10.2.0.1:9");
        s.upsert(0, k1, r, false);
        s.upsert(0, k2, r, false);
        s.upsert(1, k3, r, false);
        let before = s.next_seq();
        s.upsert(0, k2, r, false); // in the dump
        assert_eq!(s.sweep(0, before, t0), 1);
        assert!(s.lookup(&k1, t0).expect("k1").destroyed);
        assert!(!s.lookup(&k2, t0).expect("k2").destroyed);
        assert!(!s.lookup(&k3, t0).expect("other netns untouched").destroyed);
        s.purge(t0 + Duration::from_secs(30));
        assert!(s.lookup(&k1, t0).is_none());
    }

    #[test]
    fn dump_only_entries_are_listed_for_verification_until_an_event_vouches() {
        let t0 = Instant::now();
        let mut s = Store::new(vec!["a".into(), "b".into()], 10, Duration::from_secs(30));
        let (k1, k2, k3) = (
            key("10.0.0.2:1", "10.96.0.1:80"),
            key("10.0.0.2:2", "10.96.0.1:80"),
            key("10.0.0.2:3", "10.96.0.1:80"),
        );
        let r = key("10.1.0.5:80", "10.2.0.1:9");
        s.upsert(0, k1, r, true);
        s.upsert(0, k2, r, true);
        s.upsert(1, k3, r, true);
        s.upsert(0, k2, r, false); // its NEW event arrived after the dump
        s.upsert(0, k2, r, true); // a later dump does not make it dump-only again
        assert_eq!(s.dump_only_live(0), vec![k1]);
        assert!(s.mark_gone(0, k1, t0));
        assert!(!s.mark_gone(0, k1, t0), "already gone");
        let e = s.lookup(&k1, t0).expect("kept");
        assert!(e.destroyed);
        assert_eq!(e.dnat_to(), Some(sa("10.1.0.5:80")));
        assert!(s.dump_only_live(0).is_empty());
        assert_eq!(s.dump_only_live(1), vec![k3]);
    }

    #[test]
    fn kprobe_and_ctnetlink_are_compared_once_in_either_order() {
        let (orig, reply) = natted();
        let t0 = Instant::now();
        let mut s = Store::new(vec!["self".into()], 10, Duration::from_secs(30));
        // ctnetlink first, then the kprobe with the same reply: agree.
        s.upsert(0, orig, reply, false);
        s.upsert_kprobe(0, orig, reply);
        assert_eq!(s.take_comparisons(), Comparisons { agree: 1, disagree: 0 });
        s.upsert(0, orig, reply, true); // a later dump refresh: no second comparison
        assert_eq!(s.take_comparisons(), Comparisons::default());

        // The kprobe first: the entry is usable at once, unverified.
        let k2 = key("10.0.0.2:40001", "10.96.0.10:80");
        let other = key("10.1.0.6:8080", "10.2.0.1:40001");
        s.upsert_kprobe(0, k2, other);
        assert_eq!(
            s.lookup(&k2, t0).expect("from the kprobe").dnat_to(),
            Some(sa("10.1.0.6:8080"))
        );
        assert_eq!(s.dump_only_live(0), vec![k2], "verified until ctnetlink vouches");
        // ctnetlink then says another backend: disagree, ctnetlink's reply kept.
        s.upsert(0, k2, reply, false);
        assert_eq!(s.take_comparisons(), Comparisons { agree: 0, disagree: 1 });
        assert_eq!(s.lookup(&k2, t0).expect("entry").reply, reply);
        assert!(s.dump_only_live(0).is_empty());

        // After a destroy, the same tuple confirmed again is a new entry.
        s.destroy(0, orig, reply, t0);
        s.upsert_kprobe(0, orig, reply);
        assert_eq!(s.take_comparisons(), Comparisons::default());
        assert!(!s.lookup(&orig, t0).expect("live again").destroyed);
        s.upsert(0, orig, reply, false);
        assert_eq!(s.take_comparisons(), Comparisons { agree: 1, disagree: 0 });
    }

    #[test]
    fn several_namespaces_prefer_the_one_that_translated() {
        let (orig, reply) = natted();
        let mut s = Store::new(vec!["pod".into(), "node".into()], 10, Duration::from_secs(30));
        s.upsert(1, orig, reply, false);
        // The pod's own netns saw the same tuple untranslated, later.
        s.upsert(0, orig, key("10.96.0.10:80", "10.0.0.2:40000"), false);
        let e = s.lookup(&orig, Instant::now()).expect("entry");
        assert_eq!(e.netns, "node");
        assert_eq!(e.dnat_to(), Some(sa("10.1.0.5:8080")));
    }
}
