//! Pipeline benchmark (std only, `harness = false`): synthesized ring
//! records → decode → flow table → verdict → enrich (cgroup attribution,
//! destination class, chain leg) → metrics, through the agent's own
//! [`Processor`]. Reports events per second of CPU time of the one thread
//! that runs it (= per core), so other load on the machine does not count.
//!
//! `cargo bench -p egress-agent --bench pipeline [-- FLOWS REPS]`
//! prints one `PIPELINE …` line per repetition (parsed by `cargo xtask bench`).
use std::{os::unix::fs::MetadataExt as _, sync::Arc, time::Duration};

use egress_agent::{
    attribution::{kube::KubeIndex, nat::NatTable},
    config::{Config, DEFAULT_PRIVATE, parse_ranges},
    pipeline::{
        Output, Processor,
        dns_tracker::DnsTracker,
        enrich::{EnrichOptions, Enricher},
        flow_table::{FlowSettings, FlowTable},
    },
    records::{Clock, Record},
    sinks::Metrics,
};
use egress_common::{
    AF_INET, ConnectArgs, EVENT_FLOW, EventHeader, FLOW_FLAG_EMITTED, FLOW_FLAG_HAS_INTENDED,
    FLOW_FLAG_RESET, FlowEvent, PHASE_CLOSED, PHASE_CONNECT_FAILED, PHASE_CONNECTED, Tuple,
};

/// Flows in flight at once (interleaved), as on a busy node.
const WINDOW: u64 = 512;

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: plain #[repr(C)] records without padding bytes left uninitialised
    // (every field is written; explicit padding fields are zero).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

fn tuple(i: u64) -> Tuple {
    let mut t = Tuple {
        family: AF_INET,
        sport: 32768 + (i % 28_000) as u16,
        dport: [443, 80, 5432, 8443][(i % 4) as usize],
        ..Tuple::default()
    };
    t.saddr[..4].copy_from_slice(&[10, 4, (i >> 8) as u8, i as u8]);
    // Public, private and node-local destinations.
    let d: [u8; 4] = match i % 5 {
        0 | 1 => [93, 184, (i >> 8) as u8, i as u8],
        2 => [10, 128, 2, (i % 200) as u8],
        3 => [172, 16, 0, 9],
        _ => [127, 0, 0, 1],
    };
    t.daddr[..4].copy_from_slice(&d);
    t
}

/// One flow's events, in ring order: what the kernel sends for a flow when
/// every flow is an event (verbose): the outcome, then the close. Mix: 90 %
/// ok (one in ten of those degraded by retransmits), 5 % refused, 5 % timed
/// out after SYN retransmits.
fn flow(i: u64, cgroup_id: u64, ts: u64, out: &mut Vec<Vec<u8>>) -> (u64, u64) {
    let sk = 0xffff_8880_0000_0000 | (i << 8);
    let t = tuple(i);
    let mut intended =
        ConnectArgs { ts_ns: ts, family: AF_INET, port: t.dport, fd: 7, ..ConnectArgs::default() };
    intended.addr = t.daddr;
    let ev = |phase, at: u64, f: &dyn Fn(&mut FlowEvent)| {
        let mut e = FlowEvent {
            hdr: EventHeader { kind: EVENT_FLOW, size: size_of::<FlowEvent>() as u32, ts_ns: at },
            skaddr: sk,
            start_ns: ts,
            cgroup_id,
            pid: 1000 + (i % 64) as u32,
            tgid: 1000,
            netns: 4_026_531_840,
            phase,
            comm: *b"storm\0\0\0\0\0\0\0\0\0\0\0",
            flags: FLOW_FLAG_HAS_INTENDED,
            bytes_received: u64::MAX,
            bytes_acked: u64::MAX,
            tuple: t,
            intended,
            ..FlowEvent::default()
        };
        f(&mut e);
        bytes_of(&e).to_vec()
    };
    match i % 20 {
        0 => out.push(ev(PHASE_CONNECT_FAILED, ts + 90_000, &|e| {
            e.sk_err = libc::ECONNREFUSED;
            e.flags |= FLOW_FLAG_RESET;
        })),
        1 => out.push(ev(PHASE_CONNECT_FAILED, ts + 4_000, &|e| {
            e.sk_err = libc::ETIMEDOUT;
            e.syn_retransmits = 3;
        })),
        k => {
            let est = ts + 120_000;
            out.push(ev(PHASE_CONNECTED, est, &|e| {
                e.established_ns = est;
                e.flags |= FLOW_FLAG_EMITTED;
            }));
            out.push(ev(PHASE_CLOSED, est + 5_000_000, &|e| {
                e.established_ns = est;
                e.flags |= FLOW_FLAG_EMITTED;
                e.retransmits = u32::from(k == 2) * 4;
            }));
            return (2, 2);
        }
    }
    (1, 1)
}

