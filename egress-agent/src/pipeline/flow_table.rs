//! The flow stage: kernel flow events become flow records with their
//! verdicts. Each event is self-contained (the kernel kept the owner with
//! the socket), so only flows to capture ports (proxies) are held here:
//! their record waits for the proxy's answer, reassembled from the captured
//! chunks of both directions by stream offset. Owned by the pipeline task
//! alone: no locks.
use std::collections::{HashMap, VecDeque};

use egress_common::{
    DIR_EGRESS, DIR_INGRESS, FLOW_FLAG_ACCEPTED, FLOW_FLAG_ADOPTED, FLOW_FLAG_CAPTURE,
    FLOW_FLAG_HAS_INTENDED, FLOW_FLAG_RESET, FLOW_FLAG_TLS, FLOW_FLAG_UNTIMED, FlowEvent,
    PHASE_CLOSED, PHASE_CONNECT_FAILED, PHASE_CONNECTED, PayloadEvent,
};

use super::{
    flow_bytes::body_total,
    judge::{self, Facts},
    proxy_http,
    tls::{End, TlsStart},
    vantage::{self, ProxyAnswer, Reassembly},
};
use crate::{
    kernel::decode::{self, Event},
    records::{Clock, FlowRecord, Phase, Verdict, rfc3339},
};

/// Bytes of a proxy flow's request side kept (the CONNECT request and the
/// first bytes sent inside the tunnel) and of its answer side (a 2xx needs
/// its header block; an error also the start of its body, where a proxy
/// may name itself): as much as the kernel captures.
const TX_BYTES: usize = egress_common::CAPTURE_TX_BYTES as usize;
const RX_BYTES: usize = egress_common::CAPTURE_RX_ERR_BYTES as usize;
/// Chunks that arrive before their flow's connected event (the capture
/// ring is read apart from the flow ring) wait this long, this many at most.
const EARLY_WAIT_NS: u64 = 2_000_000_000;
const EARLY_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct FlowSettings {
    /// Retransmits at or above which a flow is `degraded` (0 = never).
    pub degraded_retransmits: u32,
    /// Proxy flows held at most; beyond, the oldest goes out as it is.
    pub max_flows: usize,
    /// How long an error answer may wait for the rest of its body (or the
    /// close) once its header block is complete.
    pub answer_wait_ns: u64,
}

/// What the table noticed that is not a record (counted by the caller).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableStats {
    /// Captured chunks whose flow never showed up (or was gone).
    pub orphans: u64,
    /// Proxy flows sent on early because the table was full.
    pub evicted: u64,
}

/// What a proxy's answer and the client's socket say, for the client-vantage
/// judgement once the flow's leg is known (after enrichment).
#[derive(Debug, Clone, Default)]
pub struct AnswerEvidence {
    pub answer: Option<ProxyAnswer>,
    /// Body bytes captured after the header block (a bounded prefix).
    pub body: Vec<u8>,
    /// Body bytes the socket received in all, when the flow has closed.
    pub body_bytes_total: Option<u64>,
    pub closed: bool,
    /// From the connect to the answer's first byte.
    pub answer_ms: Option<f64>,
    pub retransmits: u32,
    /// The TLS start seen on the flow (inside a tunnel that opened, or on
    /// a TLS flow), and why its handshake failed when it did.
    pub tls: Option<TlsStart>,
    pub tls_failure: Option<String>,
}

/// A flow's record with what decides its client-vantage verdict (proxy
/// flows only).
pub type Out = (FlowRecord, Option<Box<AnswerEvidence>>);

/// `vantage` of a hop's accepted connection: the hop's own view of one client.
pub const HOP_VANTAGE: &str = "hop";

/// A flow to a proxy (or a hop's accepted connection), waiting for (or past)
/// its answer. `tx` holds the request side, `rx` the answer side.
struct Held {
    record: Box<FlowRecord>,
    /// A hop's accepted connection: the request comes in, the answer goes out.
    accepted: bool,
    /// To a TLS port: no proxy answer comes, the server's TLS start does.
    tls_port: bool,
    /// The flow's TLS start as last read (kept for the close record).
    tls: Option<TlsStart>,
    /// Sent on: the answer came (or the flow ended).
    released: bool,
    connect_verdict: Verdict,
    established_ns: u64,
    tx: Reassembly,
    rx: Reassembly,
    first_rx_ns: Option<u64>,
    /// When an error answer's header block was complete.
    header_done_ns: Option<u64>,
    closed: bool,
    body_bytes_total: Option<u64>,
}

