//! Hostile-tenant scenarios for the alert rules, as a scripted recording:
//! what one tenant can do to the metrics (forbidden CONNECT targets, its own
//! broken resolver, dead origins of its choosing, a NetworkPolicy blocking
//! its own way to the proxy) must not fire a hop alert, and real outages
//! (a hop refusing, a hop blackholed with one client only, the hop's upstream
//! failing, the probe alone seeing a hop refuse) still do; bypasses of pods
//! with no owner or no metadata fire.
//!
//! Each scenario is a phase of [`PHASE_SAMPLES`] scrapes whose counters grow
//! by fixed increments per scrape, shaped like the agent's exposition (the
//! same series the real agent exports for that traffic: see the lab
//! recording `deploy/prometheus/tests/lab-recorded.test.yml` for the real
//! thing). [`recording`] turns them into a [`Recording`], so the promtool
//! file has the same form as the lab's and is checked the same way.
use crate::prom::{Expected, Phase, Recording, labels};

/// Scrapes per scenario: longer than the longest rule window (10m) plus a `for`.
pub const PHASE_SAMPLES: usize = 13;
pub const JOB: &str = "egress-agent";
pub const INSTANCE: &str = "node-a:9464";

/// A counter series and how much it grows per scrape.
struct Grows {
    series: String,
    per_scrape: u64,
}

fn series(name: &str, pairs: &[(&str, &str)]) -> String {
    let l: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", l.join(","))
}

fn grow(out: &mut Vec<Grows>, name: &str, pairs: &[(&str, &str)], per_scrape: u64) {
    out.push(Grows { series: series(name, pairs), per_scrape });
}

pub struct Scenario {
    pub name: &'static str,
    pub expect: Vec<Expected>,
    counters: Vec<Grows>,
}

fn exp(alert: &str, pairs: &[(&str, &str)]) -> Expected {
    Expected { alert: alert.into(), labels: labels(pairs) }
}

/// Clients of the chain and their workloads.
const CLIENTS: [(&str, &str); 3] =
    [("shop", "Deployment/web"), ("shop", "Deployment/api"), ("billing", "StatefulSet/ledger")];
/// The owners of the hops' own processes (their flows' `workload` label).
const HOP1_OWNER: (&str, &str) = ("intra-proxy", "Deployment/squid");
const HOP2_OWNER: (&str, &str) = ("", "squid.service");

/// `egress_connections_total` of an owner.
fn conn(
    out: &mut Vec<Grows>,
    (ns, wl): (&str, &str),
    hop: &str,
    class: &str,
    result: &str,
    reason: &str,
    n: u64,
) {
    let p = [
        ("dst_class", class),
        ("hop", hop),
        ("namespace", ns),
        ("reason", reason),
        ("result", result),
        ("workload", wl),
    ];
    grow(out, "egress_connections_total", &p, n);
}

fn hop_connect(out: &mut Vec<Grows>, hop: &str, from: &str, result: &str, reason: &str, n: u64) {
    let p = [("from", from), ("hop", hop), ("reason", reason), ("result", result)];
    grow(out, "egress_hop_connects_total", &p, n);
}

/// A failed request of a client: the chain record's series.
fn failed_request(out: &mut Vec<Grows>, (ns, wl): (&str, &str), hop: &str, reason: &str, n: u64) {
    grow(out, "egress_hop_failures_total", &[("hop", hop), ("reason", reason)], n);
    let p = [("hop", hop), ("namespace", ns), ("reason", reason), ("workload", wl)];
    grow(out, "egress_hop_request_failures_total", &p, n);
}

/// `n` healthy requests per scrape of each of `clients` through both hops.
fn healthy(out: &mut Vec<Grows>, clients: &[(&'static str, &'static str)], n: u64) {
    let total = n * clients.len() as u64;
    for c in clients {
        conn(out, *c, "gke-squid", "private", "ok", "", n);
    }
    hop_connect(out, "gke-squid", "client", "ok", "", total);
    conn(out, HOP1_OWNER, "gce-proxy", "private", "ok", "", total);
    hop_connect(out, "gce-proxy", "gke-squid", "ok", "", total);
    conn(out, HOP2_OWNER, "internet", "public", "ok", "", total);
    hop_connect(out, "internet", "gce-proxy", "ok", "", total);
    for hop in ["gke-squid", "gce-proxy"] {
        let p = [("hop", hop), ("status", "200"), ("target", "other")];
        grow(out, "egress_proxy_tunnels_total", &p, total);
    }
}

