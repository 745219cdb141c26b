//! The composition root: from plain [`SessionOptions`] (the configuration
//! already loaded and validated) to a running observation — kernel programs
//! loaded and attached, metrics wired, the Kubernetes index and the
//! conntrack view started — and then the pipeline into a sink until
//! shutdown, with the prober alongside. Shared by `run` and `watch`.
use std::{path::PathBuf, sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use egress_common::{DNS_PORT, MAP_EVENTS, MAP_STATS};
use tokio::sync::watch;

use crate::{
    attribution::{
        cgroup,
        kube::{KubeError, KubeIndex, KubeOptions},
        nat::{NatError, NatOptions, NatTable},
    },
    config::{Cidr, Config},
    errors::Chain,
    kernel::{self, LoadError, LoadOptions, Loaded},
    pipeline::{
        Output, Pipeline, Processor,
        dns_tracker::DnsTracker,
        enrich::{EnrichOptions, Enricher},
        flow_table::{FlowSettings, FlowTable},
        processor,
    },
    prober::{self, ProbeMetrics},
    records::{Clock, Record},
    sinks::{MetricError, Metrics},
};

/// On, off, or decided from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl From<Switch> for Option<bool> {
    fn from(s: Switch) -> Self {
        match s {
            Switch::Auto => None,
            Switch::On => Some(true),
            Switch::Off => Some(false),
        }
    }
}

/// Everything a session needs, as plain data: what the command line and the
/// configuration file said, validated.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub ring_bytes: u32,
    pub max_flows: u32,
    pub degraded_retransmits: u32,
    /// cgroup v2 mount (None: the one in /proc/self/mountinfo).
    pub cgroup_root: Option<PathBuf>,
    pub private_ranges: Vec<Cidr>,
    /// Proxy ports given on the command line (the chain's are added).
    pub proxy_ports: Vec<u16>,
    /// `--config`, loaded.
    pub config: Option<Arc<Config>>,
    pub kube: Switch,
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub conntrack: Switch,
    pub conntrack_netns: Vec<PathBuf>,
    pub disabled_programs: Vec<String>,
    /// `sys_enter_connect`: Auto attaches it only where socket-level load
    /// balancing may rewrite connect().
    pub connect_intent: Switch,
    /// Test hook: leave the ring unread this long after start.
    pub stall_reader: Option<Duration>,
}

impl SessionOptions {
    /// The proxy ports from the command line and the chain's hops.
    pub fn all_proxy_ports(&self) -> Vec<u16> {
        let mut p = self.proxy_ports.clone();
        p.extend(self.config.as_ref().map(|c| c.chain.proxy_ports()).unwrap_or_default());
        p.sort_unstable();
        p.dedup();
        p
    }

