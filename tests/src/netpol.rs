//! A lab NetworkPolicy engine: iptables rules generated from the same
//! `networking.k8s.io/v1` objects the fake API server serves, enforcing the
//! EGRESS side for one pod the way a policy engine does (Calico,
//! kube-network-policies): a packet the pod sends is dropped unless some
//! egress rule of some policy selecting it allows it.
//!
//! This is deliberately a separate, small implementation (not the agent's
//! evaluator): the test checks the agent's verdicts against what this
//! datapath did. What it supports is what the lab's policies use, and it
//! refuses anything else instead of guessing:
//! - pod selection by `podSelector.matchLabels` (`{}`: every pod), in the
//!   policy's namespace; `policyTypes` as the API defaults it;
//! - `to` peers with `ipBlock` (`cidr`, `except`), or no `to` (anywhere);
//! - `ports` with `protocol` (TCP/UDP), a numeric `port` and `endPort`, or none.
//!
//! Output: an `iptables-restore` text for the `filter` table of the router
//! the pod's traffic is forwarded through, jumping from `FORWARD` for packets
//! from the pod's address. Replies (conntrack ESTABLISHED) pass.
use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::Netns;

/// The pod the rules are for.
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ip: &'a str,
}

fn selects(policy: &Value, pod: &PodRef<'_>) -> anyhow::Result<bool> {
    if policy["metadata"]["namespace"].as_str() != Some(pod.namespace) {
        return Ok(false);
    }
    let sel = &policy["spec"]["podSelector"];
    ensure!(sel.get("matchExpressions").is_none(), "lab engine: matchExpressions not supported");
    Ok(sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| pod.labels.get(k).map(String::as_str) == v.as_str()))
}

fn governs_egress(policy: &Value) -> bool {
    let spec = &policy["spec"];
    match spec["policyTypes"].as_array() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == "Egress"),
        _ => spec["egress"].as_array().is_some_and(|r| !r.is_empty()),
    }
}

fn name(policy: &Value) -> String {
    format!(
        "{}/{}",
        policy["metadata"]["namespace"].as_str().unwrap_or(""),
        policy["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// `-p tcp --dport a:b` fragments, one per port entry; `[""]` for any port.
fn port_matches(rule: &Value) -> anyhow::Result<Vec<String>> {
    let Some(ports) = rule["ports"].as_array().filter(|p| !p.is_empty()) else {
        return Ok(vec![String::new()]);
    };
    ports
        .iter()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
            ensure!(proto == "tcp" || proto == "udp", "lab engine: protocol {proto}");
            Ok(match (&p["port"], p["endPort"].as_u64()) {
                (Value::Null, None) => format!("-p {proto}"),
                (Value::Number(n), None) => format!("-p {proto} --dport {n}"),
                (Value::Number(n), Some(end)) => format!("-p {proto} --dport {n}:{end}"),
                (other, _) => bail!("lab engine: port {other} not supported (named port?)"),
            })
        })
        .collect()
}

/// The `iptables-restore` text enforcing `policies` on `pod`'s egress, or
/// `None` when no policy selects it for egress (not isolated: no rules).
pub fn egress_rules(policies: &[Value], pod: &PodRef<'_>) -> anyhow::Result<Option<String>> {
    let mut isolating = Vec::new();
    for p in policies.iter().filter(|p| governs_egress(p)) {
        if selects(p, pod)? {
            isolating.push(p);
        }
    }
    if isolating.is_empty() {
        return Ok(None);
    }
    let mut chains = vec!["EO-NP-EGRESS".to_string()];
    let mut lines = vec![
        format!("-A FORWARD -s {}/32 -j EO-NP-EGRESS", pod.ip),
        "-A EO-NP-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_string(),
    ];
    for (pi, p) in isolating.iter().enumerate() {
        let comment = name(p);
        for (ri, rule) in p["spec"]["egress"].as_array().into_iter().flatten().enumerate() {
            let ports = port_matches(rule).with_context(|| comment.clone())?;
            let peers: Vec<Option<&Value>> = match rule["to"].as_array() {
                Some(to) if !to.is_empty() => to.iter().map(Some).collect(),
                _ => vec![None],
            };
            for (ti, peer) in peers.into_iter().enumerate() {
                // One chain per peer: its `except`s RETURN, then its cidr × ports ACCEPT.
                let chain = format!("EO-NP-{pi}-{ri}-{ti}");
                lines.push(format!("-A EO-NP-EGRESS -j {chain}"));
                let cidr = match peer {
                    None => "0.0.0.0/0".to_string(),
                    Some(peer) => {
                        let block = &peer["ipBlock"];
                        ensure!(
                            block.is_object()
                                && peer.get("podSelector").is_none()
                                && peer.get("namespaceSelector").is_none(),
                            "{comment}: lab engine: only ipBlock peers"
                        );
                        for e in block["except"].as_array().into_iter().flatten() {
                            let e = e.as_str().context("except")?;
                            lines.push(format!("-A {chain} -d {e} -j RETURN"));
                        }
                        block["cidr"].as_str().context("cidr")?.to_string()
                    }
                };
                for port in &ports {
                    lines.push(format!(
                        "-A {chain} -d {cidr} {port} -m comment --comment \"{comment}\" -j ACCEPT"
                    ));
                }
                chains.push(chain);
            }
        }
    }
    lines.push("-A EO-NP-EGRESS -j DROP".to_string());
    let mut text = String::from("*filter\n");
    for c in &chains {
        text.push_str(&format!(":{c} - [0:0]\n"));
    }
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    Ok(Some(text))
}

/// Loads `text` into `router`'s filter table (the namespace's own tables:
/// gone with the namespace).
pub fn load(router: &Netns, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = router
        .command(&["iptables-restore", "-w"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iptables-restore failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_follow_the_policies() {
        let policies = [
            json!({"metadata": {"namespace": "prod", "name": "deny"},
                   "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
            json!({"metadata": {"namespace": "prod", "name": "allow"},
                   "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                            "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.3/32"]}}],
                                        "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8090}]}]}}),
            // Ingress only: not egress isolation.
            json!({"metadata": {"namespace": "prod", "name": "ingress"},
                   "spec": {"podSelector": {}, "egress": []}}),
        ];
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let text =
            egress_rules(&policies, &PodRef { namespace: "prod", labels: &labels, ip: "10.0.0.2" })
                .expect("supported")
                .expect("isolated");
        assert_eq!(
            text,
            "*filter\n:EO-NP-EGRESS - [0:0]\n:EO-NP-1-0-0 - [0:0]\n\
             -A FORWARD -s 10.0.0.2/32 -j EO-NP-EGRESS\n\
             -A EO-NP-EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A EO-NP-EGRESS -j EO-NP-1-0-0\n\
             -A EO-NP-1-0-0 -d 192.0.2.3/32 -j RETURN\n\
             -A EO-NP-1-0-0 -d 192.0.2.0/24 -p tcp --dport 8000:8090 -m comment --comment \"prod/allow\" -j ACCEPT\n\
             -A EO-NP-EGRESS -j DROP\nCOMMIT\n"
        );
        let other: BTreeMap<String, String> = BTreeMap::new();
        let db = PodRef { namespace: "data", labels: &other, ip: "10.0.0.3" };
        assert_eq!(egress_rules(&policies, &db).expect("supported"), None, "not isolated");
    }
}
