//! `explain`: attempts, conclusions and rendering over records.
use super::*;
use crate::records::LegSummary;

fn chain(
    t: &str,
    legs: Vec<LegSummary>,
    verdict: Verdict,
    hop: Option<&str>,
    reason: Option<Reason>,
    status: Option<u16>,
) -> Record {
    Record::Chain(ChainRecord {
        time: format!("2026-11-21T10:{t}.000Z"),
        chain_id: t.into(),
        target: Some("login.example.test:443".into()),
        namespace: Some("app".into()),
        pod: Some("web-1".into()),
        comm: "curl".into(),
        legs,
        verdict,
        failed_hop: hop.map(str::to_string),
        reason,
        proxy_status: status,
        ..ChainRecord::default()
    })
}
fn leg(hop: &str, verdict: Verdict, status: Option<u16>) -> LegSummary {
    LegSummary {
        hop: hop.into(),
        leg: format!("x->{hop}"),
        verdict,
        proxy_status: status,
        latency_ms: 2.0,
        ..LegSummary::default()
    }
}

#[test]
fn concludes_failing_with_since_and_counts() {
    let ok = || {
        chain(
            "40:00",
            vec![
                leg("gke-squid", Verdict::Ok, Some(200)),
                leg("gce-proxy", Verdict::Ok, Some(200)),
            ],
            Verdict::Ok,
            None,
            None,
            None,
        )
    };
    let denied = |t: &str| {
        chain(
            t,
            vec![
                leg("gke-squid", Verdict::Failed, Some(403)),
                leg("gce-proxy", Verdict::Failed, Some(403)),
            ],
            Verdict::Failed,
            Some("gce-proxy"),
            Some(Reason::ProxyDenied),
            Some(403),
        )
    };
    // A hop's upstream leg whose chain is still settling: no attempt.
    let upstream = Record::Flow(FlowRecord {
        time: "2026-11-21T10:43:01.000Z".into(),
        leg: Some("gke-squid->gce-proxy".into()),
        target: Some("login.example.test:443".into()),
        ..FlowRecord::default()
    });
    let recs = vec![ok(), denied("42:01"), denied("42:05"), denied("43:00"), upstream];
    let since = parse_rfc3339("2026-11-21T09:00:00.000Z").expect("t");
    let want = Wanted::parse("login.example.test:443").expect("want");
    let a = attempts(&recs, &want, since);
    assert_eq!(a.len(), 4);
    let e = explain("login.example.test:443", since, &a, 2);
    assert_eq!(
        e.conclusion,
        "failing at hop gce-proxy: 403 proxy_denied since 10:42:01, 3 of 4 attempts"
    );
    assert_eq!((e.state, e.recent.len()), ("failing", 2));
    assert!(render(&e).contains("Conclusion: failing at hop gce-proxy"));
    // Another port, another name: nothing.
    assert!(attempts(&recs, &Wanted::parse("login.example.test:80").expect("w"), since).is_empty());
    assert!(attempts(&recs, &Wanted::parse("other.test").expect("w"), since).is_empty());
    // Healthy after the failures.
    let mut recs = recs;
    recs.push(chain(
        "44:00",
        vec![leg("gke-squid", Verdict::Ok, Some(200))],
        Verdict::Ok,
        None,
        None,
        None,
    ));
    let e = explain("t", since, &attempts(&recs, &want, since), 5);
    assert_eq!(e.state, "healthy");
    assert!(
        e.conclusion.starts_with("healthy: last attempt ok via gke-squid; 2 of 5 attempts ok"),
        "{}",
        e.conclusion
    );
    assert!(
        e.conclusion.contains("last problem at 10:43:00: proxy_denied at hop gce-proxy"),
        "{}",
        e.conclusion
    );
    assert!(Wanted::parse("host:notaport").is_err());
    assert_eq!(
        (
            human(Duration::from_secs(5400)),
            human(Duration::from_secs(45)),
            human(Duration::from_millis(300))
        ),
        ("1h30m".into(), "45s".into(), "300ms".into())
    );
}

#[test]
fn prints_the_policy_verdict_line() {
    let flow = |t: &str, reason, pv, policy: Option<&str>| {
        Record::Flow(FlowRecord {
            time: format!("2026-11-21T10:{t}.000Z"),
            namespace: Some("production".into()),
            pod: Some("web-1".into()),
            comm: "curl".into(),
            dst: Some("198.51.100.3:8080".parse().expect("addr")),
            verdict: Verdict::Failed,
            reason: Some(reason),
            policy_verdict: pv,
            policy: policy.map(str::to_string),
            flow_id: t.into(),
            ..FlowRecord::default()
        })
    };
    let records = [
        flow(
            "40:00",
            Reason::Timeout,
            Some(crate::records::PolicyVerdict::Allowed),
            Some("production/allow-web-egress"),
        ),
        flow(
            "41:00",
            Reason::PolicyDenied,
            Some(crate::records::PolicyVerdict::Denied),
            Some("production/allow-web-egress,production/default-deny-egress"),
        ),
    ];
    let since = parse_rfc3339("2026-11-21T10:00:00.000Z").expect("time");
    let want = Wanted::parse("198.51.100.3").expect("target");
    let found = attempts(&records, &want, since);
    let e = explain("198.51.100.3", since, &found, 5);
    let text = render(&e);
    assert!(
        text.contains("policy: DENIED by NetworkPolicy production/allow-web-egress, production/default-deny-egress: no egress rule allows this flow (judged on the backend after DNAT)"),
        "{text}"
    );
    assert!(
        text.contains("policy: allowed by NetworkPolicy production/allow-web-egress: the failure is not the policies'"),
        "{text}"
    );
    assert!(
        e.conclusion.starts_with("failing (NetworkPolicy production/allow-web-egress, production/default-deny-egress): policy_denied"),
        "{}",
        e.conclusion
    );
    let json = serde_json::to_value(&e).expect("json");
    assert_eq!(json["recent"][1]["policy_verdict"], "denied");
    assert_eq!(
        json["recent"][1]["policy"],
        "production/allow-web-egress,production/default-deny-egress"
    );
}

#[test]
fn a_tls_flow_is_found_and_shown_by_its_server_name() {
    let rec = Record::Flow(FlowRecord {
        time: "2026-11-21T10:40:00.000Z".into(),
        comm: "curl".into(),
        dst: Some("198.51.100.9:443".parse().expect("addr")),
        verdict: Verdict::Failed,
        reason: Some(Reason::TlsFailed),
        sni: Some("api.example.test".into()),
        evidence: Some("TLS: fatal alert handshake_failure (40) after the ClientHello".into()),
        vantage: Some("client".into()),
        flow_id: "f1".into(),
        ..FlowRecord::default()
    });
    let since = parse_rfc3339("2026-11-21T10:00:00.000Z").expect("time");
    for (want, n) in
        [("api.example.test", 1), ("api.example.test:443", 1), ("api.example.test:8443", 0)]
    {
        let found = attempts(std::slice::from_ref(&rec), &Wanted::parse(want).expect("w"), since);
        assert_eq!(found.len(), n, "{want}");
    }
    let found = attempts(&[rec], &Wanted::parse("api.example.test").expect("w"), since);
    let e = explain("api.example.test", since, &found, 5);
    let text = render(&e);
    assert!(text.contains("api.example.test:443  => failed: tls_failed"), "{text}");
    assert!(text.contains("  tls: server name (SNI) api.example.test\n"), "{text}");
    assert!(text.contains("handshake_failure (40)"), "{text}");
    assert_eq!(serde_json::to_value(&e).expect("json")["recent"][0]["sni"], "api.example.test");
}
