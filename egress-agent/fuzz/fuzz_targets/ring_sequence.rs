//! A stream of ring records through the whole processor, as the ring reader
//! feeds it: decode, the flow table, DNS joining, enrich, stitch and the
//! metrics, with a proxy hop on port 3128 configured. Each step is a selector
//! byte, then the record's body (its bytes after the 16-byte header, zero
//! padded when the input runs out): the low nibble picks the kind (0: a raw
//! item, a length byte then that many bytes, header and all), bits 4-5 one of
//! four sockets, bits 6-7 how far the clock moves (1 µs, 1 ms, 1 s, 1 h). The
//! target writes the header, the socket and the flow id (CONNECT_START's
//! timestamp) so that records of one flow meet; everything else is the
//! fuzzer's. Whatever order, repetition or content, nothing panics.
#![no_main]
use std::{mem::offset_of, path::PathBuf, sync::Arc, time::Duration};

use egress_agent::{
    attribution::{kube::KubeIndex, nat::NatTable},
    config::Config,
    pipeline::{
        dns_tracker::DnsTracker,
        enrich::{EnrichOptions, Enricher},
        flow_table::{FlowSettings, FlowTable},
        processor::Processor,
    },
    records::Clock,
    sinks::Metrics,
};
use egress_common::{
    ConnectStart, DnsEvent, EventHeader, FlowEnd, NatMapping, PayloadEvent, SynRetransmit,
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

/// Record size by kind (index = EVENT_* constant).
const SIZES: [usize; 9] = [
    0,
    size_of::<ConnectStart>(),
    size_of::<FlowEnd>(),
    size_of::<FlowEnd>(),
    size_of::<FlowEnd>(),
    size_of::<SynRetransmit>(),
    size_of::<PayloadEvent>(),
    size_of::<DnsEvent>(),
    size_of::<NatMapping>(),
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
    let table = FlowTable::new(
        FlowSettings {
            degraded_retransmits: 3,
            max_flows: 16,
            proxy_ports: config.chain.proxy_ports(),
        },
        Clock::new(),
    );
    let opts = EnrichOptions {
        cgroup_root: Some(PathBuf::from("/nonexistent/egress-fuzz")),
        private_ranges: vec![],
        config: Some(config),
    };
    let enricher = Enricher::new(&opts, KubeIndex::empty(), NatTable::disabled());
    let dns = DnsTracker::new(Duration::from_secs(5), 16, Clock::new());
    let mut p = Processor::new(table, enricher, metrics, |_| {}, dns);

    let mut starts = [0u64; 4];
    let mut ts = 1_000_000_000u64;
    let mut rest = data;
    while let Some((&sel, tail)) = rest.split_first() {
        let kind = usize::from(sel & 0x0f) % SIZES.len();
        let sock = usize::from((sel >> 4) & 3);
        ts = ts.saturating_add(STEPS_NS[usize::from(sel >> 6)]);
        if kind == 0 {
            let Some((&len, tail)) = tail.split_first() else { break };
            let n = usize::from(len).min(tail.len());
            p.ingest(&tail[..n]);
            rest = &tail[n..];
            continue;
        }
        let size = SIZES[kind];
        let n = (size - size_of::<EventHeader>()).min(tail.len());
        let mut rec = vec![0u8; size];
        put(&mut rec, size_of::<EventHeader>(), &tail[..n]);
        rest = &tail[n..];
        put(&mut rec, offset_of!(EventHeader, kind), &(kind as u32).to_le_bytes());
        put(&mut rec, offset_of!(EventHeader, size), &(size as u32).to_le_bytes());
        put(&mut rec, offset_of!(EventHeader, ts_ns), &ts.to_le_bytes());
        let skaddr = (0xffff_8880_0000_1000 + sock as u64).to_le_bytes();
        let start = starts[sock].to_le_bytes();
        match kind {
            1 => {
                put(&mut rec, offset_of!(ConnectStart, skaddr), &skaddr);
                starts[sock] = ts;
            }
            2..=4 => {
                put(&mut rec, offset_of!(FlowEnd, skaddr), &skaddr);
                put(&mut rec, offset_of!(FlowEnd, start_ns), &start);
            }
            5 => {
                put(&mut rec, offset_of!(SynRetransmit, skaddr), &skaddr);
                put(&mut rec, offset_of!(SynRetransmit, start_ns), &start);
            }
            6 => {
                put(&mut rec, offset_of!(PayloadEvent, skaddr), &skaddr);
                put(&mut rec, offset_of!(PayloadEvent, start_ns), &start);
            }
            7 => put(&mut rec, offset_of!(DnsEvent, cookie), &skaddr),
            _ => {}
        }
        p.ingest(&rec);
    }
    p.finish();
});
