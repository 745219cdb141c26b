//! Unit tests of the flow table (a file of their own: the table is long).
use egress_common::{
    AF_INET, DIR_INGRESS, EVENT_FLOW, EVENT_PAYLOAD, EventHeader, FLOW_FLAG_EMITTED, Tuple,
};

use super::*;
use crate::records::Reason;

const MS: u64 = 1_000_000;

fn table() -> FlowTable {
    FlowTable::new(
        FlowSettings { degraded_retransmits: 3, max_flows: 16, answer_wait_ns: 1000 * MS },
        Clock::new(),
    )
}

fn tuple(dport: u16) -> Tuple {
    let mut t = Tuple { family: AF_INET, sport: 40000, dport, ..Tuple::default() };
    t.daddr[..4].copy_from_slice(&[192, 0, 2, 7]);
    t
}

fn flow(phase: u32, sk: u64, ts: u64, f: impl FnOnce(&mut FlowEvent)) -> Event {
    let mut e = FlowEvent {
        hdr: EventHeader { kind: EVENT_FLOW, size: size_of::<FlowEvent>() as u32, ts_ns: ts },
        skaddr: sk,
        start_ns: 100,
        tgid: 77,
        pid: 78,
        comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        phase,
        tuple: tuple(443),
        bytes_received: u64::MAX,
        ..FlowEvent::default()
    };
    if phase != PHASE_CONNECT_FAILED {
        e.established_ns = 2 * MS;
    }
    f(&mut e);
    Event::Flow(Box::new(e))
}

fn proxy_connected(sk: u64) -> Event {
    flow(PHASE_CONNECTED, sk, 2 * MS, |e| {
        e.flags = FLOW_FLAG_CAPTURE | FLOW_FLAG_EMITTED;
        e.tuple = tuple(3128);
    })
}

fn chunk(sk: u64, dir: u32, offset: u32, ts: u64, text: &[u8]) -> Event {
    let mut p = PayloadEvent {
        hdr: EventHeader { kind: EVENT_PAYLOAD, size: size_of::<PayloadEvent>() as u32, ts_ns: ts },
        skaddr: sk,
        start_ns: 100,
        direction: dir,
        offset,
        len: text.len() as u32,
        ..PayloadEvent::default()
    };
    p.data[..text.len()].copy_from_slice(text);
    Event::Payload(Box::new(p))
}

/// One event, then the flush the pipeline does once both rings are read.
fn feed(t: &mut FlowTable, ev: &Event) -> Vec<Out> {
    let mut out = Vec::new();
    t.on_event(ev, &mut out);
    t.flush(&mut out);
    out
}

#[test]
fn a_close_waits_for_the_captures_read_after_it() {
    let mut t = table();
    feed(&mut t, &proxy_connected(30));
    // The close comes out of the flow ring before the answer out of the
    // capture ring: it waits for the flush.
    let mut out = Vec::new();
    t.on_event(&flow(PHASE_CLOSED, 30, 9 * MS, |e| e.tuple = tuple(3128)), &mut out);
    assert!(out.is_empty());
    t.on_event(&chunk(30, DIR_INGRESS, 0, 5 * MS, b"HTTP/1.1 403 Forbidden\r\n\r\n"), &mut out);
    t.flush(&mut out);
    assert_eq!(out[0].0.proxy_status, Some(403), "the answer, not an unknown");
}

#[test]
fn a_connect_is_one_record_and_its_clean_close_is_quiet() {
    let mut t = table();
    let out = feed(&mut t, &flow(PHASE_CONNECTED, 1, 2 * MS, |_| {}));
    let [(r, None)] = out.as_slice() else { panic!("{}", out.len()) };
    assert_eq!((r.verdict, r.pid, r.comm.as_str(), r.latency_ms), (Verdict::Ok, 77, "curl", 2.0));
    assert_eq!(r.dst, Some("192.0.2.7:443".parse().expect("addr")));
    let out = feed(&mut t, &flow(PHASE_CLOSED, 1, 9 * MS, |_| {}));
    assert!(out.len() == 1 && out[0].0.quiet && out[0].0.phase == Phase::Close);
    assert!(t.is_empty(), "only proxy flows are held");
}