type FlowId = (u64, u64);

/// Stale ids `FlowTable::order` may carry beyond twice the flows held.
const ORDER_SLACK: usize = 1024;

pub struct FlowTable {
    settings: FlowSettings,
    clock: Clock,
    /// Boxed: the map holds small slots, so a doubling copies pointers.
    held: HashMap<FlowId, Box<Held>>,
    order: VecDeque<FlowId>,
    early: HashMap<FlowId, Vec<(u64, Box<PayloadEvent>)>>,
    early_order: VecDeque<(u64, FlowId)>,
    early_count: usize,
    /// Closes of proxy flows still waiting for their answer, applied once
    /// the capture ring has been read too: the answer's chunks were
    /// committed there before the close was committed to the flow ring.
    deferred: Vec<FlowEvent>,
    pub stats: TableStats,
}

impl FlowTable {
    pub fn new(settings: FlowSettings, clock: Clock) -> Self {
        Self {
            settings,
            clock,
            held: HashMap::new(),
            order: VecDeque::new(),
            early: HashMap::new(),
            early_order: VecDeque::new(),
            early_count: 0,
            deferred: Vec::new(),
            stats: TableStats::default(),
        }
    }

    /// Proxy flows held (their answer or their close is to come).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether something waits on time (an answer's body, early chunks).
    pub fn waiting(&self) -> bool {
        !self.early_order.is_empty() || self.held.values().any(|h| h.header_done_ns.is_some())
    }

    /// Feed one event; records that reached their outcome go to `out`.
    pub fn on_event(&mut self, ev: &Event, out: &mut Vec<Out>) {
        match ev {
            Event::Flow(e) => self.on_flow(e, out),
            Event::Payload(p) => self.on_payload(p, out),
            // The DNS tracker and the NAT table take these.
            Event::Dns(_) | Event::NatMapping(_) => {}
        }
    }

    fn on_flow(&mut self, e: &FlowEvent, out: &mut Vec<Out>) {
        let thr = self.settings.degraded_retransmits;
        let id = (e.skaddr, e.start_ns);
        match e.phase {
            PHASE_CONNECTED => {
                let (v, reason) = judge::connected(&facts(e, 0), thr);
                let rec = self.record(e, Phase::Connect, v, reason, 0);
                if e.flags & FLOW_FLAG_CAPTURE == 0 {
                    out.push((rec, None));
                    return;
                }
                self.hold(id, e, rec, v, out);
            }
            PHASE_CONNECT_FAILED => {
                // sk_err first; the reported error survives getsockopt(SO_ERROR).
                let errno = [e.sk_err, e.reported_err, e.sk_err_soft]
                    .into_iter()
                    .find(|&x| x != 0)
                    .unwrap_or(0);
                let reason = judge::connect_failure(&facts(e, errno));
                out.push((
                    self.record(e, Phase::Connect, Verdict::Failed, Some(reason), errno),
                    None,
                ));
            }
            PHASE_CLOSED => {
                if self.held.get(&id).is_some_and(|h| !h.released) {
                    self.deferred.push(*e);
                    return;
                }
                self.close(e, out);
            }
            _ => {}
        }
    }

    /// Apply the closes that waited for the capture ring to be read.
    pub fn flush(&mut self, out: &mut Vec<Out>) {
        for e in std::mem::take(&mut self.deferred) {
            self.close(&e, out);
        }
    }

    fn close(&mut self, e: &FlowEvent, out: &mut Vec<Out>) {
        let thr = self.settings.degraded_retransmits;
        let id = (e.skaddr, e.start_ns);
        {
            {
                let (mut v, mut reason) = judge::closed(&facts(e, e.sk_err), thr);
                let mut tls = None;
                let connect_verdict = match self.held.remove(&id) {
                    Some(mut h) => {
                        if !h.released {
                            // Ended before (all of) its answer came: the
                            // answer's record with what the close says.
                            out.push(release(&self.clock, &mut h, Some((e, v, reason))));
                        }
                        tls = h.tls.take();
                        h.connect_verdict
                    }
                    None => {
                        let (v, reason) = judge::connected(&facts(e, 0), thr);
                        if e.flags & FLOW_FLAG_UNTIMED != 0 {
                            // Its ESTABLISHED was taken up only at this close
                            // (the kernel skipped the program's run for it):
                            // the connect's own record comes first.
                            out.push((self.record(e, Phase::Connect, v, reason, 0), None));
                        }
                        v
                    }
                };
                // A ClientHello that got nothing back before the end.
                let tls_failure = tls.as_ref().and_then(|t| t.failure(end_of(e)));
                if tls_failure.is_some() {
                    (v, reason) = (Verdict::Failed, Some(crate::records::Reason::TlsFailed));
                }
                let mut rec = self.record(e, Phase::Close, v, reason, e.sk_err);
                rec.sni = tls.and_then(|t| t.sni);
                if tls_failure.is_some() {
                    rec.evidence = tls_failure;
                }
                // One shown record per flow unless it got worse after the connect.
                rec.quiet = v == connect_verdict || v == Verdict::Ok;
                out.push((rec, None));
            }
        }
    }

