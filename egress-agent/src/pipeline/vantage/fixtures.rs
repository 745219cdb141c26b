//! The lab table: every capture in `tests/fixtures/proxy-answers/` (squid
//! 5.7, tinyproxy 1.11.1, privoxy 3.0.34, apache 2.4 alone and as hop 1 in
//! front of a Squid parent; REPORT.md there) replayed through reassembly →
//! parse → client judgement, with the chain and `via_names` of that lab.
//!
//! Each capture is fed as the wire segments it arrived in (or the client's
//! `recv()` sizes where the segment list is not this connection's), then
//! again reversed with every chunk retransmitted, then as overlapping
//! chunks; all three must give the same bytes and the same verdict. The
//! capture bound is the agent's 4 KiB (privoxy's 8 KB pages are cut).
//! `Inferred` rows: the answer has no errno, only timing decides, and for
//! some the truth differs (noted): the client cannot know better.
use crate::records::{Reason, Verdict};

use super::answer::{ProxyAnswer, parse_answer, parse_via};
use super::judge::{ClientFacts, ClientVerdict, judge_client};
use super::maker::HopIdentity;
use super::reassembly::{DEFAULT_LIMIT, Reassembly};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Exp {
    Ok,
    /// Failed at the hop, the reason stated by the answer.
    At(&'static str, Reason),
    /// Failed at the hop, the reason inferred from the answer's latency.
    Inferred(&'static str, Reason),
    /// Failed, but the client cannot tell which hop: none is named.
    Blind(Reason),
}

struct Row {
    name: &'static str,
    txt: &'static [u8],
    segs: &'static str,
    exp: Exp,
}

macro_rules! rows {
    ($($name:literal => $exp:expr;)*) => {
        &[$(Row {
            name: $name,
            txt: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proxy-answers/", $name, ".txt")),
            segs: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proxy-answers/", $name, ".segments")),
            exp: $exp,
        },)*]
    };
}

use Exp::*;
use Reason::*;

const INTERNET: &str = "internet";

/// case → expected. Truth noted where the client's answer cannot show it.
const ROWS: &[Row] = rows! {
    // Squid alone (the hop-2 instance): errno in X-Squid-Error.
    "squid-a-success" => Ok;
    "squid-b-acl-denied" => At("hop2-squid", ProxyDenied);
    "squid-b2-port-not-allowed" => At("hop2-squid", ProxyDenied);
    "squid-c-refused" => At(INTERNET, Refused);
    "squid-d-timeout" => At(INTERNET, Timeout);
    "squid-e-unreach-route" => At(INTERNET, Unreachable);
    "squid-e2-icmp-host-unreach" => At(INTERNET, Unreachable);
    "squid-e3-icmp-net-unreach" => At(INTERNET, Unreachable);
    "squid-e4-no-route" => At(INTERNET, Unreachable);
    "squid-e5-blackhole-route" => At(INTERNET, Unreachable); // errno 22
    "squid-e6-prohibit-route" => At(INTERNET, Unreachable); // errno 13
    "squid-f-dns-nxdomain" => At("hop2-squid", DnsFailed); // ERR_CANNOT_FORWARD at the last hop
    "squid-f2-dns-timeout" => At("hop2-squid", DnsFailed);
    // Squid → Squid: hop 1's own answers carry a body naming it; relays are header-only.
    "squidchain-a-success" => Ok;
    "squidchain-b-hop1-acl-denied" => At("hop1-squid", ProxyDenied);
    "squidchain-g1a-parent-refused-peer-alive" => At("hop2-squid", Refused);
    "squidchain-g1b-parent-refused-peer-marked-dead" => At("hop2-squid", ProxyUpstreamError); // no live parent: the cause is not in the answer
    "squidchain-g1c-parent-refused-down-since-start" => At("hop2-squid", ProxyUpstreamError);
    "squidchain-g2a-parent-timeout-peer-alive" => At("hop2-squid", Timeout);
    "squidchain-g2c-parent-timeout-down-since-start" => At("hop2-squid", ProxyUpstreamError);
    "squidchain-g3a-parent-icmp-host-unreach-peer-alive" => At("hop2-squid", Unreachable);
    "squidchain-g3c-parent-unreach-down-since-start" => At("hop2-squid", ProxyUpstreamError);
    "squidchain-h-parent-acl-denied" => At("hop2-squid", ProxyDenied);
    "squidchain-i1-parent-origin-refused" => At(INTERNET, Refused);
    "squidchain-i2-parent-origin-timeout" => At(INTERNET, Timeout);
    "squidchain-i3-parent-origin-unreach" => At(INTERNET, Unreachable);
    "squidchain-i4-parent-dns-nxdomain" => At("hop2-squid", DnsFailed);
    // Squid → tinyproxy: Squid relays tinyproxy's header block (no Content-Length,
    // no body, no name): hop 1's own body-less answer or a relay? Undecidable.
    "squid-over-tinyproxy-a-success" => Ok;
    "squid-over-tinyproxy-b-hop1-acl-denied" => At("hop1-squid", ProxyDenied);
    "squid-over-tinyproxy-h-parent-acl-filtered" => Blind(ProxyDenied); // truth: hop2-tiny denied
    "squid-over-tinyproxy-i1-parent-origin-refused" => Blind(ProxyUpstreamError); // truth: internet refused
    "squid-over-tinyproxy-i4-parent-dns-nxdomain" => Blind(ProxyUpstreamError); // truth: hop2-tiny DNS
    // tinyproxy alone: one answer for refused/timeout/unreachable/DNS.
    "tinyproxy-a-success" => Ok;
    "tinyproxy-b-acl-filtered" => At("hop1-tiny", ProxyDenied);
    "tinyproxy-b2-port-not-allowed" => At("hop1-tiny", ProxyDenied);
    "tinyproxy-b3-client-not-allowed" => At("hop1-tiny", ProxyDenied);
    "tinyproxy-c-refused" => Inferred(INTERNET, Refused);
    "tinyproxy-d-timeout" => Inferred(INTERNET, Timeout); // 5.06 s
    "tinyproxy-e-unreach-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "tinyproxy-e2-icmp-host-unreach" => Inferred(INTERNET, Timeout); // truth: unreachable (first ICMP rate-limited, 1.0 s)
    "tinyproxy-e4-no-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "tinyproxy-f-dns-nxdomain" => Inferred(INTERNET, Refused); // truth: DNS at hop1-tiny (byte-identical to c)
    // tinyproxy → Squid: tinyproxy's Via on answers Squid made; Server/X-Squid-Error/body tell.
    "tinychain-a-success" => Ok;
    "tinychain-b-hop1-acl-filtered" => At("hop1-tiny", ProxyDenied);
    "tinychain-g1-parent-refused" => Inferred("hop2-squid", Refused);
    "tinychain-g2-parent-timeout" => Inferred("hop2-squid", Timeout); // 5.2 s
    "tinychain-g3-parent-unreach-route" => Inferred("hop2-squid", Refused); // truth: unreachable
    "tinychain-h-parent-acl-denied" => At("hop2-squid", ProxyDenied);
    "tinychain-i1-parent-origin-refused" => At(INTERNET, Refused);
    "tinychain-i2-parent-origin-timeout" => At(INTERNET, Timeout);
    "tinychain-i3-parent-origin-unreach" => At(INTERNET, Unreachable);
    "tinychain-i4-parent-dns-nxdomain" => At("hop2-squid", DnsFailed);
    // privoxy alone: no Server, no Via; reason phrases; 8 KB pages cut at 4 KiB.
    "privoxy-a-success" => Ok;
    "privoxy-b-acl-blocked" => At("hop1-privoxy", ProxyDenied);
    "privoxy-b2-port-not-allowed" => At("hop1-privoxy", ProxyDenied);
    "privoxy-c-refused" => Inferred(INTERNET, Refused);
    "privoxy-d-timeout" => Inferred(INTERNET, Timeout); // 7.1 s
    "privoxy-e-unreach-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "privoxy-e2-icmp-host-unreach" => Inferred(INTERNET, Refused); // truth: unreachable
    "privoxy-e4-no-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "privoxy-f-dns-nxdomain" => At("hop1-privoxy", DnsFailed); // 404 No such domain
    // privoxy → Squid: the parent's answer byte for byte (names in its headers or body).
    "privoxychain-a-success" => Ok;
    "privoxychain-b-hop1-acl-blocked" => At("hop1-privoxy", ProxyDenied);
    "privoxychain-g1-parent-refused" => Inferred("hop2-squid", Refused);
    "privoxychain-g2-parent-timeout" => Inferred("hop2-squid", Timeout);
    "privoxychain-g3-parent-unreach-route" => Inferred("hop2-squid", Refused); // truth: unreachable
    "privoxychain-h-parent-acl-denied" => At("hop2-squid", ProxyDenied);
    "privoxychain-i1-parent-origin-refused" => At(INTERNET, Refused);
    "privoxychain-i2-parent-origin-timeout" => At(INTERNET, Timeout);
    "privoxychain-i3-parent-origin-unreach" => At(INTERNET, Unreachable);
    "privoxychain-i4-parent-dns-nxdomain" => At("hop2-squid", DnsFailed);
    // apache alone: generic 503 for every connect failure; DNS in a 502 body.
    "apache-a-success" => Ok;
    "apache-b-acl-denied" => At("hop1-apache", ProxyDenied);
    "apache-b2-port-not-allowed" => At("hop1-apache", ProxyDenied);
    "apache-b3-client-not-allowed" => At("hop1-apache", ProxyDenied);
    "apache-c-refused" => Inferred(INTERNET, Refused);
    "apache-d-timeout" => Inferred(INTERNET, Timeout); // 3.0 s
    "apache-e-unreach-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "apache-e2-icmp-host-unreach" => Inferred(INTERNET, Refused); // truth: unreachable
    "apache-e4-no-route" => Inferred(INTERNET, Refused); // truth: unreachable
    "apache-f-dns-nxdomain" => At("hop1-apache", DnsFailed);
    // apache → Squid: parent answers byte for byte; a dead parent is bypassed (DIRECT).
    "apachechain-a-success" => Ok;
    "apachechain-a2-success-with-direct-blocked" => Ok;
    "apachechain-b-hop1-acl-denied" => At("hop1-apache", ProxyDenied);
    "apachechain-g1-parent-refused-fell-back-direct" => Ok; // Proxy-agent: bypass noted
    "apachechain-g1b-parent-refused-direct-blocked" => Inferred("hop2-squid", Refused);
    "apachechain-g2-parent-timeout-fell-back-direct" => Ok;
    "apachechain-g2b-parent-timeout-direct-blocked" => Inferred("hop2-squid", Timeout);
    "apachechain-g3-parent-unreach-route-fell-back-direct" => Ok;
    "apachechain-g3b-parent-unreach-direct-blocked" => Inferred("hop2-squid", Refused); // truth: unreachable
    "apachechain-h-parent-acl-denied" => At("hop2-squid", ProxyDenied);
    "apachechain-i1-parent-origin-refused" => At(INTERNET, Refused);
    "apachechain-i2-parent-origin-timeout" => At(INTERNET, Timeout);
    "apachechain-i3-parent-origin-unreach" => At(INTERNET, Unreachable);
    "apachechain-i4-parent-dns-nxdomain" => At("hop2-squid", DnsFailed);
};

fn hop(name: &str, via: &[&str]) -> HopIdentity {
    HopIdentity {
        name: name.into(),
        via_names: via.iter().map(|s| s.to_string()).collect(),
        tls_sni: false,
    }
}

/// The lab's chain for a capture, by its prefix. A lone proxy is a one-hop
/// chain whose upstream is `internet`.
fn chain(name: &str) -> Vec<HopIdentity> {
    let squid2 = hop("hop2-squid", &["hop2-squid.test"]);
    let (squid1, tiny1) =
        (hop("hop1-squid", &["hop1-squid.test"]), hop("hop1-tiny", &["hop1-tiny.test"]));
    let (privoxy1, apache1) = (hop("hop1-privoxy", &[]), hop("hop1-apache", &["hop1-apache.test"]));
    let prefix = name.rsplit_once('-').map_or(name, |(p, _)| p);
    match name.split('-').next().unwrap_or_default() {
        "squidchain" => vec![squid1, squid2],
        // The tinyproxy parent's own answers carry no name: its via_names do not matter.
        "squid" if prefix.starts_with("squid-over-tinyproxy") => {
            vec![squid1, hop("hop2-tiny", &[])]
        }
        "squid" => vec![squid2],
        "tinychain" => vec![tiny1, squid2],
        "tinyproxy" => vec![tiny1],
        "privoxychain" => vec![privoxy1, squid2],
        "privoxy" => vec![privoxy1],
        "apachechain" => vec![apache1, squid2],
        _ => vec![apache1],
    }
}

fn field<'a>(segs: &'a str, key: &str) -> &'a str {
    segs.split(key)
        .nth(1)
        .map_or("", |r| r.split(['\n', ' ']).find(|w| !w.is_empty()).unwrap_or(""))
}

