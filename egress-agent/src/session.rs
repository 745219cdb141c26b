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
    record::{Clock, FlowRecord},
};

pub struct Session {
    /// Keeps the programs attached; dropped last.
    pub probes: Probes,
    pub metrics: Arc<Metrics>,
    ring: Option<RingBuf<aya::maps::MapData>>,
    args: ProbeArgs,
    pub chain: Option<Arc<crate::chain::Chain>>,
}

impl Session {
    pub fn start(args: &ProbeArgs) -> anyhow::Result<Self> {
        let chain = args.chain()?;
        let mut probes = probes::load(&args.probe_options(chain.as_deref()))?;
        let metrics = Arc::new(Metrics::new());
        metrics.set_chain(chain.clone());
        for p in &probes.programs {
            metrics.program_attached.with_label_values(&[p.program.as_str()]).set(i64::from(p.attached));
            if let Some(e) = &p.error {
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
        Ok(Self { probes, metrics, ring: Some(ring), args: args.clone(), chain })
    }

    pub fn attached_summary(&self) -> String {
        let n = self.probes.programs.iter().filter(|p| p.attached).count();
        format!("{n}/{} programs attached", self.probes.programs.len())
    }

    /// Run the pipeline into `sink` until `shutdown` is true, then drain.
    pub async fn pipeline(&mut self, sink: impl FnMut(&FlowRecord), shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ring = self.ring.take().context("pipeline already started")?;
        let table = FlowTable::new(self.args.flow_settings(self.chain.as_deref()), Clock::new());
        let stall = self.args.stall_reader_ms.map(Duration::from_millis);
        let enricher = Enricher::new(&self.args.enrich_options(self.chain.clone()));
        Pipeline::new(ring, table, enricher, self.metrics.clone(), sink, stall)?.run(shutdown).await?;
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
