//! TLS server names as targets (issue 20), through the real agent and real
//! TLS: `openssl s_client` in a client namespace; in the server namespace an
//! SNI-routing passthrough gateway (HAProxy, hop `sni-gw`, `protocol:
//! tls-sni`), a Squid (hop `squid`, CONNECT) and `openssl s_server` origins.
//!
//! | row | path | fault | record of the client's flow |
//! |---|---|---|---|
//! | gateway healthy | client → sni-gw → origin | — | ok, `sni`, target = SNI |
//! | SNI not allowed | client → sni-gw | gateway rejects the name | tls_failed at sni-gw |
//! | origin refused | client → sni-gw → (refused) | no origin listening | tls_failed at sni-gw; the gateway's own leg refused |
//! | tunnel healthy | client → squid → origin | — | ok, 200, `sni` |
//! | TLS failure in a tunnel | client → squid → origin | origin wants TLS 1.3, client offers 1.2 | tls_failed (alert), 200, `sni` |
//! | TLS port | client → origin:443 | — / TLS 1.2 to a TLS 1.3 server | ok / tls_failed, `sni` |
use std::{net::SocketAddr, time::Duration};

use egress_tests::{
    Agent, AgentMode, Netns, Veth,
    agent::{free_port, metric_sum},
    image::TempDir,
    require_root,
    tls_lab::{self, SClient},
};
use serde_json::Value;

const GW: &str = "198.18.120.2:8443";
const SQUID: &str = "198.18.120.2:3128";
/// A TLS 1.3-only server on the default TLS port (no hop: a TLS port flow).
const DIRECT: &str = "198.18.120.3:443";
const ORIGIN_OK: &str = "198.18.120.4:4433";
const ORIGIN_REFUSED: &str = "198.18.120.4:4434";
/// TLS 1.3 only: a TLS 1.2 client gets a protocol_version alert.
const ORIGIN_STRICT: &str = "198.18.120.4:4435";
const WAIT: Duration = Duration::from_secs(10);

fn config() -> String {
    format!(
        "version: 1\n\
         chain:\n  name: tls\n  hops:\n\
         \x20   - name: squid\n      match: {{address: \"{SQUID}\"}}\n\
         \x20   - name: sni-gw\n      protocol: tls-sni\n      match: {{address: \"{GW}\", comm: haproxy}}\n\
         bypass: {{report: false}}\n"
    )
}

/// The client's connect record of the flow that sent `sni`.
fn client_record(sni: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["sni"] == sni && v["phase"] == "connect" && v["vantage"] != "hop"
}

fn run(client: &Netns, to: &str, sni: &str, proxy: Option<&str>, extra: &[&str]) -> SClient {
    let r = tls_lab::s_client(client, to, sni, proxy, extra, Duration::from_secs(8))
        .unwrap_or_else(|e| panic!("s_client {sni}: {e:#}"));
    eprintln!("s_client {sni}: handshake {}\n{}", r.handshake, r.output.trim());
    r
}

