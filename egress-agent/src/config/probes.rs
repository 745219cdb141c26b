//! The `probes:` section validated: the targets the active prober reaches
//! through the chain's first hop, how often, and whether it completes a TLS
//! handshake inside the tunnel.
use std::{path::PathBuf, time::Duration};

use super::{Hop, SettingsError, duration, file::ProbesConfig};

/// At most this many probe targets: the prober is a health signal, not a load test.
pub const MAX_PROBE_TARGETS: usize = 16;
/// No probe interval below this.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A validated `probes:` section.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub targets: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: f64,
    /// `tls: true`: the TLS handshake with the target inside the tunnel.
    pub tls: Option<ProbeTls>,
    pub proxy: String,
    pub netns: Option<PathBuf>,
    /// Name of the first hop (the hop a failed connect to `proxy` is at).
    pub first_hop: String,
    /// Every hop's name in chain order (which of two verdicts names the
    /// deeper hop).
    pub hops: Vec<String>,
}

/// How a TLS probe verifies the target's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeTls {
    /// PEM file of CA certificates trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// Verify nothing: any certificate is accepted (never the default).
    pub insecure_skip_verify: bool,
}

impl ProbeSettings {
    pub(super) fn from_file(c: &ProbesConfig, hops: &[Hop]) -> Result<Self, SettingsError> {
        if c.targets.is_empty() || c.targets.len() > MAX_PROBE_TARGETS {
            return Err(SettingsError::ProbeTargetCount(c.targets.len()));
        }
        for t in &c.targets {
            let ok = t
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok || t.contains(char::is_whitespace) {
                return Err(SettingsError::ProbeTarget(t.clone()));
            }
        }
        let interval = duration(c.interval.as_deref(), "probes.interval", Duration::from_secs(30))?;
        let timeout = duration(c.timeout.as_deref(), "probes.timeout", Duration::from_secs(10))?;
        if interval < MIN_PROBE_INTERVAL {
            return Err(SettingsError::ProbeInterval(interval));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(SettingsError::ProbeTimeout(timeout));
        }
        let jitter = c.jitter.unwrap_or(0.1);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(SettingsError::ProbeJitter(jitter));
        }
        let first = hops.first().ok_or(SettingsError::ProbeNoChain)?;
        let proxy = match &c.proxy {
            Some(p) => p.clone(),
            None => first
                .client_address()
                .map(|a| a.to_string())
                .ok_or_else(|| SettingsError::ProbeNoProxy(first.name.clone()))?,
        };
        let tls = if c.tls {
            if c.tls_ca.is_some() && c.tls_insecure_skip_verify {
                return Err(SettingsError::ProbeTlsCaUnused);
            }
            Some(ProbeTls {
                ca: c.tls_ca.clone(),
                insecure_skip_verify: c.tls_insecure_skip_verify,
            })
        } else if c.tls_ca.is_some() {
            return Err(SettingsError::ProbeTlsOption("tls_ca"));
        } else if c.tls_insecure_skip_verify {
            return Err(SettingsError::ProbeTlsOption("tls_insecure_skip_verify"));
        } else {
            None
        };
        Ok(Self {
            targets: c.targets.clone(),
            interval,
            timeout,
            jitter,
            tls,
            proxy,
            netns: c.netns.clone(),
            first_hop: first.name.clone(),
            hops: hops.iter().map(|h| h.name.clone()).collect(),
        })
    }
}
