//! TLS server names as targets (issue 20), for `cargo xtask lab` and
//! `tests/tests/tls_sni.rs`: real TLS (`openssl s_client`) from a client
//! namespace; in the server namespace an SNI-routing passthrough gateway
//! (HAProxy, hop `sni-gw`, `protocol: tls-sni`), a Squid (hop `squid`,
//! CONNECT) and `openssl s_server` origins. One agent on the host.
//!
//! ```text
//! client 198.18.120.1 ── 198.18.120.2:8443 sni-gw (HAProxy) ─┐
//!                        198.18.120.2:3128 squid ────────────┼─ 198.18.120.4:4433 origin
//!                        198.18.120.3:443  TLS 1.3 only      │  198.18.120.4:4434 nothing listens
//!                                                            └─ 198.18.120.4:4435 TLS 1.3 only
//! ```
//!
//! | row | path | fault | the agent's record of the client's flow |
//! |---|---|---|---|
//! | gateway healthy | client → sni-gw → origin | — | ok, target = the SNI; chain of 2 legs |
//! | SNI not allowed | client → sni-gw | the gateway rejects the name | tls_failed at sni-gw |
//! | origin refused | client → sni-gw → (refused) | no origin listening | tls_failed at sni-gw; chain: the origin leg refused |
//! | tunnel healthy | client → squid → origin | — | ok, 200 |
//! | TLS failure in a tunnel | client → squid → origin | origin wants TLS 1.3, client offers 1.2 | tls_failed at internet, 200, the alert |
//! | TLS port | client → origin:443 | — / TLS 1.2 to a TLS 1.3 server | ok / tls_failed |
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Agent, AgentMode, Netns, Veth,
    agent::free_port,
    demo::DemoRow,
    image::TempDir,
    tls_lab::{self, Daemon},
};

pub const HOP: &str = "sni-gw";
pub const GW: &str = "198.18.120.2:8443";
pub const SQUID: &str = "198.18.120.2:3128";
/// A TLS 1.3-only server on the default TLS port (no hop: a TLS port flow).
pub const DIRECT: &str = "198.18.120.3:443";
pub const ORIGIN_OK: &str = "198.18.120.4:4433";
/// Routed to by the gateway for `refused.sni.test`; nothing listens.
pub const ORIGIN_REFUSED: &str = "198.18.120.4:4434";
/// TLS 1.3 only: a TLS 1.2 client gets a protocol_version alert.
pub const ORIGIN_STRICT: &str = "198.18.120.4:4435";
/// How long a record may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// The namespaces, the daemons and the agent's config file.
pub struct SniLab {
    // Declared first: killed before their namespaces go.
    _daemons: Vec<Daemon>,
    pub client: Netns,
    pub server: Netns,
    tmp: TempDir,
}

impl SniLab {
    pub fn new() -> anyhow::Result<Self> {
        let client = Netns::new("tls-client")?;
        let server = Netns::new("tls-server")?;
        Veth::link(
            &client,
            &["198.18.120.1/24"],
            &server,
            &["198.18.120.2/24", "198.18.120.3/24", "198.18.120.4/24"],
        )?;
        let tmp = TempDir::new("tls-sni")?;
        let dir = tmp.path();
        let (cert, key) = tls_lab::self_signed(dir)?;
        let keys = (cert.as_path(), key.as_path());
        let hosts = "198.18.120.4 ok.tunnel.test strict.tunnel.test\n";
        let daemons = vec![
            tls_lab::s_server(&server, dir, keys, ORIGIN_OK, &[])?,
            tls_lab::s_server(&server, dir, keys, ORIGIN_STRICT, &["-tls1_3"])?,
            tls_lab::s_server(&server, dir, keys, DIRECT, &["-tls1_3"])?,
            tls_lab::haproxy_sni(
                &server,
                dir,
                GW,
                &[("ok.sni.test", ORIGIN_OK), ("refused.sni.test", ORIGIN_REFUSED)],
            )?,
            tls_lab::squid(&server, dir, SQUID, "198.18.120.0/24", &[4433, 4435], hosts)?,
        ];
        std::fs::write(
            dir.join("agent.yaml"),
            format!(
                "version: 1\n\
                 chain:\n  name: tls\n  hops:\n\
                 \x20   - name: squid\n      match: {{address: \"{SQUID}\"}}\n\
                 \x20   - name: {HOP}\n      protocol: tls-sni\n      match: {{address: \"{GW}\", comm: haproxy}}\n\
                 bypass: {{report: false}}\n"
            ),
        )?;
        Ok(Self { _daemons: daemons, client, server, tmp })
    }

