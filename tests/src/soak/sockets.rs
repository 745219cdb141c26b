//! The sockets the soak counts to prove the agent's tracked flows drain:
//! active opens in every network namespace, read with `ss`.
/// Network namespaces to look into: the host's (`None`) and every named one.
fn namespaces() -> Vec<Option<String>> {
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    std::iter::once(None)
        .chain(
            list.lines().filter_map(|l| l.split_whitespace().next()).map(|n| Some(n.to_string())),
        )
        .collect()
}

fn ss(ns: Option<&str>, args: &[&str]) -> String {
    let mut c = std::process::Command::new(if ns.is_some() { "ip" } else { "ss" });
    if let Some(ns) = ns {
        c.args(["netns", "exec", ns, "ss"]);
    }
    c.args(args);
    c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Active-open TCP sockets on the host: in every network namespace, those
/// not listening, not in TIME-WAIT (the agent saw their close) and not on
/// a port that namespace listens on (the accepted side).
pub(super) fn active_open_sockets() -> u64 {
    namespaces().iter().map(|ns| count_active(&ss(ns.as_deref(), &["-Htan"]))).sum()
}

/// [`active_open_sockets`] of one namespace's `ss -Htan`.
fn count_active(text: &str) -> u64 {
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    let port =
        |r: &Vec<&str>| r.get(3).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p.to_string());
    let listening: std::collections::HashSet<String> =
        rows.iter().filter(|r| r.first() == Some(&"LISTEN")).filter_map(port).collect();
    rows.iter()
        .filter(|r| !matches!(r.first(), Some(&"LISTEN" | &"TIME-WAIT") | None))
        .filter(|r| port(r).is_some_and(|p| !listening.contains(&p)))
        .count() as u64
}

/// Every TCP socket not listening and not in TIME-WAIT, in the host's
/// network namespace and each named one, with its process (`ss -tnp`).
pub(super) fn sockets_snapshot() -> String {
    let mut out = String::new();
    for ns in namespaces() {
        let text = ss(ns.as_deref(), &["-Htnp", "state", "connected", "exclude", "time-wait"]);
        if !text.trim().is_empty() {
            out.push_str(&format!("{}:\n{text}", ns.as_deref().unwrap_or("host")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_opens_are_neither_listening_nor_accepted_nor_time_wait() {
        let ss = "LISTEN     0 128 0.0.0.0:3128 0.0.0.0:*\n\
                  ESTAB      0 0   10.0.2.10:37810 100.64.1.2:3128\n\
                  ESTAB      0 0   [::ffff:10.0.2.10]:3128 [::ffff:10.0.1.10]:38142\n\
                  FIN-WAIT-1 0 1   100.64.2.2:33706 198.19.1.10:443\n\
                  SYN-SENT   0 1   10.0.1.10:40000 198.18.0.9:443\n\
                  TIME-WAIT  0 0   127.0.0.1:38463 127.0.0.1:47778\n";
        assert_eq!(count_active(ss), 3);
        assert_eq!(count_active(""), 0);
    }
}