    /// What the kernel programs are loaded with.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            ring_bytes: self.ring_bytes,
            max_flows: self.max_flows,
            proxy_ports: self.all_proxy_ports(),
            cgroup_root: self.cgroup_root.clone().or_else(cgroup::find_root),
            dns_port: self.config.as_ref().map_or(DNS_PORT, |c| c.dns.port),
            disabled: self.disabled_programs.clone(),
            connect_intent: self.connect_intent.into(),
        }
    }

    fn enrich_options(&self) -> EnrichOptions {
        EnrichOptions {
            cgroup_root: self.cgroup_root.clone(),
            private_ranges: self.private_ranges.clone(),
            config: self.config.clone(),
        }
    }

    fn flow_settings(&self) -> FlowSettings {
        FlowSettings {
            degraded_retransmits: self.degraded_retransmits,
            max_flows: self.max_flows as usize,
            proxy_ports: self.all_proxy_ports(),
        }
    }

    /// Kubernetes metadata is wanted: asked for, or (auto) in a cluster or
    /// with a kubeconfig.
    pub fn kube_wanted(&self) -> bool {
        match self.kube {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => {
                std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || self.kubeconfig.is_some()
            }
        }
    }

    pub fn kube_options(&self) -> KubeOptions {
        KubeOptions { node_name: self.node_name.clone(), kubeconfig: self.kubeconfig.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Metrics(#[from] MetricError),
    #[error("{0} map missing from the object")]
    MapMissing(&'static str),
    #[error("{what}")]
    Map { what: &'static str, source: aya::maps::MapError },
    #[error("--kube=true")]
    Kube(#[source] KubeError),
    #[error("{flag}")]
    Nat { flag: &'static str, source: NatError },
    #[error("pipeline already started")]
    Started,
    #[error("starting the prober")]
    Prober(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Session {
    /// Keeps the programs attached; dropped last.
    pub kernel: Loaded,
    pub metrics: Arc<Metrics>,
    ring: Option<RingBuf<MapData>>,
    opts: SessionOptions,
    kube: KubeIndex,
    nat: NatTable,
}

/// Kubernetes metadata: on when asked, or (auto) when running in a cluster
/// or given a kubeconfig. Auto degrades to off with a warning.
async fn start_kube(
    opts: &SessionOptions,
    registry: &prometheus::Registry,
) -> Result<KubeIndex, SessionError> {
    if !opts.kube_wanted() {
        return Ok(KubeIndex::empty());
    }
    match KubeIndex::start(opts.kube_options(), registry).await {
        Ok(k) => Ok(k),
        Err(e) if opts.kube == Switch::On => Err(SessionError::Kube(e)),
        Err(e) => {
            tracing::warn!("Kubernetes metadata off: {}", Chain(&e));
            Ok(KubeIndex::empty())
        }
    }
}

/// Conntrack: in the --conntrack-netns namespaces (an error if they cannot be
/// followed), else (auto) in the agent's own, degrading to off with a warning.
fn start_nat(
    opts: &SessionOptions,
    registry: &prometheus::Registry,
) -> Result<NatTable, SessionError> {
    let nat = NatOptions { netns: opts.conntrack_netns.clone(), ..NatOptions::default() };
    let required = match opts.conntrack {
        Switch::Off => return Ok(NatTable::disabled()),
        Switch::On => Some("--conntrack=true"),
        Switch::Auto if !opts.conntrack_netns.is_empty() => Some("--conntrack-netns"),
        Switch::Auto => None,
    };
    match (NatTable::start(nat, registry), required) {
        (Ok(t), _) => Ok(t),
        (Err(source), Some(flag)) => Err(SessionError::Nat { flag, source }),
        (Err(e), None) => {
            tracing::warn!("NAT attribution off: {}", Chain(&e));
            Ok(NatTable::disabled())
        }
    }
}

/// Loading parses the kernel's BTF (several MiB, ours and aya's) and frees
/// it; glibc keeps freed heap pages mapped unless asked, and they would
/// stay in the agent's RSS for its whole life.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Session {
    pub async fn start(opts: SessionOptions) -> Result<Self, SessionError> {
        let mut kernel = kernel::load(&opts.load_options())?;
        release_freed_heap();
        let metrics = Arc::new(Metrics::new(opts.config.clone())?);
        processor::zero_error_series(&metrics);
        for p in &kernel.programs {
            metrics
                .program_attached
                .with_label_values(&[p.program.as_str()])
                .set(i64::from(p.attached));
            metrics
                .program_standby
                .with_label_values(&[p.program.as_str()])
                .set(i64::from(p.standby));
            if p.standby {
                tracing::info!(program = %p.program, "not attached: {}", p.error.as_deref().unwrap_or("not needed"));
            } else if let Some(e) = &p.error {
                tracing::warn!(program = %p.program, "not attached: {e} (lost: {})", p.role);
            }
        }
        for p in &kernel.kernel_problems {
            tracing::warn!("kernel offsets: {p}");
        }
        let stats = kernel.ebpf.take_map(MAP_STATS).ok_or(SessionError::MapMissing("STATS"))?;
        metrics.set_kernel_stats(
            PerCpuArray::try_from(stats)
                .map_err(|source| SessionError::Map { what: "STATS map", source })?,
        );
        let ring = kernel.ebpf.take_map(MAP_EVENTS).ok_or(SessionError::MapMissing("EVENTS"))?;
        let ring = RingBuf::try_from(ring)
            .map_err(|source| SessionError::Map { what: "EVENTS ring buffer", source })?;
        let kube = start_kube(&opts, &metrics.registry).await?;
        let nat = start_nat(&opts, &metrics.registry)?;
        Ok(Self { kernel, metrics, ring: Some(ring), opts, kube, nat })
    }

    pub fn attached_summary(&self) -> String {
        let programs = &self.kernel.programs;
        let n = programs.iter().filter(|p| p.attached).count();
        let standby = programs.iter().filter(|p| p.standby).count();
        format!("{n}/{} programs attached, {standby} on standby", programs.len())
    }

    /// Run the pipeline into `sink` until `shutdown` is true, then drain.
    /// With `probes:` configured, the prober runs alongside and gets the
    /// chain records of its own tunnels.
    pub async fn pipeline(
        &mut self,
        mut sink: impl FnMut(Output),
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let ring = self.ring.take().ok_or(SessionError::Started)?;
        let (probe_tx, probe_rx) = std::sync::mpsc::sync_channel(256);
        let mut prober = None;
        let mut probe_metrics = None;
        if let Some(plan) = self.opts.config.as_ref().and_then(|c| c.probes.clone()) {
            let m = Arc::new(ProbeMetrics::new(&self.metrics.registry)?);
            prober = Some(prober::spawn(plan, m.clone(), probe_rx).map_err(SessionError::Prober)?);
            probe_metrics = Some(m);
        }
        let sink = move |out: Output| {
            if let (Output::Record(Record::Chain(c)), Some(m)) = (&out, &probe_metrics)
                && c.synthetic
                && probe_tx.try_send(c.clone()).is_err()
            {
                m.records_dropped.inc();
            }
            sink(out);
        };
        let dns = self.opts.config.as_ref().map(|c| c.dns.clone()).unwrap_or_default();
        let dns = DnsTracker::new(dns.timeout, self.opts.max_flows as usize, Clock::new());
        let table = FlowTable::new(self.opts.flow_settings(), Clock::new());
        let enricher =
            Enricher::new(&self.opts.enrich_options(), self.kube.clone(), self.nat.clone());
        let processor = Processor::new(table, enricher, self.metrics.clone(), sink, dns);
        Pipeline::new(ring, processor, self.opts.stall_reader)?.run(shutdown).await?;
        drop(prober);
        Ok(())
    }
}

/// A shutdown channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> std::io::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // Nobody listening any more is fine: they are stopping already.
        let _ = tx.send(true);
    });
    Ok(rx)
}