    fn hold(&mut self, id: FlowId, e: &FlowEvent, rec: FlowRecord, v: Verdict, out: &mut Vec<Out>) {
        if self.held.len() >= self.settings.max_flows.max(1) {
            while let Some(old) = self.order.pop_front() {
                if let Some(mut h) = self.held.remove(&old) {
                    self.stats.evicted += 1;
                    if !h.released {
                        out.push(release(&self.clock, &mut h, None));
                    }
                    break;
                }
            }
        }
        self.held.insert(
            id,
            Box::new(Held {
                record: Box::new(rec),
                released: false,
                connect_verdict: v,
                established_ns: e.established_ns,
                accepted: e.flags & FLOW_FLAG_ACCEPTED != 0,
                tls_port: e.flags & FLOW_FLAG_TLS != 0,
                tls: None,
                tx: Reassembly::new(TX_BYTES),
                rx: Reassembly::new(RX_BYTES),
                first_rx_ns: None,
                // A TLS flow waits for its TLS start from the connect on, at
                // most the answer wait (a client that does not speak TLS
                // first, a silent one, is not held longer).
                header_done_ns: (e.flags & FLOW_FLAG_TLS != 0).then_some(e.hdr.ts_ns),
                closed: false,
                body_bytes_total: None,
            }),
        );
        self.order.push_back(id);
        // Ids of flows released since stay in `order` until here. Compacted
        // against what is held now (amortised: at least held + 1024 pushes
        // between two passes), not against the cap: a queue let grow to
        // twice `max_flows` (262k ids at the default) took a 30-minute
        // soak's RSS up by 4 MiB without ever turning over.
        if self.order.len() > 2 * self.held.len() + ORDER_SLACK {
            let held = &self.held;
            self.order.retain(|id| held.contains_key(id));
            if self.order.capacity() > 4 * (self.order.len() + ORDER_SLACK) {
                self.order.shrink_to(2 * (self.order.len() + ORDER_SLACK));
            }
        }
        if let Some(chunks) = self.early.remove(&id) {
            self.early_count = self.early_count.saturating_sub(chunks.len());
            for (_, p) in chunks {
                self.on_payload(&p, out);
            }
        }
    }

    /// A captured chunk of a proxy flow: the request side gives the CONNECT
    /// target (and the tunnel's ClientHello), the answer side the proxy's
    /// status and evidence (and the server's TLS start after a 2xx). A TLS
    /// flow has no proxy answer: its ClientHello and the server's first
    /// record decide.
    fn on_payload(&mut self, p: &PayloadEvent, out: &mut Vec<Out>) {
        let id = (p.skaddr, p.start_ns);
        let Some(h) = self.held.get_mut(&id) else {
            self.stash(id, p);
            return;
        };
        let bytes = &p.data[..(p.len as usize).min(p.data.len())];
        let request = if h.accepted { DIR_INGRESS } else { DIR_EGRESS };
        if p.direction == request {
            h.tx.push(p.offset, bytes);
            if h.record.target.is_none() {
                h.record.target = proxy_http::parse_request(h.tx.contiguous()).map(|r| r.target);
            }
        } else {
            h.rx.push(p.offset, bytes);
            if p.offset == 0 || h.first_rx_ns.is_none() {
                h.first_rx_ns = Some(h.first_rx_ns.map_or(p.hdr.ts_ns, |t| t.min(p.hdr.ts_ns)));
            }
        }
        if h.released {
            // Open after its record: its TLS start still counts at the close.
            if h.tls.as_ref().is_some_and(|t| !t.settled()) {
                h.tls = h.tls_start();
            }
            return;
        }
        if h.settle(p.hdr.ts_ns) {
            out.push(release(&self.clock, h, None));
        }
    }

