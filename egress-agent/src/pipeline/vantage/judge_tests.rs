//! Unit tests of `judge` (a file of their own: the module is long).
use super::*;
use crate::pipeline::vantage::answer::parse_answer;
use crate::pipeline::vantage::reassembly::Reassembly;

fn hop(name: &str, via: &[&str]) -> HopIdentity {
    HopIdentity {
        name: name.into(),
        via_names: via.iter().map(|s| s.to_string()).collect(),
        tls_sni: false,
    }
}

/// The production shape: gke-squid (pod) → gce-proxy (VM) → internet.
fn prod() -> Vec<HopIdentity> {
    vec![
        hop("gke-squid", &["squid-7d9f.intra-proxy"]),
        hop("gce-proxy", &["gce-proxy.internal", "egress-gw"]),
    ]
}

fn answer(head: &str, body: &str, closed: bool, ms: f64) -> ClientVerdict {
    answer_on(&prod(), head, body, closed, ms)
}

fn answer_on(
    chain: &[HopIdentity],
    head: &str,
    body: &str,
    closed: bool,
    ms: f64,
) -> ClientVerdict {
    let a = parse_answer(head.as_bytes()).expect("answer");
    let f = ClientFacts {
        answer: Some(&a),
        body: body.as_bytes(),
        body_bytes_total: Some(u64::try_from(body.len()).unwrap_or(0)),
        closed: Some(closed),
        answer_ms: Some(ms),
        ..ClientFacts::default()
    };
    judge_client(chain, &f)
}

fn at(v: &ClientVerdict) -> (Verdict, Option<&str>, Option<Reason>) {
    (v.verdict, v.failed_hop.as_deref(), v.reason)
}

#[test]
fn client_connect_failures_blame_the_hop_it_went_to() {
    let c = prod();
    for (errno, r) in [
        (111, Reason::Refused),
        (110, Reason::Timeout),
        (113, Reason::Unreachable),
        (101, Reason::Unreachable),
        (22, Reason::Unreachable),
        (13, Reason::Unreachable),
        (100, Reason::Unreachable),
        (112, Reason::Unreachable),
        (104, Reason::Reset),
    ] {
        let f = ClientFacts {
            peer: Some("10.96.0.10:3128"),
            connect: ConnectOutcome::Failed { errno, reason: None },
            ..ClientFacts::default()
        };
        let v = judge_client(&c, &f);
        assert_eq!(at(&v), (Verdict::Failed, Some("gke-squid"), Some(r)), "errno {errno}");
        assert!(!v.vantage_blind);
        if errno == 111 {
            assert_eq!(v.evidence, "connect to 10.96.0.10:3128 refused (errno 111)");
        }
    }
    let f = ClientFacts {
        connect: ConnectOutcome::Failed { errno: 0, reason: Some(Reason::Timeout) },
        client_hop: 1,
        ..ClientFacts::default()
    };
    let v = judge_client(&c, &f);
    assert_eq!(
        (at(&v), v.evidence.as_str()),
        (
            (Verdict::Failed, Some("gce-proxy"), Some(Reason::Timeout)),
            "connect to gce-proxy timeout (no errno)"
        )
    );
    let f = ClientFacts {
        connect: ConnectOutcome::Failed { errno: 99, reason: None },
        ..ClientFacts::default()
    };
    assert_eq!(judge_client(&c, &f).reason, Some(Reason::Other));
}

#[test]
fn no_answer_is_unknown_never_failed() {
    let v = judge_client(&prod(), &ClientFacts { closed: Some(true), ..ClientFacts::default() });
    assert_eq!(
        (v.verdict, v.failed_hop, v.reason, v.evidence.as_str(), v.vantage_blind),
        (Verdict::Unknown, None, None, "no proxy answer seen", true)
    );
    assert_eq!(judge_client(&prod(), &ClientFacts::default()).evidence, "no proxy answer seen yet");
    let interim = parse_answer(b"HTTP/1.1 100 Continue\r\n\r\n").expect("answer");
    let v = judge_client(
        &prod(),
        &ClientFacts { answer: Some(&interim), closed: Some(true), ..ClientFacts::default() },
    );
    assert_eq!(v.verdict, Verdict::Unknown);
    assert_eq!(
        (
            Verdict::Unknown.as_str(),
            serde_json::to_string(&Verdict::Unknown).unwrap_or_default().as_str()
        ),
        ("unknown", "\"unknown\"")
    );
}

