//! Flags of the peer API: the TLS files every agent holds (served by
//! `run --peer-addr`, presented by `explain --assemble`), where `run`
//! listens, and how `explain --assemble` finds and asks other agents.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    api::peer::{DEFAULT_PORT, DEFAULT_SERVER_NAME, tls::PeerTlsFiles},
    config::parse_duration,
};

#[derive(Debug, Clone, Default, Args)]
pub struct PeerTlsArgs {
    /// This agent's certificate for the peer API (PEM, signed by --peer-ca;
    /// deploy/tls/make-peer-certs.sh): served by `run --peer-addr`,
    /// presented as a client by `explain --assemble`.
    #[arg(long, env = "EGRESS_PEER_TLS_CERT", value_name = "PEM")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "EGRESS_PEER_TLS_KEY", value_name = "PEM")]
    pub peer_tls_key: Option<PathBuf>,
    /// The agents' CA (PEM): only clients with a certificate it signed are
    /// answered, and only servers with one are asked.
    #[arg(long, env = "EGRESS_PEER_CA", value_name = "PEM")]
    pub peer_ca: Option<PathBuf>,
}

impl PeerTlsArgs {
    /// All three files, or which are missing (`why`: what needs them).
    pub fn files(&self, why: &str) -> anyhow::Result<PeerTlsFiles> {
        match (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Ok(PeerTlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => {
                let missing: Vec<&str> = [
                    ("--peer-tls-cert", self.peer_tls_cert.is_none()),
                    ("--peer-tls-key", self.peer_tls_key.is_none()),
                    ("--peer-ca", self.peer_ca.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(f, _)| *f)
                .collect();
                anyhow::bail!(
                    "{why} needs {} (mutual TLS with the agents' certificates; there is no unauthenticated peer API)",
                    missing.join(", ")
                )
            }
        }
    }
}

/// `run`'s peer API.
#[derive(Debug, Clone, Args)]
pub struct PeerServeArgs {
    /// Serve the peer API here (e.g. the node's IP, $(HOST_IP):9465): other
    /// agents' `explain --assemble` ask it for this agent's records of one
    /// link. Mutual TLS only (--peer-tls-cert, --peer-tls-key, --peer-ca);
    /// off unless given.
    #[arg(long, env = "EGRESS_PEER_ADDR", value_name = "ADDR:PORT")]
    pub peer_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: PeerTlsArgs,
}

/// `explain --assemble`: the chain configuration, Kubernetes access, and
/// how to reach the other agents.
#[derive(Debug, Clone, Args)]
pub struct AssembleArgs {
    /// Assemble each attempt across agents: ask the agents on the hops'
    /// machines for their records of each link the attempt crossed (its
    /// exact address pair) and judge the chain from every vantage joined.
    #[arg(long)]
    pub assemble: bool,
    /// At most this many of the most recent attempts are assembled (and explained).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub assemble_max: usize,
    /// The chain configuration (YAML; the agent's own): which hop has which
    /// Service or `agents:` addresses.
    #[arg(long, env = "EGRESS_CONFIG")]
    pub config: Option<PathBuf>,
    /// kubeconfig for finding a Service hop's nodes (default: in-cluster,
    /// then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Port of the peer API on nodes found through a hop's Service.
    #[arg(long, env = "EGRESS_PEER_PORT", default_value_t = DEFAULT_PORT)]
    pub peer_port: u16,
    /// The name in the agents' certificate (verified).
    #[arg(long, env = "EGRESS_PEER_SERVER_NAME", default_value = DEFAULT_SERVER_NAME)]
    pub peer_server_name: String,
    /// Time for each agent's answer.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub peer_timeout: Duration,
    #[command(flatten)]
    pub tls: PeerTlsArgs,
}
