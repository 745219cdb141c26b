//! What one record costs the agent's memory, measured with a counting
//! allocator (this test binary's global allocator): records are enriched by
//! the real enrich stage from a pod in the Kubernetes index and kept like the
//! API history keeps them (`Arc<Record>`, 10k of them).
//!
//! A pod's labels are its tenant's choice (up to the API server's object
//! size limit); they must be shared by the records of that pod, not copied
//! into each: a pod with 200 labels of ~120 bytes each costs its records no
//! more than a pod without labels.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::BTreeMap,
    sync::Arc,
};

use egress_agent::{
    attribution::{
        kube::{KubeIndex, PodMeta, Workload},
        nat::NatTable,
    },
    pipeline::enrich::{EnrichOptions, Enricher},
    records::{FlowRecord, Record},
};

struct Counting;

thread_local! {
    /// Bytes this thread holds from the allocator (allocated − freed).
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    let _ = NET.try_with(|c| c.set(c.get() + n));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// thread-local counter is const-initialised and has no destructor, so
// touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(l.size() as i64);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as i64));
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        add(new as i64 - l.size() as i64);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn held() -> i64 {
    NET.with(Cell::get)
}

const UID: &str = "5d1c0e2a-0000-4b7e-9a3f-00000000beef";
const HISTORY: usize = 10_000;

fn pod(labels: usize) -> PodMeta {
    let labels: BTreeMap<String, String> = (0..labels)
        .map(|i| (format!("tenant.example.com/label-{i:04}-{}", "k".repeat(30)), "v".repeat(63)))
        .collect();
    PodMeta {
        uid: UID.into(),
        namespace: "tenant-a".into(),
        name: "web-7d9f6c5b4-x2x9z".into(),
        labels: labels.into(),
        containers: vec![],
        workload: Some(Workload { kind: "Deployment".into(), name: "web".into() }),
        node: None,
        ip: vec![],
        host_network: false,
        phase: Some("Running".into()),
        previous_containers: vec![],
        named_ports: vec![],
    }
}

/// Bytes per record kept in a history of [`HISTORY`] flow records of a pod
/// with `labels` labels.
fn per_record(labels: usize) -> (i64, usize) {
    let dir = std::env::temp_dir().join(format!("eo-mem-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let opts = EnrichOptions { cgroup_root: Some(dir), private_ranges: vec![], config: None };
    let index = KubeIndex::from_pods([pod(labels)]);
    let mut enricher = Enricher::new(&opts, index, NatTable::disabled());
    let mut history: Vec<Arc<Record>> = Vec::with_capacity(HISTORY);
    let before = held();
    for i in 0..HISTORY {
        let mut r = FlowRecord {
            pid: i as u32,
            pod_uid: Some(UID.into()),
            dst: Some("203.0.113.7:443".parse().expect("addr")),
            ..FlowRecord::default()
        };
        enricher.enrich(&mut r);
        assert_eq!(r.namespace.as_deref(), Some("tenant-a"), "enriched from the index");
        assert_eq!(r.pod_labels.as_ref().map(|l| l.len()), Some(labels));
        history.push(Arc::new(Record::Flow(r)));
    }
    let bytes = held() - before;
    let label_bytes: usize = pod(labels).labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    drop(history);
    (bytes / HISTORY as i64, label_bytes)
}

#[test]
fn labels_are_shared_not_copied_per_record() {
    let (plain, _) = per_record(0);
    let (labelled, label_bytes) = per_record(200);
    eprintln!(
        "bytes per record in a {HISTORY}-record history: pod without labels {plain}, \
         pod with 200 labels ({label_bytes} bytes of label text) {labelled}"
    );
    assert!(
        labelled - plain <= 16,
        "a pod's labels ({label_bytes} bytes) inflate each of its records: {plain} → {labelled} bytes"
    );
    assert!(plain < 2048, "a record costs {plain} bytes");
}
