//! The composition root: from plain [`SessionOptions`] (the configuration
//! already loaded and validated) to a running observation — kernel programs
//! loaded and attached, metrics wired, the Kubernetes index and the
//! conntrack view started — and then the pipeline into a sink until
//! shutdown, with the prober alongside. Shared by `run` and `watch`.
use std::{path::PathBuf, sync::Arc, time::Duration};

use aya::maps::{LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key};
use egress_common::{
    BUILTIN_PRIVATE_V4, DNS_PORT, MAP_CAPTURE, MAP_EVENTS, MAP_PRIVATE_NETS, MAP_STATS,
    PRIVATE_NETS_MAX, TLS_PORT,
};
use tokio::sync::watch;

use crate::{
    attribution::{
        cgroup,
        kube::{KubeError, KubeIndex, KubeOptions},
        nat::{NatError, NatOptions, NatTable},
    },
    config::{Cidr, Config},
    errors::Chain,
    kernel::{
        self, LoadError, LoadOptions, Loaded,
        control::{Control, ControlError, ControlSettings},
    },
    pipeline::{
        Output, Pipeline, Processor, client_leg,
        dns_tracker::DnsTracker,
        enrich::{EnrichOptions, Enricher},
        flow_table::{FlowSettings, FlowTable},
        gateway::{self, GatewayVantage},
        processor,
        ring::Verbosity,
    },
    prober::{self, ProbeMetrics},
    records::Clock,
    sinks::{MetricError, Metrics},
};