/// One tenant's CONNECTs to targets `hop` denies (403): the client leg and,
/// for gce-proxy, gke-squid's upstream leg carry the 403.
fn denied(out: &mut Vec<Grows>, tenant: (&str, &str), hop: &str, n: u64) {
    conn(out, tenant, "gke-squid", "private", "failed", "proxy_denied", n);
    hop_connect(out, "gke-squid", "client", "failed", "proxy_denied", n);
    if hop == "gce-proxy" {
        conn(out, HOP1_OWNER, "gce-proxy", "private", "failed", "proxy_denied", n);
        hop_connect(out, "gce-proxy", "gke-squid", "failed", "proxy_denied", n);
    }
    for h in ["gke-squid", "gce-proxy"] {
        let p = [("hop", h), ("status", "403"), ("target", "other")];
        grow(out, "egress_proxy_tunnels_total", &p, n);
        if h == hop {
            break;
        }
    }
    failed_request(out, tenant, hop, "proxy_denied", n);
}

/// Requests that fail past gce-proxy with `reason` (origin side): gce-proxy's
/// upstream legs fail, both proxies answer 503 upstream.
fn origin_side(
    out: &mut Vec<Grows>,
    clients: &[(&'static str, &'static str)],
    reason: &str,
    n: u64,
) {
    let total = n * clients.len() as u64;
    for c in clients {
        conn(out, *c, "gke-squid", "private", "failed", "proxy_upstream_error", n);
        failed_request(out, *c, "internet", reason, n);
    }
    hop_connect(out, "gke-squid", "client", "failed", "proxy_upstream_error", total);
    conn(out, HOP1_OWNER, "gce-proxy", "private", "failed", "proxy_upstream_error", total);
    hop_connect(out, "gce-proxy", "gke-squid", "failed", "proxy_upstream_error", total);
    conn(out, HOP2_OWNER, "internet", "public", "failed", reason, total);
    hop_connect(out, "internet", "gce-proxy", "failed", reason, total);
    for hop in ["gke-squid", "gce-proxy"] {
        let p = [("hop", hop), ("status", "503"), ("target", "other")];
        grow(out, "egress_proxy_tunnels_total", &p, total);
    }
}

/// Failed lookups of gke-squid's name by `client` (its resolver broken, or
/// the cluster's down).
fn lookups_fail(out: &mut Vec<Grows>, (ns, wl): (&str, &str), n: u64) {
    grow(out, "egress_hop_failures_total", &[("hop", "gke-squid"), ("reason", "dns_failed")], n);
    let p = [("hop", "gke-squid"), ("namespace", ns), ("workload", wl)];
    grow(out, "egress_hop_lookup_failures_total", &p, n);
    grow(out, "egress_dns_responses_total", &[("hop", "gke-squid"), ("rcode", "SERVFAIL")], n);
}