fn list(segs: &str, key: &str) -> Vec<f64> {
    let line = segs.lines().find(|l| l.starts_with(key)).unwrap_or_default();
    let inner = line.rsplit_once('[').and_then(|(_, r)| r.split_once(']')).map_or("", |(l, _)| l);
    inner.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// The chunks a capture arrived in: wire segments, unless they are not this
/// connection's (then the client's recv() sizes). The 13-byte tunnel echo of
/// a success is not part of the answer.
fn chunks(r: &Row) -> Vec<usize> {
    let sizes = |k| list(r.segs, k).iter().map(|&x| x as usize).collect::<Vec<usize>>();
    let wire = sizes("wire_segments_proxy_to_client");
    let sum: usize = wire.iter().sum();
    if sum == r.txt.len() {
        return wire;
    }
    if sum == r.txt.len() + 13 && wire.last() == Some(&13) {
        return wire[..wire.len() - 1].to_vec();
    }
    let recv = sizes("recv_sizes");
    assert_eq!(recv.iter().sum::<usize>(), r.txt.len(), "{}: recv sizes", r.name);
    recv
}

fn feed(order: &[(usize, usize)], txt: &[u8], limit: usize) -> Reassembly {
    let mut re = Reassembly::new(limit);
    for &(a, b) in order {
        re.push(u32::try_from(a).unwrap_or(u32::MAX), &txt[a..b]);
    }
    re
}

fn judge_row(r: &Row, re: &Reassembly) -> (Option<ProxyAnswer>, ClientVerdict) {
    let total: u64 = field(r.segs, "total_bytes:").parse().unwrap_or(0);
    let header: u64 = field(r.segs, "header_block_bytes:").parse().unwrap_or(0);
    let answer = parse_answer(re.contiguous());
    let facts = ClientFacts {
        answer: answer.as_ref(),
        body: re.body(),
        body_bytes_total: Some(total - header),
        closed: Some(field(r.segs, "closed_by_proxy(EOF):") == "True"),
        answer_ms: list(r.segs, "recv_times_s").first().map(|s| s * 1000.0),
        ..ClientFacts::default()
    };
    let v = judge_client(&chain(r.name), &facts);
    (answer, v)
}

fn replay(r: &Row, limit: usize) -> ClientVerdict {
    let mut spans = Vec::new();
    let mut at = 0;
    for n in chunks(r) {
        spans.push((at, at + n));
        at += n;
    }
    let in_order = feed(&spans, r.txt, limit);
    let retransmitted: Vec<(usize, usize)> = spans.iter().rev().flat_map(|&s| [s, s]).collect();
    let overlapping: Vec<(usize, usize)> =
        spans.iter().map(|&(a, b)| (a.saturating_sub(5), b)).collect();
    let want = &r.txt[..r.txt.len().min(limit)];
    let mut verdicts = Vec::new();
    for re in [in_order, feed(&retransmitted, r.txt, limit), feed(&overlapping, r.txt, limit)] {
        assert_eq!(re.contiguous(), want, "{}: reassembled bytes", r.name);
        let (a, v) = judge_row(r, &re);
        if let Some(a) = a.filter(|a| a.header_complete) {
            assert_eq!(
                Some(a.header_len),
                re.header_len(),
                "{}: parser and reassembly agree on the header block",
                r.name
            );
        }
        verdicts.push(v);
    }
    assert!(
        verdicts.windows(2).all(|w| w[0] == w[1]),
        "{}: arrival order changed the verdict",
        r.name
    );
    verdicts.remove(0)
}

fn check(exp: Exp, v: &ClientVerdict) -> bool {
    let failed = v.verdict == Verdict::Failed;
    match exp {
        Ok => v.verdict == Verdict::Ok && v.failed_hop.is_none() && v.reason.is_none(),
        At(h, r) => {
            failed
                && v.failed_hop.as_deref() == Some(h)
                && v.reason == Some(r)
                && !v.reason_inferred
        }
        Inferred(h, r) => {
            failed && v.failed_hop.as_deref() == Some(h) && v.reason == Some(r) && v.reason_inferred
        }
        Blind(r) => failed && v.failed_hop.is_none() && v.reason == Some(r) && v.vantage_blind,
    }
}

#[test]
fn lab_table_client_vantage() {
    let mut bad = Vec::new();
    for r in ROWS {
        let v = replay(r, DEFAULT_LIMIT);
        println!(
            "{:<55} {:<9} {:<11} {:<22} {}",
            r.name,
            v.verdict.as_str(),
            v.failed_hop.as_deref().unwrap_or("-"),
            v.reason.map_or("-", |r| r.as_str()),
            v.evidence
        );
        if !check(r.exp, &v) {
            bad.push(format!("{}: want {:?}, got {:?}", r.name, r.exp, v));
        }
        assert_eq!(v.vantage_blind, matches!(r.exp, Ok | Blind(_)), "{}: blind flag", r.name);
        assert!(!v.evidence.is_empty());
    }
    assert!(bad.is_empty(), "{} rows differ:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn evidence_quotes_what_decided() {
    let ev = |name: &str| {
        ROWS.iter()
            .find(|r| r.name == name)
            .map(|r| replay(r, DEFAULT_LIMIT).evidence)
            .unwrap_or_default()
    };
    assert!(
        ev("squidchain-g2a-parent-timeout-peer-alive")
            .starts_with("X-Squid-Error: ERR_CONNECT_FAIL 110 from hop1-squid (named in the body)")
    );
    assert!(ev("squidchain-i1-parent-origin-refused").contains("from hop2-squid (no name in the answer; header block relayed by hop1-squid without its body: Content-Length 3084, 0 bytes received)"));
    assert!(
        ev("tinychain-i1-parent-origin-refused").contains("from hop2-squid (named in the body)")
    );
    assert!(
        ev("tinychain-h-parent-acl-denied")
            .contains("from hop2-squid (Via, X-Cache, named in the body)")
    );
    assert!(ev("tinyproxy-d-timeout").contains("answered after 5.1 s"));
    assert!(
        ev("apachechain-g1-parent-refused-fell-back-direct")
            .contains("may have bypassed hop2-squid")
    );
    assert!(ev("squidchain-g1c-parent-refused-down-since-start").contains("no live parent"));
    assert!(
        ev("squid-over-tinyproxy-h-parent-acl-filtered")
            .contains("cannot tell which hop: hop1-squid or hop2-tiny")
    );
}

/// Every file in the fixture directory is used by a test here.
#[test]
fn every_fixture_is_used() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proxy-answers");
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let stem = f.trim_end_matches(".txt").trim_end_matches(".segments");
        let used = ["REPORT.md", "INDEX.tsv", "UPSTREAM-CONNECT-REQUESTS.txt"]
            .contains(&f.as_str())
            || ROWS.iter().any(|r| r.name == stem);
        assert!(used, "unused fixture {f}");
        n += 1;
    }
    assert_eq!(n, ROWS.len() * 2 + 3);
}

