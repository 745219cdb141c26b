//! `explain --assemble`: each recent attempt walked across agents
//! ([`crate::assembly`]) and printed leg by leg with the vantage that
//! recorded each leg and the agent that holds it.
use anyhow::Context as _;

use super::{
    attempt::Attempt,
    peer_args::AssembleArgs,
    table::{fit, latency},
};
use crate::{
    assembly::{
        discover::Directory,
        fetch::PeerClient,
        judge::View,
        walk::{Walked, walk},
    },
    attribution::kube::{KubeOptions, client_config},
    config::Config,
    records::{FlowRecord, Record, Verdict},
};

/// Who this agent is in the assembled view.
pub const LOCAL: &str = "local";

/// The directory of hops' agents from the flags.
pub async fn directory(args: &AssembleArgs) -> anyhow::Result<Directory> {
    let path = args.config.as_deref().context(
        "--assemble needs the chain configuration (--config, or EGRESS_CONFIG as in the agent's pod)",
    )?;
    let config = Config::load(path)?;
    let files = args.tls.files("--assemble")?;
    let client = PeerClient::new(&files, &args.peer_server_name, args.peer_timeout)?;
    let needs_kube = config.chain.hops.iter().any(|h| h.agents.is_empty() && h.service.is_some());
    let (kube, kube_error) = if needs_kube {
        let opts = KubeOptions { node_name: None, kubeconfig: args.kubeconfig.clone() };
        match client_config(&opts).await.map(kube::Client::try_from) {
            Ok(Ok(c)) => (Some(c), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(e) => (None, Some(crate::errors::Chain(&e).to_string())),
        }
    } else {
        (None, None)
    };
    Ok(Directory { chain: config.chain, kube, kube_error, peer_port: args.peer_port, client })
}

/// Assemble the most recent attempts (at most `--assemble-max`): the
/// older ones are left out of the explanation, which says so.
pub async fn assemble(
    records: &[Record],
    found: Vec<Attempt>,
    args: &AssembleArgs,
) -> anyhow::Result<Vec<Attempt>> {
    let dir = directory(args).await?;
    let skip = found.len().saturating_sub(args.assemble_max.max(1));
    if skip > 0 {
        eprintln!(
            "explain --assemble: the {} most recent of {} attempts (--assemble-max)",
            found.len() - skip,
            found.len()
        );
    }
    let mut out = Vec::new();
    for mut a in found.into_iter().skip(skip) {
        let client = a.flow_id.as_deref().and_then(|id| client_leg(records, id));
        let w = match client {
            Some(f) => walk(f, LOCAL, &dir).await,
            None => alone(&a),
        };
        a.verdict = w.verdict;
        a.failed_hop = w.failed_hop.clone();
        a.reason = w.reason;
        a.vantage = "assembled";
        a.assembled = Some(w);
        out.push(a);
    }
    Ok(out)
}

/// The connect record of the client leg `flow_id` (its connect phase).
fn client_leg<'a>(records: &'a [Record], flow_id: &str) -> Option<&'a FlowRecord> {
    records.iter().find_map(|r| match r {
        Record::Flow(f) if f.flow_id == flow_id && f.phase == crate::records::Phase::Connect => {
            Some(f)
        }
        _ => None,
    })
}

/// An attempt with no connection to follow (a failed lookup): its own view.
fn alone(a: &Attempt) -> Walked {
    let view = View {
        vantage: "client".into(),
        agent: LOCAL.into(),
        position: 0,
        hop: None,
        link: None,
        verdict: a.verdict,
        failed_hop: a.failed_hop.clone(),
        reason: a.reason,
        proxy_status: a.proxy_status,
        evidence: None,
    };
    Walked {
        verdict: a.verdict,
        failed_hop: a.failed_hop.clone(),
        reason: a.reason,
        decided_by: (a.verdict != Verdict::Ok).then(|| format!("client ({LOCAL})")),
        views: vec![view],
        legs: Vec::new(),
        notes: vec!["no connection was made: there is no link to follow".into()],
    }
}

/// The assembled chain of one attempt, for the table output.
pub fn render(w: &Walked) -> String {
    let mut o = format!(
        "  {:<8} {:<14} {:<26} {:<9} {:<21} {:<6} {:<9} {:<4} {}\n",
        "VANTAGE",
        "AGENT",
        "LEG",
        "VERDICT",
        "REASON",
        "STATUS",
        "LATENCY",
        "RETX",
        "LINK (PEER -> LOCAL)"
    );
    for l in &w.legs {
        o.push_str(&format!(
            "  {:<8} {:<14} {:<26} {:<9} {:<21} {:<6} {:<9} {:<4} {}\n",
            l.vantage,
            fit(&l.agent, 14),
            fit(&if l.accepted { format!("{} (accepted)", l.leg) } else { l.leg.clone() }, 26),
            l.verdict.as_str(),
            l.reason.map_or("-", |r| r.as_str()),
            l.proxy_status.map_or_else(|| "-".into(), |s| s.to_string()),
            latency(l.latency_ms),
            l.retransmits,
            l.link.map_or_else(|| "-".into(), |k| k.to_string()),
        ));
    }
    for v in &w.views {
        let said = match (&v.failed_hop, v.reason) {
            (Some(h), Some(r)) if v.verdict != Verdict::Ok => {
                format!("{} at {h}: {}", v.verdict.as_str(), r.as_str())
            }
            _ => v.verdict.as_str().to_string(),
        };
        let at = v.hop.as_deref().map_or_else(String::new, |h| format!(" at {h}"));
        let why = v.evidence.as_deref().map_or_else(String::new, |e| format!(" — {e}"));
        o.push_str(&format!("  {} vantage{at} ({}): {said}{why}\n", v.vantage, v.agent));
    }
    if let Some(d) = &w.decided_by {
        o.push_str(&format!("  decided by the {d}\n"));
    }
    for n in &w.notes {
        o.push_str(&format!("  note: {n}\n"));
    }
    o
}