pub fn scenarios() -> Vec<Scenario> {
    let tenant = ("tenant-x", "Deployment/scraper");
    let mut v = Vec::new();
    let mut s = |name, expect, build: &dyn Fn(&mut Vec<Grows>)| {
        let mut counters = Vec::new();
        build(&mut counters);
        v.push(Scenario { name, expect, counters });
    };
    s("healthy, three client workloads", vec![], &|o| healthy(o, &CLIENTS, 10));
    s("one tenant's forbidden targets (403 at gke-squid)", vec![], &|o| {
        healthy(o, &CLIENTS, 10);
        denied(o, tenant, "gke-squid", 40);
    });
    s("one tenant's forbidden targets (403 at gce-proxy)", vec![], &|o| {
        healthy(o, &CLIENTS, 10);
        denied(o, tenant, "gce-proxy", 40);
    });
    s("one tenant's broken resolver (proxy name)", vec![], &|o| {
        healthy(o, &CLIENTS, 10);
        lookups_fail(o, tenant, 60);
    });
    s("one tenant's dead origins (timeouts past gce-proxy)", vec![], &|o| {
        healthy(o, &CLIENTS, 10);
        origin_side(o, &[tenant], "timeout", 60);
    });
    s("one tenant's NetworkPolicy blocks its way to gke-squid", vec![], &|o| {
        healthy(o, &CLIENTS, 10);
        conn(o, tenant, "gke-squid", "private", "failed", "timeout", 60);
        hop_connect(o, "gke-squid", "client", "failed", "timeout", 60);
        failed_request(o, tenant, "gke-squid", "timeout", 60);
    });
    s(
        "gke-squid refuses (pods down), every workload",
        vec![exp("EgressHopDown", &[("hop", "gke-squid")])],
        &|o| {
            for c in CLIENTS {
                conn(o, c, "gke-squid", "private", "failed", "refused", 10);
                failed_request(o, c, "gke-squid", "refused", 10);
            }
            hop_connect(o, "gke-squid", "client", "failed", "refused", 30);
        },
    );
    s(
        "the cluster resolver is down, every workload",
        vec![exp("EgressHopDown", &[("hop", "gke-squid")])],
        &|o| {
            for c in CLIENTS {
                lookups_fail(o, c, 10);
            }
        },
    );
    s(
        "gce-proxy blackholed, one client workload only",
        vec![exp("EgressHopDown", &[("hop", "gce-proxy")])],
        &|o| {
            let c = CLIENTS[0];
            conn(o, c, "gke-squid", "private", "failed", "proxy_upstream_error", 10);
            hop_connect(o, "gke-squid", "client", "failed", "proxy_upstream_error", 10);
            conn(o, HOP1_OWNER, "gce-proxy", "private", "failed", "timeout", 10);
            hop_connect(o, "gce-proxy", "gke-squid", "failed", "timeout", 10);
            let p = [("hop", "gke-squid"), ("status", "503"), ("target", "other")];
            grow(o, "egress_proxy_tunnels_total", &p, 10);
            failed_request(o, c, "gce-proxy", "timeout", 10);
        },
    );
    s(
        "gce-proxy's upstream fails (NAT blackholed), every workload",
        vec![
            exp("EgressHopDown", &[("hop", "internet")]),
            exp("EgressConnectTimeoutsPublic", &[("hop", "internet")]),
        ],
        &|o| origin_side(o, &CLIENTS, "timeout", 10),
    );
    s(
        "no client traffic: the probe sees gke-squid refuse",
        vec![exp("EgressHopDown", &[("hop", "gke-squid")])],
        &|o| {
            hop_connect(o, "gke-squid", "probe", "failed", "refused", 2);
        },
    );
    s(
        "bypass by a bare pod and by a pod without metadata (watch down)",
        vec![
            exp("EgressProxyBypass", &[("namespace", "team-a"), ("workload", "Pod")]),
            exp("EgressProxyBypass", &[("workload", "unknown")]),
        ],
        &|o| {
            healthy(o, &CLIENTS, 10);
            conn(o, ("team-a", "Pod"), "direct", "public", "failed", "bypass", 1);
            conn(o, ("", "unknown"), "direct", "public", "failed", "bypass", 1);
            // A host process with no unit: not alerted on (dashboard only).
            conn(o, ("", ""), "direct", "public", "failed", "bypass", 1);
        },
    );
    v
}

/// The scenarios one after another as a recording (one scrape per minute of
/// promtool time). A scenario's counters start at 0 on its first scrape and
/// are absent outside it.
pub fn recording() -> Recording {
    let mut rec = Recording::new(JOB, INSTANCE);
    for sc in scenarios() {
        let start = rec.samples.len();
        for i in 0..PHASE_SAMPLES as u64 {
            let mut text = String::new();
            let mut seen: Vec<(&str, u64)> = Vec::new();
            for g in &sc.counters {
                // The same series built twice (two helpers) is one counter.
                match seen.iter_mut().find(|(s, _)| *s == g.series) {
                    Some(e) => e.1 += g.per_scrape,
                    None => seen.push((&g.series, g.per_scrape)),
                }
            }
            for (s, per) in seen {
                text.push_str(&format!("{s} {}\n", per * i));
            }
            rec.push(Some(&text), rec.samples.len() as f64, &|n: &str| n.starts_with("egress_"));
        }
        let end = rec.samples.len();
        rec.phases.push(Phase {
            name: sc.name.into(),
            start,
            end,
            expect: sc.expect,
            checks: vec![end - 1],
        });
    }
    rec
}