#[test]
fn a_close_that_took_up_a_skipped_established_brings_the_connects_record() {
    let mut t = table();
    // The kernel skipped the ESTABLISHED: only the close came, untimed.
    let out = feed(
        &mut t,
        &flow(PHASE_CLOSED, 5, 9 * MS, |e| {
            e.established_ns = 9 * MS;
            e.flags = FLOW_FLAG_UNTIMED | FLOW_FLAG_EMITTED;
        }),
    );
    let [(c, None), (x, None)] = out.as_slice() else { panic!("{}", out.len()) };
    assert_eq!((c.phase, c.verdict, c.untimed), (Phase::Connect, Verdict::Ok, true));
    assert_eq!(c.dst, Some("192.0.2.7:443".parse().expect("addr")));
    assert_eq!((x.phase, x.quiet, x.untimed), (Phase::Close, true, true));
    // A timed close brings no second connect record.
    let out = feed(&mut t, &flow(PHASE_CLOSED, 6, 9 * MS, |_| {}));
    assert!(out.len() == 1 && out[0].0.phase == Phase::Close && !out[0].0.untimed);
}

#[test]
fn failures_come_whole_from_one_event() {
    let mut t = table();
    let out = feed(
        &mut t,
        &flow(PHASE_CONNECT_FAILED, 1, 5 * MS, |e| {
            e.sk_err = libc::ECONNREFUSED;
            e.flags = FLOW_FLAG_RESET;
        }),
    );
    assert_eq!(
        (out[0].0.verdict, out[0].0.reason, out[0].0.errno),
        (Verdict::Failed, Some(Reason::Refused), libc::ECONNREFUSED)
    );
    // An ICMP error consumed by getsockopt(SO_ERROR): the reported errno.
    let out = feed(
        &mut t,
        &flow(PHASE_CONNECT_FAILED, 2, 5 * MS, |e| e.reported_err = libc::EHOSTUNREACH),
    );
    assert_eq!(out[0].0.reason, Some(Reason::Unreachable));
    // A close that got worse than its (clean, counted) connect: shown.
    let out = feed(&mut t, &flow(PHASE_CLOSED, 3, 9 * MS, |e| e.retransmits = 5));
    assert_eq!((out[0].0.verdict, out[0].0.quiet), (Verdict::Degraded, false));
}

#[test]
fn a_proxy_flow_waits_for_its_answer_reassembled() {
    let mut t = table();
    assert!(feed(&mut t, &proxy_connected(7)).is_empty(), "held for the answer");
    let req = b"CONNECT login.example.test:443 HTTP/1.1\r\nHost: login.example.test:443\r\n\r\n";
    assert!(feed(&mut t, &chunk(7, DIR_EGRESS, 0, 3 * MS, req)).is_empty());
    // The status line split inside its code: neither half is a verdict.
    assert!(feed(&mut t, &chunk(7, DIR_INGRESS, 0, 4 * MS, b"HTTP/1.1 2")).is_empty());
    let opened = b"00 Connection established\r\n\r\n";
    assert!(
        feed(&mut t, &chunk(7, DIR_INGRESS, 10, 5 * MS, opened)).is_empty(),
        "the tunnel opened: its first bytes say whether TLS starts in it"
    );
    // Plain HTTP inside the tunnel: no TLS to wait for.
    let out = feed(&mut t, &chunk(7, DIR_EGRESS, req.len() as u32, 6 * MS, b"GET / HTTP/1.1\r\n"));
    let [(r, Some(ev))] = out.as_slice() else { panic!("{}", out.len()) };
    assert_eq!(r.sni, None);
    assert_eq!(
        (r.verdict, r.proxy_status, r.target.as_deref()),
        (Verdict::Ok, Some(200), Some("login.example.test:443"))
    );
    assert_eq!(ev.answer.as_ref().map(|a| a.status), Some(200));
    assert_eq!(ev.answer_ms, Some(2.0), "from ESTABLISHED (2 ms) to the first answer byte (4 ms)");
    // The tunnel's clean close repeats nothing.
    let out = feed(&mut t, &flow(PHASE_CLOSED, 7, 60 * MS, |e| e.tuple = tuple(3128)));
    assert!(out[0].0.quiet);
    assert!(t.is_empty());
}

