//! What each vantage can know of a fault, derived from where the fault is
//! and what each machine sees, never from what the agents said:
//!
//! - a machine the request never reached (no connection was accepted
//!   there) has nothing to say about it;
//! - a failure reaches every vantage before it, as the answer relayed back
//!   (the status, the proxy's error and errno, who made it): each vantage it
//!   reached judges it as the full view does;
//! - a degradation (a retransmitted SYN) is known only to the machine whose
//!   socket retransmitted: the others saw a healthy connection.
use std::fmt;

/// The vantages of the lab, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vantage {
    /// Node A: the app pod's node.
    Client,
    /// Node B: the hop-1 Squid pod's node.
    Hop1,
    /// The "GCE VM": hop-2 Squid.
    Hop2,
}

impl Vantage {
    pub const ALL: [Vantage; 3] = [Vantage::Client, Vantage::Hop1, Vantage::Hop2];

    pub fn position(self) -> u8 {
        match self {
            Vantage::Client => 0,
            Vantage::Hop1 => 1,
            Vantage::Hop2 => 2,
        }
    }
}

/// What a fault does, as placed in the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultModel {
    /// The full view: `ok`, `failed at HOP: REASON` or `degraded at HOP: retransmits`.
    pub full: String,
    /// The deepest vantage that accepted the request's connection: the
    /// client alone (its connect failed, it never connected, it bypassed
    /// the chain), hop 1, or hop 2.
    pub reaches: Vantage,
    /// For a degradation: the vantage whose own socket retransmitted.
    pub degraded_by: Option<Vantage>,
}

/// What a vantage is expected to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Its own verdict of this request.
    Says(String),
    /// No record: the request never reached the machine.
    Nothing,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Says(s) => f.write_str(s),
            Expect::Nothing => f.write_str("(not reached)"),
        }
    }
}

impl FaultModel {
    pub fn new(full: &str, reaches: Vantage) -> Self {
        Self { full: full.into(), reaches, degraded_by: None }
    }

    pub fn degraded(full: &str, reaches: Vantage, by: Vantage) -> Self {
        Self { full: full.into(), reaches, degraded_by: Some(by) }
    }

    /// What `v` can know.
    pub fn expect(&self, v: Vantage) -> Expect {
        if v > self.reaches {
            return Expect::Nothing;
        }
        match self.degraded_by {
            Some(by) if by != v => Expect::Says("ok".into()),
            _ => Expect::Says(self.full.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Vantage::*, *};

    fn all(m: &FaultModel) -> Vec<String> {
        Vantage::ALL.iter().map(|v| m.expect(*v).to_string()).collect()
    }

    #[test]
    fn each_vantage_knows_what_reached_it() {
        // Hop 2 refuses: hop 1 saw its own connect refused, the client the
        // 503 hop 1 made; hop 2 has no connection.
        let m = FaultModel::new("failed at gce-proxy: refused", Hop1);
        assert_eq!(
            all(&m),
            ["failed at gce-proxy: refused", "failed at gce-proxy: refused", "(not reached)"]
        );
        // The origin refuses: every machine reached judges it.
        let m = FaultModel::new("failed at internet: refused", Hop2);
        assert!(all(&m).iter().all(|s| s == "failed at internet: refused"));
        // The client could not connect: nobody else knows.
        let m = FaultModel::new("failed at gke-squid: timeout", Client);
        assert_eq!(all(&m)[1..], ["(not reached)", "(not reached)"]);
        // A SYN lost between hop 1 and hop 2: only hop 1 retransmitted.
        let m = FaultModel::degraded("degraded at gce-proxy: retransmits", Hop2, Hop1);
        assert_eq!(all(&m), ["ok", "degraded at gce-proxy: retransmits", "ok"]);
        assert_eq!(all(&FaultModel::new("ok", Hop2)), ["ok", "ok", "ok"]);
    }
}
