//! Malformed policies: what is reported, what is skipped, never a panic.
use super::super::{Decision, PolicySet, Protocol};
use super::table::flow;
use super::*;

fn problems_of(spec: &str) -> (PolicySet, Vec<String>) {
    let json = format!(
        r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{{"name":"p","namespace":"production"}},"spec":{spec}}}"#
    );
    let (set, problems) = PolicySet::new([&np(&json)]);
    (set, problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect())
}

#[test]
fn each_malformed_entry_is_reported_at_its_path() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/33"}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.cidr",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"banana"}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.cidr",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.0.0.0/8"]}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["fd00::/64"]}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8","except":["x"]}}]}]}"#,
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (r#"{"policyTypes":["Egress"],"egress":[{"to":[{}]}]}"#, "spec.egress[0].to[0]"),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"10.0.0.0/8"},"podSelector":{}}]}]}"#,
            "spec.egress[0].to[0]",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"podSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}}]}]}"#,
            "spec.egress[0].to[0].podSelector",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"to":[{"namespaceSelector":{"matchExpressions":[{"key":"a","operator":"Is","values":["b"]}]}}]}]}"#,
            "spec.egress[0].to[0].namespaceSelector",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"protocol":"tcp","port":80}]}]}"#,
            "spec.egress[0].ports[0].protocol",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"protocol":"ICMP"}]}]}"#,
            "spec.egress[0].ports[0].protocol",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":0}]}]}"#,
            "spec.egress[0].ports[0].port",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":65536}]}]}"#,
            "spec.egress[0].ports[0].port",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":"80"}]}]}"#,
            "spec.egress[0].ports[0].port",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":"Web_UI"}]}]}"#,
            "spec.egress[0].ports[0].port",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"endPort":90}]}]}"#,
            "spec.egress[0].ports[0].endPort",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":"http","endPort":90}]}]}"#,
            "spec.egress[0].ports[0].endPort",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":100,"endPort":99}]}]}"#,
            "spec.egress[0].ports[0].endPort",
        ),
        (
            r#"{"policyTypes":["Egress"],"egress":[{"ports":[{"port":100,"endPort":70000}]}]}"#,
            "spec.egress[0].ports[0].endPort",
        ),
        (r#"{"policyTypes":["Egress","egress"],"egress":[{}]}"#, "spec.policyTypes[1]"),
    ];
    for (spec, field) in cases {
        let (_, problems) = problems_of(spec);
        assert_eq!(problems.len(), 1, "{spec}: {problems:?}");
        assert!(problems[0].starts_with(&format!("{field}: ")), "{spec}: {problems:?}");
    }
}

#[test]
fn well_formed_policies_report_nothing() {
    for json in [
        DENY_ALL,
        DENY_ALL_NO_FIELD,
        ALLOW_DNS,
        ALLOW_EXTERNAL,
        ALLOW_BACKEND_NS,
        ALLOW_DB,
        AND_PEER,
        OR_PEERS,
        NAMED_PORTS,
        PORT_RANGE,
        UDP_ONLY,
        ALL_UDP,
        STAGING_DENY,
        IMPLIED_EGRESS,
        EMPTY_EGRESS_NO_TYPES,
        INGRESS_ONLY,
        ALLOW_V6,
        EXPRESSIONS,
        NS_NOT_IN,
        ALL_PODS,
        SAME_NS_PODS,
        ALLOW_ALL,
        ALLOW_GATEWAY,
    ] {
        let (_, problems) = PolicySet::new([&np(json)]);
        assert!(problems.is_empty(), "{json}: {problems:?}");
    }
    // Legacy-valid spellings the API server still holds: leading zeros, host bits.
    let (_, problems) = problems_of(
        r#"{"policyTypes":["Egress"],"egress":[{"to":[{"ipBlock":{"cidr":"010.1.2.3/8"}}]}]}"#,
    );
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn unplaceable_policies_are_skipped_and_reported() {
    // Malformed podSelector: selects no pod, so the pod stays unisolated.
    let (set, problems) = problems_of(
        r#"{"podSelector":{"matchExpressions":[{"key":"a","operator":"Exists","values":["x"]}]},"policyTypes":["Egress"]}"#,
    );
    assert_eq!(set.len(), 0);
    assert!(problems[0].starts_with("spec.podSelector: "), "{problems:?}");
    // No namespace.
    let (set, problems) = PolicySet::new([&np(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x"},"spec":{"policyTypes":["Egress"]}}"#,
    )]);
    assert_eq!((set.len(), problems.len()), (0, 1));
    assert_eq!(problems[0].field, "metadata.namespace");
    assert_eq!(
        problems[0].to_string(),
        "NetworkPolicy /x: metadata.namespace: missing: cannot tell which pods it selects; policy skipped"
    );
    // No name: kept, reported, named <unnamed>.
    let (set, problems) = PolicySet::new([&np(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"namespace":"production"},"spec":{"policyTypes":["Egress"]}}"#,
    )]);
    assert_eq!((set.len(), problems.len()), (1, 1));
    let src = ("production", labels(&[]));
    assert_eq!(
        set.egress(&flow(&src, "8.8.8.8", 53, Protocol::Udp), &cluster()),
        Decision::Denied { isolating: vec!["production/<unnamed>".into()], uncertain: vec![] }
    );
}