#[test]
fn an_error_answer_waits_for_its_body_or_its_close() {
    let mut t = table();
    feed(&mut t, &proxy_connected(8));
    let head = b"HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\nContent-Length: 3000\r\n\r\n";
    assert!(feed(&mut t, &chunk(8, DIR_INGRESS, 0, 4 * MS, head)).is_empty(), "body to come");
    assert!(t.waiting());
    // The proxy closes with no body at all (a relayed header block): the
    // close says so, and the answer goes out with it. The kernel's counter
    // holds the proxy's FIN too (one sequence number; the client closed
    // from LAST_ACK), which is no body byte.
    let out = feed(
        &mut t,
        &flow(PHASE_CLOSED, 8, 9 * MS, |e| {
            e.tuple = tuple(3128);
            e.oldstate = 9;
            e.bytes_received = head.len() as u64 + 1;
        }),
    );
    let (r, ev) = &out[0];
    assert_eq!(
        (r.verdict, r.reason, r.proxy_status),
        (Verdict::Failed, Some(Reason::ProxyUpstreamError), Some(503))
    );
    assert_eq!(r.proxy_error.as_deref(), Some("ERR_CONNECT_FAIL 111"));
    let ev = ev.as_ref().expect("evidence");
    assert_eq!((ev.closed, ev.body_bytes_total), (true, Some(0)));
    assert_eq!(out.len(), 2, "and the close record");
    // Without a close, the answer goes after its wait.
    feed(&mut t, &proxy_connected(9));
    feed(&mut t, &chunk(9, DIR_INGRESS, 0, 4 * MS, head));
    let mut out = Vec::new();
    t.tick(4 * MS + 500 * MS, &mut out);
    assert!(out.is_empty());
    t.tick(4 * MS + 1000 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.as_ref().map(|e| e.closed), Some(false));
}

#[test]
fn an_unseen_answer_is_unknown_not_failed() {
    let mut t = table();
    feed(&mut t, &proxy_connected(10));
    let out = feed(&mut t, &flow(PHASE_CLOSED, 10, 9 * MS, |e| e.tuple = tuple(3128)));
    assert_eq!((out[0].0.verdict, out[0].0.reason), (Verdict::Unknown, None));
    // A reset before any answer is a failure of its own.
    feed(&mut t, &proxy_connected(11));
    let out = feed(
        &mut t,
        &flow(PHASE_CLOSED, 11, 9 * MS, |e| {
            e.tuple = tuple(3128);
            e.flags = FLOW_FLAG_RESET;
        }),
    );
    assert_eq!((out[0].0.verdict, out[0].0.reason), (Verdict::Failed, Some(Reason::Reset)));
}

#[test]
fn captures_before_their_flow_wait_for_it() {
    let mut t = table();
    let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
    assert!(feed(&mut t, &chunk(12, DIR_INGRESS, 0, 3 * MS, ok)).is_empty());
    let out = feed(&mut t, &proxy_connected(12));
    assert_eq!(out.first().map(|(r, _)| r.proxy_status), Some(Some(200)));
    // One whose flow never comes is dropped after its wait, and counted.
    feed(&mut t, &chunk(13, DIR_INGRESS, 0, 3 * MS, ok));
    let mut out = Vec::new();
    t.tick(3 * MS + 3_000 * MS, &mut out);
    assert_eq!(t.stats.orphans, 1);
}

#[test]
fn a_full_table_sends_the_oldest_on_and_counts_it() {
    let mut t = FlowTable::new(
        FlowSettings { degraded_retransmits: 3, max_flows: 2, answer_wait_ns: 1000 * MS },
        Clock::new(),
    );
    feed(&mut t, &proxy_connected(20));
    feed(&mut t, &proxy_connected(21));
    let out = feed(&mut t, &proxy_connected(22));
    assert_eq!((out.len(), t.stats.evicted, t.len()), (1, 1, 2));
    assert_eq!(out[0].0.verdict, Verdict::Unknown);
}