    fn stash(&mut self, id: FlowId, p: &PayloadEvent) {
        if self.early_count >= EARLY_MAX {
            self.stats.orphans += 1;
            return;
        }
        self.early_count += 1;
        self.early.entry(id).or_default().push((p.hdr.ts_ns, Box::new(*p)));
        self.early_order.push_back((p.hdr.ts_ns, id));
    }

    /// Time passes: error answers whose wait is over go out; early chunks
    /// whose flow never came are dropped and counted.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Out>) {
        let wait = self.settings.answer_wait_ns;
        for h in self.held.values_mut() {
            if !h.released && h.header_done_ns.is_some_and(|t| now_ns.saturating_sub(t) >= wait) {
                out.push(release(&self.clock, h, None));
            }
        }
        while let Some(&(ts, id)) = self.early_order.front() {
            if now_ns.saturating_sub(ts) < EARLY_WAIT_NS {
                break;
            }
            self.early_order.pop_front();
            if let Some(chunks) = self.early.get_mut(&id) {
                let before = chunks.len();
                chunks.retain(|(t, _)| now_ns.saturating_sub(*t) < EARLY_WAIT_NS);
                let gone = before - chunks.len();
                self.stats.orphans += gone as u64;
                self.early_count = self.early_count.saturating_sub(gone);
                if chunks.is_empty() {
                    self.early.remove(&id);
                }
            }
        }
    }

    /// Shutdown: every held flow goes out as it stands.
    ///
    /// Returns how many flows were open and already reported (their close
    /// will not be; the next agent adopts them at its start).
    pub fn finish(&mut self, out: &mut Vec<Out>) -> usize {
        self.flush(out);
        let mut open = 0;
        for (_, mut h) in std::mem::take(&mut self.held) {
            if h.released {
                open += 1;
            } else {
                out.push(release(&self.clock, &mut h, None));
            }
        }
        self.order.clear();
        open
    }

    fn record(
        &self,
        e: &FlowEvent,
        phase: Phase,
        verdict: Verdict,
        reason: Option<crate::records::Reason>,
        errno: i32,
    ) -> FlowRecord {
        let start = e.start_ns;
        let connect_end = if e.established_ns != 0 { e.established_ns } else { e.hdr.ts_ns };
        let accepted = e.flags & FLOW_FLAG_ACCEPTED != 0;
        // A hop's accepted connection is the client's leg seen from the hop:
        // the peer is the source, the hop's own address the destination.
        let (src, actual) = if accepted {
            (decode::dst(&e.tuple), decode::src(&e.tuple))
        } else {
            (decode::src(&e.tuple), decode::dst(&e.tuple))
        };
        let intended = (e.flags & FLOW_FLAG_HAS_INTENDED != 0)
            .then(|| decode::intended(&e.intended))
            .flatten();
        FlowRecord {
            time: rfc3339(self.clock.wall(e.hdr.ts_ns)),
            phase,
            pid: e.tgid,
            tid: e.pid,
            comm: decode::comm(&e.comm),
            cgroup_id: e.cgroup_id,
            netns: e.netns,
            src,
            dst: intended.or(actual),
            dst_actual: actual,
            verdict,
            reason,
            errno,
            latency_ms: ms(connect_end.saturating_sub(start)),
            retransmits: e.retransmits,
            syn_retransmits: e.syn_retransmits,
            duration_ms: (phase == Phase::Close && e.established_ns != 0)
                .then(|| ms(e.hdr.ts_ns.saturating_sub(e.established_ns))),
            flow_id: format!("{:x}-{:x}", e.skaddr, e.start_ns),
            start_mono_ns: e.start_ns,
            record_mono_ns: e.hdr.ts_ns,
            vantage: accepted.then(|| HOP_VANTAGE.to_string()),
            // The hop's own socket names its real peer and address: no
            // conntrack entry to wait for.
            nat_checked: accepted.then_some(false),
            adopted: e.flags & FLOW_FLAG_ADOPTED != 0,
            untimed: e.flags & FLOW_FLAG_UNTIMED != 0,
            ..FlowRecord::default()
        }
    }
}