/// The parser agrees with the colleague's independent INDEX.tsv on every capture.
#[test]
fn parser_matches_the_index() {
    let index = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/proxy-answers/INDEX.tsv"
    ));
    let mut rows = 0;
    for line in index.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        let r = ROWS
            .iter()
            .find(|r| r.name == c[0])
            .unwrap_or_else(|| panic!("{} not in the table", c[0]));
        let a = parse_answer(r.txt).unwrap_or_else(|| panic!("{}: no answer", r.name));
        let opt = |s: &str| (s != "-").then(|| s.to_string());
        assert_eq!(format!("{} {}", a.version, a.status_line()), c[1], "{}", r.name);
        assert_eq!(a.server, opt(c[2]), "{}", r.name);
        let via: Vec<String> = a
            .via
            .iter()
            .map(|v| {
                format!(
                    "{} {}{}",
                    v.protocol,
                    v.received_by,
                    v.comment.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(opt(&via.join(", ")).filter(|v| !v.is_empty()), opt(c[3]), "{}", r.name);
        let from: Vec<String> = [c[4], c[5]]
            .iter()
            .filter_map(|v| v.rsplit_once(" from ").map(|(_, h)| h.to_string()))
            .collect();
        assert_eq!(a.cache_from, from, "{}", r.name);
        assert_eq!(
            a.squid_error.map(|e| format!("{} {}", e.code, e.errno.unwrap_or(-1))),
            opt(c[6]),
            "{}",
            r.name
        );
        assert_eq!((a.proxy_status.is_empty(), c[7]), (true, "-"), "{}", r.name);
        assert_eq!(a.proxy_agent, opt(c[8]), "{}", r.name);
        assert_eq!(a.content_length.map(|n| n.to_string()), opt(c[10]), "{}", r.name);
        assert_eq!(a.header_len.to_string(), field(r.segs, "header_block_bytes:"), "{}", r.name);
        rows += 1;
    }
    assert_eq!(rows, ROWS.len());
}

/// Hop 1's Via as its parent sees it (what each proxy writes upstream).
#[test]
fn upstream_via_names() {
    let reqs = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/proxy-answers/UPSTREAM-CONNECT-REQUESTS.txt"
    ));
    let mut seen = Vec::new();
    for via in reqs.split("\\r\\n").filter_map(|l| l.strip_prefix("Via: ")) {
        let mut v = Vec::new();
        parse_via(via, &mut v);
        seen.extend(v.iter().map(|e| (e.host().to_string(), e.product().map(str::to_string))));
    }
    assert_eq!(
        seen,
        [
            ("hop1-squid.test".to_string(), Some("squid/5.7".to_string())),
            ("hop1-tiny.test".to_string(), Some("tinyproxy/1.11.1".to_string()))
        ]
    );
}

/// A 1 KiB bound (the issue's first idea) loses Squid's "Generated … by
/// NAME" (≈3.3 KB in). Only answers a byte-for-byte hop 1 (privoxy, apache)
/// passed on from the parent then lose their maker; keep the bound at 4 KiB.
#[test]
fn a_1k_bound_loses_only_names_deep_in_relayed_bodies() {
    let mut changed: Vec<&str> =
        ROWS.iter().filter(|r| !check(r.exp, &replay(r, 1024))).map(|r| r.name).collect();
    changed.sort_unstable();
    let want = [
        "apachechain-i1-parent-origin-refused",
        "apachechain-i2-parent-origin-timeout",
        "apachechain-i3-parent-origin-unreach",
        "apachechain-i4-parent-dns-nxdomain",
        "privoxychain-i1-parent-origin-refused",
        "privoxychain-i2-parent-origin-timeout",
        "privoxychain-i3-parent-origin-unreach",
        "privoxychain-i4-parent-dns-nxdomain",
    ];
    assert_eq!(changed, want);
}