#[test]
fn a_hops_accepted_connection_reads_the_request_in_and_the_answer_out() {
    use egress_common::{DIR_EGRESS, FLOW_FLAG_ACCEPTED};
    let mut t = table();
    // The hop's socket: local = the hop (sport 3128), remote = its client.
    let accepted = flow(PHASE_CONNECTED, 40, 2 * MS, |e| {
        e.flags = FLOW_FLAG_ACCEPTED | FLOW_FLAG_CAPTURE | FLOW_FLAG_EMITTED;
        e.tuple = Tuple { family: AF_INET, sport: 3128, dport: 51000, ..Tuple::default() };
        e.tuple.saddr[..4].copy_from_slice(&[10, 9, 0, 2]);
        e.tuple.daddr[..4].copy_from_slice(&[10, 8, 0, 7]);
        (e.tgid, e.pid, e.comm) = (0, 0, [0; 16]);
    });
    assert!(feed(&mut t, &accepted).is_empty(), "held for its answer");
    // The client pipelines its first tunnel bytes (plain HTTP: no TLS start
    // to wait for).
    let req =
        b"CONNECT login.example.test:443 HTTP/1.1\r\nHost: login.example.test:443\r\n\r\nGET /";
    assert!(feed(&mut t, &chunk(40, DIR_INGRESS, 0, 3 * MS, req)).is_empty());
    let out = feed(
        &mut t,
        &chunk(40, DIR_EGRESS, 0, 4 * MS, b"HTTP/1.1 200 Connection established\r\n\r\n"),
    );
    let rec = &out[0].0;
    assert_eq!(rec.vantage.as_deref(), Some(HOP_VANTAGE));
    assert_eq!(rec.target.as_deref(), Some("login.example.test:443"));
    assert_eq!(rec.proxy_status, Some(200));
    assert_eq!(rec.src, Some("10.8.0.7:51000".parse().expect("addr")), "the peer is the source");
    assert_eq!(rec.dst_actual, Some("10.9.0.2:3128".parse().expect("addr")));
    assert_eq!(rec.nat_checked, Some(false), "no conntrack wait for the hop's own socket");
}

#[test]
fn a_hops_accepted_record_is_the_far_end_of_its_clients_link() {
    use egress_common::{DIR_EGRESS, FLOW_FLAG_ACCEPTED};

    use crate::{
        assembly::{Link, select::select},
        records::Record,
    };
    let mut t = table();
    // Hop 1's machine: its socket local = the pod 10.9.0.2:3128, remote =
    // the client pod on another node.
    let accepted = flow(PHASE_CONNECTED, 41, 2 * MS, |e| {
        e.flags = FLOW_FLAG_ACCEPTED | FLOW_FLAG_CAPTURE | FLOW_FLAG_EMITTED;
        e.tuple = Tuple { family: AF_INET, sport: 3128, dport: 51000, ..Tuple::default() };
        e.tuple.saddr[..4].copy_from_slice(&[10, 9, 0, 2]);
        e.tuple.daddr[..4].copy_from_slice(&[10, 8, 0, 7]);
        (e.tgid, e.pid, e.comm) = (0, 0, [0; 16]);
    });
    assert!(feed(&mut t, &accepted).is_empty());
    let req = b"CONNECT login.example.test:443 HTTP/1.1\r\n\r\nGET /";
    assert!(feed(&mut t, &chunk(41, DIR_INGRESS, 0, 3 * MS, req)).is_empty());
    let out = feed(
        &mut t,
        &chunk(41, DIR_EGRESS, 0, 4 * MS, b"HTTP/1.1 200 Connection established\r\n\r\n"),
    );
    let hop = out[0].0.clone();
    // The client's node: the connect to the ClusterIP, DNAT'ed to the pod.
    let a = |s: &str| s.parse().expect("addr");
    let client = FlowRecord {
        flow_id: "client-1".into(),
        src: Some(a("10.8.0.7:51000")),
        dst: Some(a("10.96.0.10:3128")),
        dst_actual: Some(a("10.9.0.2:3128")),
        vantage: Some("client".into()),
        ..FlowRecord::default()
    };
    let link = Link::of_connect(&client).expect("client link");
    assert_eq!(Link::of_accepted(&hop), Some(link), "the exact join key");
    assert_eq!(Link::of_accepted(&client), None, "a connect is no accepted end");
    // What the hop's agent answers a peer asking about that link.
    let other = FlowRecord { flow_id: "other".into(), ..hop.clone() };
    let other = FlowRecord { src: Some(a("10.8.0.7:51001")), ..other };
    let history = [Record::Flow(other), Record::Flow(hop.clone())];
    let (got, cut) = select(history.iter(), &link, 64);
    assert!(!cut);
    let ids: Vec<&str> = got
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(f.flow_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [hop.flow_id.as_str()]);
}