    /// A `run` agent with the lab's config (no Kubernetes, no conntrack).
    pub fn agent(&self) -> anyhow::Result<Agent> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let cfg = self.tmp.path().join("agent.yaml").display().to_string();
        let extra = ["--config", &cfg, "--kube", "false", "--conntrack", "false"]
            .map(String::from)
            .to_vec();
        Agent::start(AgentMode::Run { metrics, extra })
    }

    /// `openssl s_client` from the client namespace (8 s bound).
    pub fn s_client(
        &self,
        to: &str,
        sni: &str,
        proxy: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<tls_lab::SClient> {
        tls_lab::s_client(&self.client, to, sni, proxy, extra, Duration::from_secs(8))
    }
}

/// One TLS client run and what must come of it.
pub struct Case {
    pub name: &'static str,
    /// The socket's destination (the gateway, the proxy or the TLS port).
    pub dst: &'static str,
    /// `s_client -connect`.
    pub connect: &'static str,
    pub sni: &'static str,
    pub proxy: Option<&'static str>,
    pub extra: &'static [&'static str],
    /// `handshake | <client flow record> [| <chain record>]` (see [`said`]).
    pub expect: &'static str,
    /// Whether the chain record is part of the row.
    pub chain: bool,
}

pub fn cases() -> Vec<Case> {
    let case = |name, dst, connect, sni, proxy, extra, expect, chain| Case {
        name,
        dst,
        connect,
        sni,
        proxy,
        extra,
        expect,
        chain,
    };
    vec![
        case(
            "sni gw: healthy",
            GW,
            GW,
            "ok.sni.test",
            None,
            &[],
            "handshake | ok client->sni-gw ok.sni.test:8443 \
             | chain ok: client->sni-gw ok, sni-gw->internet ok",
            true,
        ),
        case(
            "sni gw: SNI not allowed",
            GW,
            GW,
            "denied.sni.test",
            None,
            &[],
            "no handshake | failed/tls_failed at sni-gw client->sni-gw denied.sni.test:8443 \
             | chain failed/tls_failed at sni-gw: client->sni-gw failed/tls_failed",
            true,
        ),
        case(
            "sni gw: origin refused",
            GW,
            GW,
            "refused.sni.test",
            None,
            &[],
            "no handshake | failed/tls_failed at sni-gw client->sni-gw refused.sni.test:8443 \
             | chain failed/refused at internet: client->sni-gw failed/tls_failed, \
             sni-gw->internet failed/refused",
            true,
        ),
        case(
            "tunnel: healthy",
            SQUID,
            "ok.tunnel.test:4433",
            "ok.tunnel.test",
            Some(SQUID),
            &[],
            "handshake | ok client->squid 200 ok.tunnel.test:4433",
            false,
        ),
        case(
            "tunnel: TLS failure inside",
            SQUID,
            "strict.tunnel.test:4435",
            "strict.tunnel.test",
            Some(SQUID),
            &["-tls1_2"],
            "no handshake | failed/tls_failed at internet client->squid 200 \
             strict.tunnel.test:4435 alert protocol_version (70) \
             | chain failed/tls_failed at internet: client->squid failed/tls_failed 200",
            true,
        ),
        case(
            "tls port: healthy",
            DIRECT,
            DIRECT,
            "direct.tls.test",
            None,
            &[],
            "handshake | ok sni direct.tls.test",
            false,
        ),
        case(
            "tls port: TLS 1.2 to a 1.3 server",
            DIRECT,
            DIRECT,
            "old.tls.test",
            None,
            &["-tls1_2"],
            "no handshake | failed/tls_failed sni old.tls.test alert protocol_version (70)",
            false,
        ),
    ]
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v[field].as_str()
}