#[test]
fn a_split_status_line_is_not_known_until_complete_then_headers_decide() {
    let c = prod();
    let mut r = Reassembly::default();
    let chunks: [&[u8]; 5] = [
        b"HTTP/1.1 40",
        b"3 Forbidden\r\n",
        b"Server: squid/5.7\r\nVia: 1.1 gce-proxy.internal (squid/5.7)\r\n",
        b"Content-Length: 4\r\n\r\n",
        b"deny",
    ];
    let mut seen = Vec::new();
    let mut at_ = 0u32;
    for ch in chunks {
        r.push(at_, ch);
        at_ += u32::try_from(ch.len()).unwrap_or(0);
        let a = parse_answer(r.contiguous());
        let f = ClientFacts { answer: a.as_ref(), body: r.body(), ..ClientFacts::default() };
        let v = judge_client(&c, &f);
        seen.push((v.verdict, v.failed_hop, v.reason));
    }
    let d = Some(Reason::ProxyDenied);
    assert_eq!(seen[0], (Verdict::Unknown, None, None), "half a status line is not a failure");
    assert_eq!(seen[1], (Verdict::Failed, None, d), "status known, maker not yet: no hop named");
    assert_eq!(seen[2], (Verdict::Failed, Some("gce-proxy".into()), d));
    assert_eq!(seen[4], (Verdict::Failed, Some("gce-proxy".into()), d));
}

#[test]
fn ok_is_blind_and_notes_what_it_saw() {
    let v = answer(
        "HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.71 (Debian)\r\n\r\n",
        "",
        false,
        3200.0,
    );
    assert_eq!((v.verdict, v.failed_hop.as_deref(), v.vantage_blind), (Verdict::Ok, None, true));
    assert!(
        v.evidence.contains("gke-squid answered itself and may have bypassed gce-proxy"),
        "{}",
        v.evidence
    );
    assert!(v.evidence.contains("answered after 3.2 s"), "{}", v.evidence);
    let lone = answer_on(
        &prod()[..1],
        "HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
        "",
        false,
        2.0,
    );
    assert!(!lone.evidence.contains("bypassed"), "{}", lone.evidence);
    let a = parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n").expect("answer");
    let v = judge_client(
        &prod(),
        &ClientFacts { answer: Some(&a), retransmits: 2, ..ClientFacts::default() },
    );
    assert!(v.evidence.contains("client leg retransmits: 2"));
}

#[test]
fn envoy_proxy_status() {
    let ps = |p: &str, ms| {
        answer(
            &format!(
                "HTTP/1.1 503 Service Unavailable\r\nserver: envoy\r\nproxy-status: {p}\r\ncontent-length: 5\r\n\r\n"
            ),
            "upstr",
            true,
            ms,
        )
    };
    let timed_out = "egress-gw; error=connection_refused; details=\"upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_timed_out}\"";
    let v = ps(timed_out, 10.0);
    assert_eq!(
        (at(&v), v.reason_inferred),
        ((Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)), false)
    );
    assert!(
        v.evidence.starts_with(
            "Proxy-Status: egress-gw; error=connection_refused; details=\"upstream_reset"
        ),
        "{}",
        v.evidence
    );
    let v = ps("egress-gw; error=connection_refused", 3100.0);
    assert_eq!(
        (at(&v), v.reason_inferred),
        ((Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)), true)
    );
    assert!(v.evidence.contains("no errno; answered after 3.1 s"), "{}", v.evidence);
    let v = ps("egress-gw; error=connection_refused", 4.0);
    assert_eq!(
        (at(&v), v.reason_inferred),
        ((Verdict::Failed, Some(INTERNET), Some(Reason::Refused)), true)
    );
    assert_eq!(
        at(&ps("egress-gw; error=dns_error; rcode=NXDOMAIN", 1.0)),
        (Verdict::Failed, Some("gce-proxy"), Some(Reason::DnsFailed))
    );
    assert_eq!(
        at(&ps("egress-gw; error=http_request_denied", 1.0)),
        (Verdict::Failed, Some("gce-proxy"), Some(Reason::ProxyDenied))
    );
    assert_eq!(
        at(&ps("egress-gw; error=destination_ip_unroutable", 1.0)),
        (Verdict::Failed, Some(INTERNET), Some(Reason::Unreachable))
    );
    // Hop 1 says its parent is unavailable (and hop 2 is not blamed for hop 1's words).
    assert_eq!(
        at(&ps("squid-7d9f.intra-proxy; error=destination_unavailable", 1.0)),
        (Verdict::Failed, Some("gce-proxy"), Some(Reason::ProxyUpstreamError))
    );
    assert_eq!(
        at(&ps("egress-gw; error=connection_timeout, squid-7d9f.intra-proxy", 1.0)),
        (Verdict::Failed, Some(INTERNET), Some(Reason::Timeout))
    );
    // An unconfigured name is reported, not guessed at.
    let v = ps("envoy; error=connection_timeout", 1.0);
    assert!(v.evidence.contains("names not in any hop's via_names: envoy"), "{}", v.evidence);
}