#[test]
fn tls_server_names_and_handshake_failures_through_a_gateway_a_tunnel_and_a_tls_port() {
    require_root!();
    let client = Netns::new("tls-client").expect("netns");
    let server = Netns::new("tls-server").expect("netns");
    Veth::link(
        &client,
        &["198.18.120.1/24"],
        &server,
        &["198.18.120.2/24", "198.18.120.3/24", "198.18.120.4/24"],
    )
    .expect("link");
    let tmp = TempDir::new("tls-sni").expect("tmp");
    let dir = tmp.path();
    let (cert, key) = tls_lab::self_signed(dir).expect("certificate");
    let keys = (cert.as_path(), key.as_path());
    let _ok = tls_lab::s_server(&server, dir, keys, ORIGIN_OK, &[]).expect("origin");
    let _strict =
        tls_lab::s_server(&server, dir, keys, ORIGIN_STRICT, &["-tls1_3"]).expect("strict");
    let _direct = tls_lab::s_server(&server, dir, keys, DIRECT, &["-tls1_3"]).expect("direct");
    let _gw = tls_lab::haproxy_sni(
        &server,
        dir,
        GW,
        &[("ok.sni.test", ORIGIN_OK), ("refused.sni.test", ORIGIN_REFUSED)],
    )
    .expect("haproxy");
    let hosts = "198.18.120.4 ok.tunnel.test strict.tunnel.test\n";
    let _squid = tls_lab::squid(&server, dir, SQUID, "198.18.120.0/24", &[4433, 4435], hosts)
        .expect("squid");

    let cfg = dir.join("agent.yaml");
    std::fs::write(&cfg, config()).expect("config");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let extra = ["--config", &cfg.display().to_string(), "--kube", "false", "--conntrack", "false"]
        .map(String::from)
        .to_vec();
    let mut agent = Agent::start(AgentMode::Run { metrics, extra }).expect("agent");

    // The gateway: healthy, a name it does not route, a name whose origin refuses.
    assert!(run(&client, GW, "ok.sni.test", None, &[]).handshake, "healthy through the gateway");
    assert!(!run(&client, GW, "denied.sni.test", None, &[]).handshake);
    assert!(!run(&client, GW, "refused.sni.test", None, &[]).handshake);
    // Squid tunnels: healthy, and an origin that refuses the client's TLS version.
    let ok = run(&client, "ok.tunnel.test:4433", "ok.tunnel.test", Some(SQUID), &[]);
    assert!(ok.handshake, "healthy through the tunnel");
    let strict = "strict.tunnel.test:4435";
    assert!(!run(&client, strict, "strict.tunnel.test", Some(SQUID), &["-tls1_2"]).handshake);
    // A TLS port without any hop.
    assert!(run(&client, DIRECT, "direct.tls.test", None, &[]).handshake);
    assert!(!run(&client, DIRECT, "old.tls.test", None, &["-tls1_2"]).handshake);

    let rec = |agent: &mut Agent, sni: &'static str| {
        let r = agent.wait_for(WAIT, client_record(sni)).unwrap_or_else(|e| panic!("{sni}: {e:#}"));
        eprintln!("{sni}: {r}");
        r
    };
    let gw_ok = rec(&mut agent, "ok.sni.test");
    assert_eq!(
        (&gw_ok["verdict"], &gw_ok["leg"], &gw_ok["target"]),
        (&"ok".into(), &"client->sni-gw".into(), &"ok.sni.test:8443".into()),
        "{gw_ok}"
    );
    for sni in ["denied.sni.test", "refused.sni.test"] {
        let r = rec(&mut agent, sni);
        assert_eq!(
            (&r["verdict"], &r["reason"], &r["failed_hop"], &r["leg"]),
            (&"failed".into(), &"tls_failed".into(), &"sni-gw".into(), &"client->sni-gw".into()),
            "{sni}: {r}"
        );
        assert_eq!(r["target"], format!("{sni}:8443"), "{r}");
    }
    // The gateway's own leg to the refusing origin: the origin leg's failure.
    let origin_leg = agent
        .wait_for(WAIT, |v| {
            v["dst"] == ORIGIN_REFUSED && v["comm"] == "haproxy" && v["reason"] == "refused"
        })
        .expect("the gateway's refused origin connect");
    assert_eq!(origin_leg["leg"], "sni-gw->internet", "{origin_leg}");

    // The chains: the origin leg (no hello of its own when refused) is
    // joined by time; a failure past the gateway explains its close.
    for (sni, legs, failed_hop, reason) in [
        ("ok.sni.test", 2, Value::Null, Value::Null),
        ("denied.sni.test", 1, "sni-gw".into(), "tls_failed".into()),
        ("refused.sni.test", 2, "internet".into(), "refused".into()),
        ("strict.tunnel.test", 1, "internet".into(), "tls_failed".into()),
    ] {
        let c = agent
            .wait_for(WAIT, |v| v["record"] == "chain" && v["sni"] == sni)
            .unwrap_or_else(|e| panic!("{sni} chain: {e:#}"));
        eprintln!("{sni} chain: {c}");
        let n = c["legs"].as_array().map_or(0, Vec::len);
        assert_eq!((n, &c["failed_hop"], &c["reason"]), (legs, &failed_hop, &reason), "{c}");
    }
    let tunnel_ok = rec(&mut agent, "ok.tunnel.test");
    assert_eq!(
        (&tunnel_ok["verdict"], &tunnel_ok["proxy_status"], &tunnel_ok["target"]),
        (&"ok".into(), &200.into(), &"ok.tunnel.test:4433".into()),
        "{tunnel_ok}"
    );
    let tunnel_bad = rec(&mut agent, "strict.tunnel.test");
    assert_eq!(
        (&tunnel_bad["verdict"], &tunnel_bad["reason"], &tunnel_bad["proxy_status"]),
        (&"failed".into(), &"tls_failed".into(), &200.into()),
        "a TLS failure inside an opened tunnel, apart from proxy failures: {tunnel_bad}"
    );
    assert_eq!(tunnel_bad["failed_hop"], "internet", "{tunnel_bad}");
    let why = tunnel_bad["evidence"].as_str().unwrap_or_default();
    assert!(why.contains("protocol_version (70)"), "{tunnel_bad}");
    eprintln!("tls_failed record: {tunnel_bad}");

    let direct_ok = rec(&mut agent, "direct.tls.test");
    assert_eq!(direct_ok["verdict"], "ok", "{direct_ok}");
    let direct_bad = rec(&mut agent, "old.tls.test");
    assert_eq!(
        (&direct_bad["verdict"], &direct_bad["reason"]),
        (&"failed".into(), &"tls_failed".into()),
        "{direct_bad}"
    );

    let text = agent.settled_metrics(Duration::from_secs(5)).expect("scrape");
    assert_eq!(metric_sum(&text, "egress_events_lost_total", &[]), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "egress_decode_errors_total", &[]), 0.0, "{text}");
    assert!(agent.stop().expect("stop"));
}