/// `flows` flows, `WINDOW` of them in flight: every start is followed by the
/// rest of the flow `WINDOW` flows later, so the table holds a working set.
fn stream(flows: u64, cgroup_id: u64) -> (Vec<Vec<u8>>, u64, u64) {
    let mut per_flow: Vec<Vec<Vec<u8>>> = Vec::with_capacity(flows as usize);
    let (mut events, mut records) = (0, 0);
    for i in 0..flows {
        let mut v = Vec::new();
        let (e, r) = flow(i, cgroup_id, 1_000_000 + i * 1_000, &mut v);
        events += e;
        records += r;
        per_flow.push(v);
    }
    let mut out = Vec::with_capacity(events as usize);
    for i in 0..flows + WINDOW {
        if i < flows {
            out.push(per_flow[i as usize][0].clone());
        }
        if i >= WINDOW {
            out.extend(per_flow[(i - WINDOW) as usize].drain(1..));
        }
    }
    (out, events, records)
}

/// A kubelet-shaped cgroup directory to attribute the flows to (the agent
/// resolves ids by walking a cgroup v2 tree; any tree of directories will do).
fn fake_cgroup_root() -> (std::path::PathBuf, u64) {
    let root = std::env::temp_dir().join(format!("egress-bench-cgroups-{}", std::process::id()));
    let leaf = root.join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-5d41402abc4b2a76b9719d911017c592ae1e7f5c8b0fa2a1f2d3e4b5c6d7e8f9.scope");
    std::fs::create_dir_all(&leaf).expect("temp cgroup tree");
    let ino = std::fs::metadata(&leaf).expect("leaf").ino();
    (root, ino)
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are FLOWS and REPS.
    let nums: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let flows = nums.first().copied().unwrap_or(200_000);
    let reps = nums.get(1).copied().unwrap_or(5);
    let (root, cgroup_id) = fake_cgroup_root();
    let (items, events, records) = stream(flows, cgroup_id);
    // The chain of the deployed configuration: every record gets a hop/leg.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/base/config.yaml");
    let config = Arc::new(Config::load(std::path::Path::new(config)).expect("deploy config"));
    for rep in 0..reps {
        let metrics = Arc::new(Metrics::new(None).expect("metrics"));
        let table = FlowTable::new(
            FlowSettings {
                degraded_retransmits: 1,
                max_flows: 131_072,
                answer_wait_ns: 1_000_000_000,
            },
            Clock::new(),
        );
        let opts = EnrichOptions {
            cgroup_root: Some(root.clone()),
            private_ranges: parse_ranges(DEFAULT_PRIVATE).expect("default ranges"),
            config: Some(config.clone()),
        };
        let enricher = Enricher::new(&opts, KubeIndex::empty(), NatTable::disabled());
        let (mut seen, mut attributed) = (0u64, 0u64);
        let mut p = Processor::new(
            table,
            enricher,
            metrics.clone(),
            |o: Output| {
                if let Output::Record(Record::Flow(r)) = o {
                    seen += 1;
                    attributed += u64::from(r.pod_uid.is_some());
                }
            },
            DnsTracker::new(Duration::from_secs(5), 131_072, Clock::new()),
        );
        let t0 = thread_cpu();
        for item in &items {
            p.ingest(item);
        }
        p.finish();
        let cpu = (thread_cpu() - t0).as_secs_f64();
        drop(p);
        assert_eq!(seen, records, "every flow record came out");
        assert_eq!(attributed, records, "every record attributed to the pod of its cgroup");
        let conns: u64 = metrics.connections.collect_total();
        assert_eq!(conns, flows, "one connection outcome per flow in the metrics");
        println!(
            "PIPELINE rep={rep} events={events} records={records} cpu_s={cpu:.4} events_per_core_s={:.0}",
            events as f64 / cpu
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Sum of a counter vector over every label set.
trait CollectTotal {
    fn collect_total(&self) -> u64;
}

impl CollectTotal for prometheus::IntCounterVec {
    fn collect_total(&self) -> u64 {
        use prometheus::core::Collector as _;
        self.collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}