/// The held record with its answer (or without one), and the evidence.
/// `close`: the flow's end, when it ended before its answer was in.
fn release(
    clock: &Clock,
    h: &mut Held,
    close: Option<(&FlowEvent, Verdict, Option<crate::records::Reason>)>,
) -> Out {
    let mut rec = std::mem::take(&mut *h.record);
    let is_tls = h.is_tls();
    let answer = (!is_tls && h.rx.header_complete())
        .then(|| vantage::parse_answer(h.rx.contiguous()))
        .flatten();
    h.tls = h.tls_start();
    let tls_failure =
        h.tls.as_ref().and_then(|t| t.failure(close.map_or(End::Open, |c| end_of(c.0))));
    rec.sni = h.tls.as_ref().and_then(|t| t.sni.clone());
    match &answer {
        Some(a) => {
            let (v, reason) = judge::proxy_status(a.status);
            // A tunnel that connected slowly stays degraded even when it opened.
            if !(v == Verdict::Ok && rec.verdict == Verdict::Degraded) {
                rec.verdict = v;
                rec.reason = reason;
            }
            rec.proxy_status = Some(a.status);
            rec.proxy_error = a.squid_error.as_ref().map(|e| match e.errno {
                Some(n) => format!("{} {n}", e.code),
                None => e.code.clone(),
            });
            rec.proxy_via = a
                .cache_from
                .first()
                .cloned()
                .or_else(|| a.via.first().map(|v| v.host().to_string()));
            if let Some(t) = h.first_rx_ns {
                rec.time = rfc3339(clock.wall(t));
                rec.record_mono_ns = t;
            }
            if let Some(why) = &tls_failure {
                // The tunnel opened; the handshake inside it failed.
                (rec.verdict, rec.reason) =
                    (Verdict::Failed, Some(crate::records::Reason::TlsFailed));
                rec.evidence = Some(why.clone());
            }
        }
        // A TLS flow: no proxy answer; the handshake's start decides.
        // A TLS flow: no proxy answer; the handshake's start decides, and the
        // record is as of the server's first bytes (or the end), as a
        // proxy's record is as of its answer (chains join legs by it).
        None if is_tls => {
            match (h.first_rx_ns, close) {
                (Some(t), _) => {
                    rec.time = rfc3339(clock.wall(t));
                    rec.record_mono_ns = t;
                }
                (None, Some((e, _, _))) => rec.record_mono_ns = e.hdr.ts_ns,
                (None, None) => {}
            }
            match (&tls_failure, close) {
                (Some(why), _) => {
                    (rec.verdict, rec.reason) =
                        (Verdict::Failed, Some(crate::records::Reason::TlsFailed));
                    rec.evidence = Some(why.clone());
                }
                (None, Some((e, v, reason))) if v == Verdict::Failed => {
                    rec.verdict = v;
                    rec.reason = reason;
                    rec.errno = e.sk_err;
                }
                _ => {}
            }
        }
        // No answer seen (or not all of its status line): the tunnel's
        // outcome is not known, which is not a failure, unless its end
        // was one (a reset, a timeout).
        None => match close {
            Some((e, v, reason)) if v == Verdict::Failed => {
                rec.verdict = v;
                rec.reason = reason;
                rec.errno = e.sk_err;
                rec.record_mono_ns = e.hdr.ts_ns;
            }
            _ => {
                rec.verdict = Verdict::Unknown;
                rec.reason = None;
            }
        },
    }
    if let Some((e, _, _)) = close {
        h.closed = true;
        h.body_bytes_total = body_total(e, h.accepted, h.rx.header_len());
        rec.retransmits = e.retransmits;
    }
    h.released = true;
    let answer_ms = h
        .first_rx_ns
        .filter(|_| h.established_ns != 0)
        .map(|t| ms(t.saturating_sub(h.established_ns)));
    h.header_done_ns = None;
    h.connect_verdict = rec.verdict;
    let ev = AnswerEvidence {
        body: h.rx.body().to_vec(),
        answer,
        body_bytes_total: h.body_bytes_total,
        closed: h.closed,
        answer_ms,
        retransmits: rec.retransmits,
        tls: h.tls.clone(),
        tls_failure,
    };
    // The flow stays held until its close, without its buffers (unless its
    // TLS start is still to come back).
    if h.tls.as_ref().is_none_or(TlsStart::settled) {
        h.tx = Reassembly::new(0);
        h.rx = Reassembly::new(0);
    }
    (rec, Some(Box::new(ev)))
}

/// How a flow ended, for its TLS start.
fn end_of(e: &FlowEvent) -> End {
    if e.flags & FLOW_FLAG_RESET != 0 { End::Reset } else { End::Closed }
}

fn facts(e: &FlowEvent, errno: i32) -> Facts {
    Facts {
        errno,
        reset_seen: e.flags & FLOW_FLAG_RESET != 0,
        syn_retransmits: e.syn_retransmits,
        retransmits: e.retransmits,
    }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

#[path = "flow_table_tls.rs"]
mod held_tls;
#[cfg(test)]
#[path = "flow_table_tests.rs"]
mod tests;