/// How long an error answer from a proxy may wait for the rest of its body
/// (where a proxy may name itself) or for the flow's end.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

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
    /// Owner × destination keys the kernel counts clean flows under, per map.
    pub agg_keys: u32,
    pub degraded_retransmits: u32,
    /// Every flow as an event, clean ones too (`--log-flows`, a standalone
    /// watch); else clean flows are counted in the kernel unless a client
    /// of the local API is watching.
    pub verbose: bool,
    /// DNS messages a cgroup may have captured per second, and in a burst.
    pub dns_rate: u32,
    pub dns_burst: u32,
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
    /// Test hook: act as if every ESTABLISHED's run were skipped.
    pub skip_established: bool,
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
            agg_keys: self.agg_keys,
            proxy_ports: self.all_proxy_ports(),
            cgroup_root: self.cgroup_root.clone().or_else(cgroup::find_root),
            dns_port: self.config.as_ref().map_or(DNS_PORT, |c| c.dns.port),
            tls_ports: self.config.as_ref().map_or_else(|| vec![TLS_PORT], |c| c.tls.ports.clone()),
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
            answer_wait_ns: ANSWER_WAIT.as_nanos() as u64,
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
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("--kube=true")]
    Kube(#[source] KubeError),
    #[error("{flag}")]
    Nat { flag: &'static str, source: NatError },
    #[error("pipeline already started")]
    Started,
    #[error("starting the prober")]
    Prober(#[source] prober::SpawnError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Session {
    /// Keeps the programs attached; dropped last.
    pub kernel: Loaded,
    pub metrics: Arc<Metrics>,
    rings: Option<(RingBuf<MapData>, RingBuf<MapData>, Control)>,
    /// Clients of the local API streaming records: while any, every flow
    /// is an event.
    pub watchers: Arc<std::sync::atomic::AtomicUsize>,
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
    let snat_watch = opts.config.as_ref().map(|c| gateway::egress_ips(&c.chain));
    let nat = NatOptions {
        netns: opts.conntrack_netns.clone(),
        snat_watch: snat_watch.unwrap_or_default(),
        ..NatOptions::default()
    };
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

/// Adopt the sockets open before this start (after every hook attached:
/// nothing falls between the two).
fn adopt(kernel: &mut Loaded, metrics: &Metrics) {
    for kind in ["egress", "accepted", "owner_unknown"] {
        metrics.adopted_sockets.with_label_values(&[kind]).reset();
    }
    if !kernel.programs.iter().any(|p| p.program == "adopt_sockets" && p.attached) {
        tracing::info!(
            "sockets open before this start are not adopted: adopt_sockets not loaded (`check` says why)"
        );
        return;
    }
    match kernel::adopt::run(&mut kernel.ebpf) {
        Ok(a) => {
            metrics.adopted_sockets.with_label_values(&["egress"]).inc_by(a.egress);
            metrics.adopted_sockets.with_label_values(&["accepted"]).inc_by(a.accepted);
            metrics.adopted_sockets.with_label_values(&["owner_unknown"]).inc_by(a.owner_unknown);
            tracing::info!(
                egress = a.egress,
                accepted = a.accepted,
                owner_unknown = a.owner_unknown,
                "adopted the TCP sockets open before this start"
            );
        }
        Err(e) => tracing::warn!("sockets open before this start are not adopted: {}", Chain(&e)),
    }
}

impl Session {
    pub async fn start(opts: SessionOptions) -> Result<Self, SessionError> {
        let mut kernel = kernel::load(&opts.load_options())?;
        release_freed_heap();
        let metrics = Arc::new(Metrics::new(opts.config.clone())?);
        processor::zero_error_series(&metrics);
        adopt(&mut kernel, &metrics);
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
        metrics.set_run_skips(kernel::run_skips::RunSkips::new(&kernel.ebpf));
        let stats = kernel.ebpf.take_map(MAP_STATS).ok_or(SessionError::MapMissing("STATS"))?;
        metrics.set_kernel_stats(
            PerCpuArray::try_from(stats)
                .map_err(|source| SessionError::Map { what: "STATS map", source })?,
            opts.max_flows,
        );
        let ring = |ebpf: &mut aya::Ebpf, name: &'static str| {
            let map = ebpf.take_map(name).ok_or(SessionError::MapMissing(name))?;
            RingBuf::try_from(map).map_err(|source| SessionError::Map { what: name, source })
        };
        let events = ring(&mut kernel.ebpf, MAP_EVENTS)?;
        let capture = ring(&mut kernel.ebpf, MAP_CAPTURE)?;
        write_private_nets(&mut kernel.ebpf, &opts)?;
        let control = Control::new(
            &mut kernel.ebpf,
            ControlSettings {
                verbose: opts.verbose,
                degraded_retransmits: opts.degraded_retransmits,
                dns_rate: opts.dns_rate,
                dns_burst: opts.dns_burst,
                public_events: opts.config.as_ref().is_some_and(|c| c.chain.bypass.is_some()),
                skip_established: opts.skip_established,
            },
        )?;
        let kube = start_kube(&opts, &metrics.registry).await?;
        let nat = start_nat(&opts, &metrics.registry)?;
        Ok(Self {
            kernel,
            metrics,
            rings: Some((events, capture, control)),
            watchers: Arc::default(),
            opts,
            kube,
            nat,
        })
    }

    pub fn attached_summary(&self) -> String {
        let programs = &self.kernel.programs;
        let n = programs.iter().filter(|p| p.attached).count();
        let standby = programs.iter().filter(|p| p.standby).count();
        format!("{n}/{} programs attached, {standby} on standby", programs.len())
    }

    /// Run the pipeline into `sink` until `shutdown` is true, then drain.
    /// With `probes:` configured, the prober runs alongside and gets the
    /// chain records and client legs of its own tunnels.
    pub async fn pipeline(
        &mut self,
        mut sink: impl FnMut(Output),
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let (events, capture, control) = self.rings.take().ok_or(SessionError::Started)?;
        let (probe_tx, probe_rx) = std::sync::mpsc::sync_channel(256);
        let mut prober = None;
        let mut probe_metrics = None;
        if let Some(plan) = self.opts.config.as_ref().and_then(|c| c.probes.clone()) {
            let m = Arc::new(ProbeMetrics::new(&self.metrics.registry)?);
            prober = Some(prober::spawn(plan, m.clone(), probe_rx).map_err(SessionError::Prober)?);
            probe_metrics = Some(m);
        }
        let sink = move |out: Output| {
            if let (Output::Record(r), Some(m)) = (&out, &probe_metrics)
                && prober::Judged::wants(r)
                && probe_tx.try_send(r.clone()).is_err()
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
        let hops = self.opts.config.as_ref().map(|c| client_leg::identities(&c.chain));
        let routed = self.opts.config.as_ref().map(|c| client_leg::routed(&c.chain));
        let gateway = match self.opts.config.as_ref() {
            Some(c) => GatewayVantage::new(&c.chain, self.nat.clone(), &self.metrics.registry)?,
            None => None,
        };
        let processor = Processor::new(table, enricher, self.metrics.clone(), sink, dns)
            .with_hops(hops.unwrap_or_default())
            .with_routed(routed.unwrap_or_default(), gateway);
        let verbosity = Verbosity { always: self.opts.verbose, watchers: self.watchers.clone() };
        let kernel = &mut self.kernel;
        Pipeline::new(events, capture, control, verbosity, processor, self.opts.stall_reader)?
            .run(shutdown, || kernel.stop())
            .await?;
        drop(prober);
        Ok(())
    }
}

/// The ranges the kernel calls private (flows to anywhere else are events
/// while a chain is configured): loopback, link-local, RFC 1918, CGNAT,
/// ULA, and `--private-ranges`.
fn write_private_nets(ebpf: &mut aya::Ebpf, opts: &SessionOptions) -> Result<(), SessionError> {
    let map = ebpf.map_mut(MAP_PRIVATE_NETS).ok_or(SessionError::MapMissing(MAP_PRIVATE_NETS))?;
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(map)
        .map_err(|source| SessionError::Map { what: MAP_PRIVATE_NETS, source })?;
    let builtin_v6 = ["::1/128", "fe80::/10", "fc00::/7"];
    let ranges = BUILTIN_PRIVATE_V4
        .iter()
        .map(|&(net, len)| format!("{}/{len}", std::net::Ipv4Addr::from(net)))
        .chain(builtin_v6.iter().map(|s| s.to_string()))
        .filter_map(|s| s.parse::<Cidr>().ok())
        .chain(opts.private_ranges.iter().copied())
        .take(PRIVATE_NETS_MAX as usize);
    for c in ranges {
        let (bytes, len) = c.v6_key();
        trie.insert(&Key::new(u32::from(len), bytes), 1, 0)
            .map_err(|source| SessionError::Map { what: MAP_PRIVATE_NETS, source })?;
    }
    Ok(())
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