#[test]
fn a_hop_relaying_a_header_block_is_seen_so_despite_syn_and_fin_in_bytes_acked() {
    use egress_common::{DIR_EGRESS, FLOW_FLAG_ACCEPTED};
    let mut t = table();
    let hop_socket = |e: &mut FlowEvent| {
        e.flags = FLOW_FLAG_ACCEPTED | FLOW_FLAG_CAPTURE | FLOW_FLAG_EMITTED;
        e.tuple = Tuple { family: AF_INET, sport: 3128, dport: 51002, ..Tuple::default() };
        e.tuple.saddr[..4].copy_from_slice(&[10, 9, 0, 2]);
        e.tuple.daddr[..4].copy_from_slice(&[10, 8, 0, 7]);
        (e.tgid, e.pid, e.comm) = (0, 0, [0; 16]);
    };
    feed(&mut t, &flow(PHASE_CONNECTED, 42, 2 * MS, hop_socket));
    let req = b"CONNECT refused.example.test:443 HTTP/1.1\r\n\r\n";
    feed(&mut t, &chunk(42, DIR_INGRESS, 0, 3 * MS, req));
    // Squid 5.7 relays its parent's 503 header block without the body.
    let head = b"HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\nContent-Length: 3084\r\n\r\n";
    assert!(feed(&mut t, &chunk(42, DIR_EGRESS, 0, 4 * MS, head)).is_empty(), "body to come");
    // At the close the client has acknowledged the SYN-ACK, the header
    // block and the hop's FIN (the hop closed first: FIN_WAIT2, then the
    // client's FIN).
    let out = feed(
        &mut t,
        &flow(PHASE_CLOSED, 42, 9 * MS, |e| {
            hop_socket(e);
            e.oldstate = 5;
            e.bytes_acked = head.len() as u64 + 2;
        }),
    );
    let ev = out[0].1.as_ref().expect("evidence");
    assert_eq!((ev.closed, ev.body_bytes_total), (true, Some(0)), "no body: a relay");
}