#[test]
fn three_hops_a_relay_proves_deeper_not_how_deep() {
    let c = vec![hop("h1", &["h1.test"]), hop("h2", &["h2.test"]), hop("h3", &["h3.test"])];
    let head = "HTTP/1.1 503 Service Unavailable\r\nServer: squid/5.7\r\nContent-Length: 3084\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n";
    let v = answer_on(&c, head, "", true, 1.0);
    assert_eq!((at(&v), v.vantage_blind), ((Verdict::Failed, None, Some(Reason::Refused)), true));
    assert!(
        v.evidence
            .contains("cannot tell which hop: h3 or internet (h1 and hops before it are cleared)"),
        "{}",
        v.evidence
    );
    let v = answer_on(&c, head, "Generated by h2.test (squid/5.7)", true, 1.0);
    assert_eq!(at(&v), (Verdict::Failed, Some("h3"), Some(Reason::Refused)));
    let v = answer_on(
        &c,
        "HTTP/1.1 500 Internal Server Error\r\nX-Squid-Error: ERR_CANNOT_FORWARD 0\r\nContent-Length: 9\r\n\r\n",
        "by h2.test",
        true,
        1.0,
    );
    assert_eq!(
        at(&v),
        (Verdict::Failed, Some("h3"), Some(Reason::ProxyUpstreamError)),
        "no live parent at h2"
    );
    let v = answer_on(
        &c,
        "HTTP/1.1 504 Gateway Timeout\r\nVia: 1.1 h3.test, 1.1 h1.test\r\nContent-Length: 1\r\n\r\n",
        "x",
        true,
        1.0,
    );
    assert_eq!(at(&v), (Verdict::Failed, Some(INTERNET), Some(Reason::Timeout)));
}

#[test]
fn odd_chains_never_panic() {
    let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\n")
        .expect("answer");
    for chain in [vec![], prod()] {
        for near in [0, 1, 2, 9, usize::MAX] {
            for (total, closed) in [(None, None), (Some(0), Some(true)), (Some(10), Some(true))] {
                let f = ClientFacts {
                    client_hop: near,
                    answer: Some(&a),
                    body_bytes_total: total,
                    closed,
                    ..ClientFacts::default()
                };
                let v = judge_client(&chain, &f);
                assert_eq!(v.verdict, Verdict::Failed);
                assert!(!v.evidence.is_empty());
                assert!(v.failed_hop.is_some() || v.vantage_blind);
            }
        }
    }
}

/// Whatever the answer says, a hop before the deepest hop it names is never blamed.
#[test]
fn never_blame_a_hop_the_evidence_clears() {
    let c = vec![hop("h1", &["h1.test"]), hop("h2", &["h2.test"]), hop("h3", &["h3.test"])];
    let statuses = [
        "403 Forbidden",
        "407 Proxy Authentication Required",
        "500 Internal Server Error",
        "502 Bad Gateway",
        "503 Service Unavailable",
        "504 Gateway Timeout",
        "404 No such domain",
        "400 Bad Request",
    ];
    let extras = [
        "",
        "X-Squid-Error: ERR_CONNECT_FAIL 111\r\n",
        "X-Squid-Error: ERR_CANNOT_FORWARD 0\r\n",
        "X-Squid-Error: ERR_ACCESS_DENIED 0\r\n",
        "Proxy-Status: h3.test; error=dns_error\r\n",
        "Server: tinyproxy/1.11.1\r\n",
        "Content-Length: 3000\r\n",
    ];
    let mut n = 0;
    for s in statuses {
        for named in 0..3 {
            for e in extras {
                for body in ["", "Generated by h1.test"] {
                    let head = format!(
                        "HTTP/1.1 {s}\r\nVia: 1.1 h{}.test (squid/5.7)\r\n{e}\r\n",
                        named + 1
                    );
                    let v = answer_on(&c, &head, body, true, 5.0);
                    let idx = v
                        .failed_hop
                        .as_deref()
                        .map(|h| c.iter().position(|x| x.name == h).unwrap_or(3));
                    assert!(
                        idx.is_none_or(|i| i >= named),
                        "{head:?} {body:?} blamed {:?}",
                        v.failed_hop
                    );
                    assert!(v.failed_hop.is_some() || v.vantage_blind);
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 8 * 3 * 7 * 2);
}