/// `verdict[/reason][ at failed_hop]`.
fn outcome(v: &Value) -> String {
    let mut s = text(v, "verdict").unwrap_or("?").to_string();
    if let Some(r) = text(v, "reason") {
        s += &format!("/{r}");
    }
    if let Some(h) = text(v, "failed_hop") {
        s += &format!(" at {h}");
    }
    s
}

/// A client flow record: `outcome [leg] [proxy status] target-or-sni [alert]`.
pub fn said(v: &Value) -> String {
    let mut s = outcome(v);
    if let Some(leg) = text(v, "leg") {
        s += &format!(" {leg}");
    }
    if let Some(st) = v["proxy_status"].as_u64() {
        s += &format!(" {st}");
    }
    match (text(v, "target"), text(v, "sni")) {
        (Some(t), _) => s += &format!(" {t}"),
        (None, Some(n)) => s += &format!(" sni {n}"),
        (None, None) => {}
    }
    // A TLS alert the agent read: `alert NAME (CODE)` out of its evidence.
    if let Some(e) = text(v, "evidence")
        && let Some(i) = e.find("alert ")
    {
        let rest = &e[i..];
        s += &format!(" {}", &rest[..rest.find(')').map_or(rest.len(), |j| j + 1)]);
    }
    s
}

/// A chain record: `chain outcome: leg outcome[ status], …`.
pub fn said_chain(v: &Value) -> String {
    let legs: Vec<String> = v["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let mut s = format!("{} {}", text(l, "leg").unwrap_or("?"), outcome(l));
            if let Some(st) = l["proxy_status"].as_u64() {
                s += &format!(" {st}");
            }
            s
        })
        .collect();
    format!("chain {}: {}", outcome(v), legs.join(", "))
}

/// The client's connect record of the flow that sent `sni`.
pub fn client_record(sni: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| v["sni"] == sni && v["phase"] == "connect" && v["vantage"] != "hop"
}

/// Run every case through `agent` (all clients first, then the records)
/// and judge each: what the client saw, the agent's record of its flow,
/// and its chain record where the case has one.
pub fn rows(lab: &SniLab, agent: &mut Agent) -> anyhow::Result<Vec<DemoRow>> {
    let cases = cases();
    let mut handshakes = Vec::new();
    for c in &cases {
        handshakes.push(lab.s_client(c.connect, c.sni, c.proxy, c.extra)?.handshake);
    }
    let t0 = Instant::now();
    let mut rows = Vec::new();
    for (c, handshake) in cases.iter().zip(handshakes) {
        let left = WAIT.saturating_sub(t0.elapsed());
        let mut got = format!("{} | ", if handshake { "handshake" } else { "no handshake" });
        got += &agent.wait_for(left, client_record(c.sni)).map_or_else(
            |_| format!("no connect record with sni {} in {WAIT:?}", c.sni),
            |v| said(&v),
        );
        if c.chain {
            let left = WAIT.saturating_sub(t0.elapsed());
            got +=
                &agent.wait_for(left, |v| v["record"] == "chain" && v["sni"] == c.sni).map_or_else(
                    |_| " | no chain record".to_string(),
                    |v| format!(" | {}", said_chain(&v)),
                );
        }
        rows.push(DemoRow {
            name: c.name,
            dst: c.dst.parse()?,
            ok: got == c.expect,
            expected: c.expect.to_string(),
            got,
        });
    }
    Ok(rows)
}

/// The lab's table on a fresh lab and agent.
pub fn run() -> anyhow::Result<Vec<DemoRow>> {
    let _kernel = crate::kernel_lock::KernelLock::take()?;
    let lab = SniLab::new()?;
    let mut agent = lab.agent()?;
    let rows = rows(&lab, &mut agent)?;
    agent.stop()?;
    Ok(rows)
}