mod tls {
    //! The TLS start of tunnels and TLS flows (real captures, see
    //! tests/fixtures/tls/README.md).
    use egress_common::FLOW_FLAG_TLS;

    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/", $name))
        };
    }
    /// openssl s_client, TLS 1.3, `-servername x.test`.
    const HELLO: &[u8] = fixture!("client_openssl_tls13_sni_alpn.bin");
    const SERVER_START: &[u8] = fixture!("server_openssl_tls13_start.bin");
    const ALERT_40: &[u8] = fixture!("server_alert_handshake_failure.bin");
    const REQ: &[u8] = b"CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n";
    const OPENED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

    /// A tunnel that opened and carried a ClientHello: nothing out yet.
    fn opened_with_hello(t: &mut FlowTable, sk: u64) {
        assert!(feed(t, &proxy_connected(sk)).is_empty());
        assert!(feed(t, &chunk(sk, DIR_EGRESS, 0, 3 * MS, REQ)).is_empty());
        assert!(feed(t, &chunk(sk, DIR_INGRESS, 0, 4 * MS, OPENED)).is_empty(), "waits for TLS");
        let hello = chunk(sk, DIR_EGRESS, REQ.len() as u32, 5 * MS, HELLO);
        assert!(feed(t, &hello).is_empty(), "waits for the server's first record");
    }

    fn server(sk: u64, bytes: &[u8]) -> Event {
        chunk(sk, DIR_INGRESS, OPENED.len() as u32, 6 * MS, bytes)
    }

    #[test]
    fn a_handshake_inside_a_tunnel_is_ok_and_names_its_server() {
        let mut t = table();
        opened_with_hello(&mut t, 60);
        let out = feed(&mut t, &server(60, SERVER_START));
        let [(r, Some(ev))] = out.as_slice() else { panic!("{}", out.len()) };
        assert_eq!((r.verdict, r.reason, r.proxy_status), (Verdict::Ok, None, Some(200)));
        assert_eq!((r.sni.as_deref(), r.target.as_deref()), (Some("x.test"), Some("x.test:443")));
        assert_eq!(ev.tls_failure, None);
        // Its close repeats it, with its server name.
        let out = feed(&mut t, &flow(PHASE_CLOSED, 60, 9 * MS, |e| e.tuple = tuple(3128)));
        assert_eq!((out[0].0.sni.as_deref(), out[0].0.quiet), (Some("x.test"), true));
    }

    #[test]
    fn an_alert_inside_a_tunnel_is_tls_failed_not_a_proxy_failure() {
        let mut t = table();
        opened_with_hello(&mut t, 61);
        let out = feed(&mut t, &server(61, ALERT_40));
        let [(r, Some(ev))] = out.as_slice() else { panic!("{}", out.len()) };
        assert_eq!((r.verdict, r.reason), (Verdict::Failed, Some(Reason::TlsFailed)));
        assert_eq!((r.proxy_status, r.sni.as_deref()), (Some(200), Some("x.test")));
        let why = ev.tls_failure.as_deref().expect("evidence");
        assert!(why.contains("handshake_failure (40)") && why.contains("x.test"), "{why}");
        assert_eq!(r.evidence.as_deref(), Some(why));
    }

    #[test]
    fn a_reset_right_after_the_hello_is_tls_failed() {
        let mut t = table();
        opened_with_hello(&mut t, 62);
        let reset = flow(PHASE_CLOSED, 62, 7 * MS, |e| {
            e.tuple = tuple(3128);
            e.flags = FLOW_FLAG_RESET;
        });
        let out = feed(&mut t, &reset);
        assert_eq!(out.len(), 2, "the held record, then the close");
        for (r, _) in &out {
            assert_eq!((r.verdict, r.reason), (Verdict::Failed, Some(Reason::TlsFailed)));
            assert_eq!(r.sni.as_deref(), Some("x.test"));
        }
        assert!(out[0].0.evidence.as_deref().is_some_and(|e| e.contains("reset after")));
        assert!(out[1].0.quiet, "the close repeats the failure");
    }

    #[test]
    fn a_proxy_refusal_stays_a_proxy_failure_whatever_was_pipelined() {
        let mut t = table();
        feed(&mut t, &proxy_connected(63));
        let mut req = REQ.to_vec();
        req.extend_from_slice(HELLO);
        feed(&mut t, &chunk(63, DIR_EGRESS, 0, 3 * MS, &req));
        let denied = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        let out = feed(&mut t, &chunk(63, DIR_INGRESS, 0, 4 * MS, denied));
        let [(r, Some(ev))] = out.as_slice() else { panic!("{}", out.len()) };
        assert_eq!((r.verdict, r.reason), (Verdict::Failed, Some(Reason::ProxyDenied)));
        assert_eq!((r.sni.as_deref(), ev.tls_failure.as_deref()), (None, None));
    }

    #[test]
    fn a_silent_server_is_known_at_the_close() {
        let mut t = table();
        opened_with_hello(&mut t, 64);
        assert!(t.waiting());
        let mut out = Vec::new();
        t.tick(2000 * MS, &mut out);
        let [(r, _)] = out.as_slice() else { panic!("{}", out.len()) };
        assert_eq!((r.verdict, r.sni.as_deref()), (Verdict::Ok, Some("x.test")), "not known yet");
        // Closed with nothing back: the close says the handshake failed.
        let out = feed(&mut t, &flow(PHASE_CLOSED, 64, 3000 * MS, |e| e.tuple = tuple(3128)));
        let r = &out[0].0;
        assert_eq!(
            (r.verdict, r.reason, r.quiet),
            (Verdict::Failed, Some(Reason::TlsFailed), false)
        );
        assert!(r.evidence.as_deref().is_some_and(|e| e.contains("closed after")));
    }

    fn tls_connected(sk: u64) -> Event {
        flow(PHASE_CONNECTED, sk, 2 * MS, |e| {
            e.flags = FLOW_FLAG_CAPTURE | FLOW_FLAG_TLS | FLOW_FLAG_EMITTED;
        })
    }

    #[test]
    fn a_tls_port_flow_waits_for_the_servers_first_record() {
        let mut t = table();
        for (sk, back, verdict) in [
            (70, SERVER_START, Verdict::Ok),
            (71, ALERT_40, Verdict::Failed),
            (72, b"SSH-2.0-OpenSSH_9.2\r\n".as_slice(), Verdict::Failed),
        ] {
            assert!(feed(&mut t, &tls_connected(sk)).is_empty(), "held for its TLS start");
            assert!(feed(&mut t, &chunk(sk, DIR_EGRESS, 0, 3 * MS, HELLO)).is_empty());
            let out = feed(&mut t, &chunk(sk, DIR_INGRESS, 0, 4 * MS, back));
            let [(r, _)] = out.as_slice() else { panic!("{sk}: {}", out.len()) };
            assert_eq!(
                (r.verdict, r.sni.as_deref(), r.proxy_status),
                (verdict, Some("x.test"), None)
            );
            assert_eq!(r.target, None, "{sk}");
            assert_eq!(r.record_mono_ns, 4 * MS, "{sk}: as of the server's first bytes");
        }
        // A TLS port flow whose client did not speak TLS: as it connected.
        feed(&mut t, &tls_connected(73));
        let out = feed(&mut t, &chunk(73, DIR_EGRESS, 0, 3 * MS, b"GET / HTTP/1.1\r\n"));
        assert_eq!((out[0].0.verdict, out[0].0.sni.as_deref()), (Verdict::Ok, None));
        // Nothing sent within the wait: out as it connected.
        feed(&mut t, &tls_connected(75));
        let mut out = Vec::new();
        t.tick(500 * MS, &mut out);
        assert!(out.is_empty(), "within the wait");
        t.tick(1002 * MS, &mut out);
        assert_eq!((out.len(), out[0].0.verdict, out[0].0.sni.as_deref()), (1, Verdict::Ok, None));
        // Nothing sent at all, then a clean close: as it connected.
        feed(&mut t, &tls_connected(74));
        let out = feed(&mut t, &flow(PHASE_CLOSED, 74, 9 * MS, |_| {}));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0.verdict, out[1].0.verdict), (Verdict::Ok, Verdict::Ok));
    }
}

#[test]
fn the_eviction_queue_follows_the_flows_held_not_the_cap() {
    let mut t = FlowTable::new(
        FlowSettings { degraded_retransmits: 3, max_flows: 65_536, answer_wait_ns: 1000 * MS },
        Clock::new(),
    );
    // Proxy flows that open and close one after the other, as a proxy's
    // short requests do: few held at a time, many over the table's life.
    let mut most_held = 0;
    for sk in 1..=20_000u64 {
        feed(&mut t, &proxy_connected(sk));
        most_held = most_held.max(t.held.len());
        feed(&mut t, &flow(PHASE_CLOSED, sk, 9 * MS, |e| e.tuple = tuple(3128)));
        assert!(
            t.order.len() <= 2 * most_held + ORDER_SLACK + 1,
            "{} ids queued, at most {most_held} flows held",
            t.order.len(),
        );
    }
    assert!(t.held.len() < 16, "closed flows are released: {} held", t.held.len());
    assert!(t.order.capacity() <= 8 * ORDER_SLACK, "capacity {}", t.order.capacity());
}