#[test]
fn absent_spec_or_selector_follow_go_zero_values() {
    // No spec: policyTypes defaults to [Ingress]; not an egress policy.
    let (set, problems) = PolicySet::new([&np(
        r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x","namespace":"production"}}"#,
    )]);
    assert_eq!((set.len(), problems.len()), (0, 0));
    // No podSelector: the empty selector, every pod of the namespace.
    let (set, problems) = problems_of(r#"{"policyTypes":["Egress"]}"#);
    assert_eq!((set.len(), problems.len()), (1, 0));
    let src = ("production", labels(&[("anything", "at-all")]));
    assert!(set.egress(&flow(&src, "8.8.8.8", 443, Protocol::Tcp), &cluster()).is_denied());
}

#[test]
fn duplicates_are_reported() {
    let (set, problems) = PolicySet::new([&np(DENY_ALL), &np(DENY_ALL)]);
    assert_eq!(set.len(), 2);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].policy, "production/default-deny-egress");
}

/// Every JSON value of every fixture replaced by odd values of other types
/// that still deserialize: building and evaluating never panics.
#[test]
fn odd_values_never_panic() {
    let fixtures =
        [ALLOW_DNS, ALLOW_EXTERNAL, ALLOW_V6, PORT_RANGE, NAMED_PORTS, EXPRESSIONS, OR_PEERS];
    let odd = [
        "\"\"",
        "\"::\"",
        "\"0.0.0.0/0\"",
        "\"/\"",
        "\"a/b/c\"",
        "0",
        "-1",
        "65535",
        "2147483647",
        "\"In\"",
        "\"ÿ\"",
        "\"300.1.1.1/8\"",
        "\"::ffff:1.2.3.4/200\"",
    ];
    let cluster = cluster();
    let mut built = 0;
    for fixture in fixtures {
        let tokens: Vec<(usize, usize)> = scalar_spans(fixture);
        for &(start, end) in &tokens {
            for value in odd {
                let json = format!("{}{}{}", &fixture[..start], value, &fixture[end..]);
                let Ok(policy) = serde_json::from_str(&json) else { continue };
                let (set, _) = PolicySet::new([&policy]);
                built += 1;
                for (dst, port) in [
                    ("10.0.3.10", 53),
                    ("203.0.113.5", 443),
                    ("2001:db8::1", 0),
                    ("0.0.0.0", 65535),
                ] {
                    for (ns, l) in [("production", labels(&[("app", "api")])), ("", labels(&[]))] {
                        let src = (ns, l);
                        set.egress(&flow(&src, dst, port, Protocol::Tcp), &cluster);
                    }
                }
            }
        }
    }
    assert!(built > 200, "only {built} variants deserialized");
}

/// Byte spans of the JSON scalars (strings and numbers) in a fixture.
fn scalar_spans(json: &str) -> Vec<(usize, usize)> {
    let b = json.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while b[i] != b'"' {
                i += 1;
            }
            // A key is followed by ':'; only values are replaced.
            let next = b[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if next != Some(&b':') {
                spans.push((start, i + 1));
            }
        } else if b[i].is_ascii_digit() {
            let start = i;
            while b[i].is_ascii_digit() {
                i += 1;
            }
            spans.push((start, i));
            continue;
        }
        i += 1;
    }
    spans
}
