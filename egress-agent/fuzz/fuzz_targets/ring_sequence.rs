//! A stream of ring records through the whole processor, as the ring reader
//! feeds it: decode, the flow table (proxy answers reassembled by stream
//! offset), DNS joining, enrich, the client-vantage judgement, stitch and
//! the metrics, with a proxy hop on port 3128 configured. Each step is a
//! selector byte, then the record's body (its bytes after the 16-byte
//! header, zero padded when the input runs out): the low 3 bits pick the
//! kind (0: a raw item, a length byte then that many bytes, header and all;
//! 1-3 a flow event, 4-5 a payload chunk, 6 DNS, 7 a NAT mapping), bits 4-5
//! one of four sockets, bits 6-7 how far the clock moves (1 µs, 1 ms, 1 s,
//! 1 h). The target writes the header, the socket and its flow id so that
//! records of one flow meet; everything else is the fuzzer's. Whatever
//! order, repetition or content, nothing panics.
#![no_main]
use std::{mem::offset_of, path::PathBuf, sync::Arc, time::Duration};

use egress_agent::{
    attribution::{kube::KubeIndex, nat::NatTable},
    config::Config,
    pipeline::{
        client_leg,
        dns_tracker::DnsTracker,
        enrich::{EnrichOptions, Enricher},
        flow_table::{FlowSettings, FlowTable},
        processor::Processor,
    },
    records::Clock,
    sinks::Metrics,
};
use egress_common::{
    DnsEvent, EVENT_DNS, EVENT_FLOW, EVENT_NAT_MAPPING, EVENT_PAYLOAD, EventHeader, FlowEvent,
    NatMapping, PayloadEvent,
};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "version: 1
chain:
  name: lab
  hops:
    - name: hop1
      protocol: http-connect
      match:
        address: 10.0.0.1:3128
    - name: internet
      match:
        upstream_of: hop1
        dst_class: public
";

/// Event kind and record size by the selector's low 3 bits (0: raw).
const KINDS: [(u32, usize); 8] = [
    (0, 0),
    (EVENT_FLOW, size_of::<FlowEvent>()),
    (EVENT_FLOW, size_of::<FlowEvent>()),
    (EVENT_FLOW, size_of::<FlowEvent>()),
    (EVENT_PAYLOAD, size_of::<PayloadEvent>()),
    (EVENT_PAYLOAD, size_of::<PayloadEvent>()),
    (EVENT_DNS, size_of::<DnsEvent>()),
    (EVENT_NAT_MAPPING, size_of::<NatMapping>()),
];
const STEPS_NS: [u64; 4] = [1_000, 1_000_000, 1_000_000_000, 3_600_000_000_000];

thread_local! {
    static SETUP: (Arc<Config>, Arc<Metrics>) = {
        let config = Arc::new(Config::from_yaml(CONFIG).expect("the target's config parses"));
        let metrics = Arc::new(Metrics::new(Some(config.clone())).expect("metrics"));
        (config, metrics)
    };
}

fn put(rec: &mut [u8], at: usize, bytes: &[u8]) {
    rec[at..at + bytes.len()].copy_from_slice(bytes);
}

fuzz_target!(|data: &[u8]| {
    let (config, metrics) = SETUP.with(|s| s.clone());
    let hops = client_leg::identities(&config.chain);
    let table = FlowTable::new(
        FlowSettings { degraded_retransmits: 3, max_flows: 16, answer_wait_ns: 1_000_000_000 },
        Clock::new(),
    );
    let opts = EnrichOptions {
        cgroup_root: Some(PathBuf::from("/nonexistent/egress-fuzz")),
        private_ranges: vec![],
        config: Some(config),
    };
    let enricher = Enricher::new(&opts, KubeIndex::empty(), NatTable::disabled());
    let dns = DnsTracker::new(Duration::from_secs(5), 16, Clock::new());
    let mut p = Processor::new(table, enricher, metrics, |_| {}, dns).with_hops(hops);

    let mut ts = 1_000_000_000u64;
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        let (kind, size) = KINDS[usize::from(sel & 7)];
        let sock = usize::from((sel >> 4) & 3);
        ts = ts.saturating_add(STEPS_NS[usize::from(sel >> 6)]);
        if kind == 0 {
            let Some((&len, tail)) = tail.split_first() else { break };
            let n = usize::from(len).min(tail.len());
            p.ingest(&tail[..n]);
            rest = &tail[n..];
            continue;
        }
        let n = (size - size_of::<EventHeader>()).min(tail.len());
        let mut rec = vec![0u8; size];
        put(&mut rec, size_of::<EventHeader>(), &tail[..n]);
        rest = &tail[n..];
        put(&mut rec, offset_of!(EventHeader, kind), &kind.to_le_bytes());
        put(&mut rec, offset_of!(EventHeader, size), &(size as u32).to_le_bytes());
        put(&mut rec, offset_of!(EventHeader, ts_ns), &ts.to_le_bytes());
        let skaddr = (0xffff_8880_0000_1000 + sock as u64).to_le_bytes();
        // One flow per socket: its id is (skaddr, start_ns).
        let start = (1_000 + sock as u64).to_le_bytes();
        match kind {
            EVENT_FLOW => {
                put(&mut rec, offset_of!(FlowEvent, skaddr), &skaddr);
                put(&mut rec, offset_of!(FlowEvent, start_ns), &start);
            }
            EVENT_PAYLOAD => {
                put(&mut rec, offset_of!(PayloadEvent, skaddr), &skaddr);
                put(&mut rec, offset_of!(PayloadEvent, start_ns), &start);
            }
            EVENT_DNS => put(&mut rec, offset_of!(DnsEvent, cookie), &skaddr),
            _ => {}
        }
        p.ingest(&rec);
    }
    p.finish();
});
