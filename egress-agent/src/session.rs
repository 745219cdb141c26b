//! A running observation: probes loaded and attached, metrics wired, the
//! pipeline ready to start. Shared by `run` and `watch`.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{PerCpuArray, RingBuf};
use egress_common::{MAP_EVENTS, MAP_STATS};
use tokio::sync::watch;

use crate::{
    cli::ProbeArgs,
    enrich::Enricher,
    flows::FlowTable,
    metrics::Metrics,
    pipeline::Pipeline,
    probes::{self, Probes},
    record::Clock,
};

pub struct Session {
    /// Keeps the programs attached; dropped last.
    pub probes: Probes,
    pub metrics: Arc<Metrics>,
    ring: Option<RingBuf<aya::maps::MapData>>,
    args: ProbeArgs,
    pub chain: Option<Arc<crate::chain::Chain>>,
    kube: crate::kube::KubeIndex,
    nat: crate::nat::NatTable,
}

/// Kubernetes metadata: on when asked, or (auto) when running in a cluster
/// or given a kubeconfig. Auto degrades to off with a warning.
async fn start_kube(args: &ProbeArgs, registry: &prometheus::Registry) -> anyhow::Result<crate::kube::KubeIndex> {
    use crate::cli::Toggle;
    let opts = crate::kube::KubeOptions { node_name: args.node_name.clone(), kubeconfig: args.kubeconfig.clone() };
    let auto_on = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || args.kubeconfig.is_some();
    match args.kube {
        Toggle::False => Ok(crate::kube::KubeIndex::empty()),
        Toggle::True => crate::kube::KubeIndex::start(opts, registry).await.context("--kube=true"),
        Toggle::Auto if !auto_on => Ok(crate::kube::KubeIndex::empty()),
        Toggle::Auto => Ok(crate::kube::KubeIndex::start(opts, registry).await.unwrap_or_else(|e| {
            tracing::warn!("Kubernetes metadata off: {e:#}");
            crate::kube::KubeIndex::empty()
        })),
    }
}

/// Conntrack: in the --conntrack-netns namespaces (an error if they cannot be
/// followed), else (auto) in the agent's own, degrading to off with a warning.
fn start_nat(args: &ProbeArgs, registry: &prometheus::Registry) -> anyhow::Result<crate::nat::NatTable> {
    use crate::cli::Toggle;
    let opts = crate::nat::NatOptions { netns: args.conntrack_netns.clone(), ..crate::nat::NatOptions::default() };
    match args.conntrack {
        Toggle::False => Ok(crate::nat::NatTable::disabled()),
        Toggle::True => crate::nat::NatTable::start(opts, registry).context("--conntrack=true"),
        Toggle::Auto if !args.conntrack_netns.is_empty() => crate::nat::NatTable::start(opts, registry).context("--conntrack-netns"),
        Toggle::Auto => Ok(crate::nat::NatTable::start(opts, registry).unwrap_or_else(|e| {
            tracing::warn!("NAT attribution off: {e:#}");
            crate::nat::NatTable::disabled()
        })),
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
    pub async fn start(args: &ProbeArgs) -> anyhow::Result<Self> {
        let chain = args.chain()?;
        let mut probes = probes::load(&args.probe_options(chain.as_deref()))?;
        release_freed_heap();
        let metrics = Arc::new(Metrics::new());
        metrics.set_chain(chain.clone());
        for p in &probes.programs {
            metrics.program_attached.with_label_values(&[p.program.as_str()]).set(i64::from(p.attached));
            metrics.program_standby.with_label_values(&[p.program.as_str()]).set(i64::from(p.standby));
            if p.standby {
                tracing::info!(program = %p.program, "not attached: {}", p.error.as_deref().unwrap_or("not needed"));
            } else if let Some(e) = &p.error {
                tracing::warn!(program = %p.program, "not attached: {e} (lost: {})", p.role);
            }
        }
        for p in &probes.kernel_problems {
            tracing::warn!("kernel offsets: {p}");
        }
        let stats = probes.ebpf.take_map(MAP_STATS).context("STATS map missing from the object")?;
        metrics.set_kernel_stats(PerCpuArray::try_from(stats).context("STATS map")?);
        let ring = probes.ebpf.take_map(MAP_EVENTS).context("EVENTS map missing from the object")?;
        let ring = RingBuf::try_from(ring).context("EVENTS ring buffer")?;
        let kube = start_kube(args, &metrics.registry).await?;
        let nat = start_nat(args, &metrics.registry)?;
        Ok(Self { probes, metrics, ring: Some(ring), args: args.clone(), chain, kube, nat })
    }

    pub fn attached_summary(&self) -> String {
        let n = self.probes.programs.iter().filter(|p| p.attached).count();
        let standby = self.probes.programs.iter().filter(|p| p.standby).count();
        format!("{n}/{} programs attached, {standby} on standby", self.probes.programs.len())
    }

    /// Run the pipeline into `sink` until `shutdown` is true, then drain.
    /// With `probes:` configured, the prober runs alongside and gets the
    /// chain records of its own tunnels.
    pub async fn pipeline(&mut self, mut sink: impl FnMut(crate::pipeline::Output), shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ring = self.ring.take().context("pipeline already started")?;
        let (probe_tx, probe_rx) = std::sync::mpsc::sync_channel(256);
        let mut prober = None;
        let mut probe_metrics = None;
        if let Some(plan) = self.chain.as_ref().and_then(|c| c.probes.clone()) {
            let m = Arc::new(crate::prober::ProbeMetrics::new(&self.metrics.registry).context("probe metrics")?);
            prober = Some(crate::prober::spawn(plan, m.clone(), probe_rx).context("starting the prober")?);
            probe_metrics = Some(m);
        }
        let sink = move |out: crate::pipeline::Output| {
            if let (crate::pipeline::Output::Chain(c), Some(m)) = (&out, &probe_metrics)
                && c.synthetic
                && probe_tx.try_send(c.clone()).is_err()
            {
                m.records_dropped.inc();
            }
            sink(out)
        };
        let dns = self.chain.as_ref().map(|c| c.dns.clone()).unwrap_or_default();
        let dns = crate::dns::DnsTracker::new(dns.timeout, self.args.max_flows as usize, Clock::new());
        let table = FlowTable::new(self.args.flow_settings(self.chain.as_deref()), Clock::new());
        let stall = self.args.stall_reader_ms.map(Duration::from_millis);
        let enricher = Enricher::new(&self.args.enrich_options(self.chain.clone()), self.kube.clone(), self.nat.clone());
        Pipeline::new(ring, table, enricher, self.metrics.clone(), sink, stall, dns)?.run(shutdown).await?;
        drop(prober);
        Ok(())
    }
}

/// A shutdown channel that turns true on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> anyhow::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}
