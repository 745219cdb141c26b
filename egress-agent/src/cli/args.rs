//! Flags shared by the commands: where the API socket is, the kernel-side
//! session options (turned into plain [`SessionOptions`]), and the filters
//! and format of record output.
use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use egress_common::{DEFAULT_AGG_KEYS, DEFAULT_MAX_FLOWS, DEFAULT_RING_BYTES};

use super::{
    filter,
    print::{self, Color, Format},
};
use crate::{
    config::{Cidr, Config, ConfigError, DEFAULT_PRIVATE},
    kernel::programs::parse_optional,
    records::Record,
    session::{SessionOptions, Switch},
};

/// Exit code of `explain` (and `flows`) when there is no recent record to
/// show: distinct from 1, an error.
pub const EXIT_NO_DATA: u8 = 3;

/// Where the daemon's API socket is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The agent's local API socket (unix, root-only).
    #[arg(long, env = "EGRESS_API_SOCKET", default_value = crate::api::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
}

/// Kernel-side options shared by `run` and `watch`.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Size in bytes of each ring buffer, the flow events' and the captures'
    /// (a power of two, at least the page size).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,
    /// Capacity of the in-kernel socket table (active opens in flight: a
    /// direct-mapped part of the largest power of two up to half, an LRU
    /// part for the rest) and of the agent's table of proxy flows waiting
    /// for their answer.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_flows: u32,
    /// Owner × destination pairs the kernel counts clean flows under between
    /// two reads (once a second); beyond, clean flows are sent as events.
    #[arg(long, default_value_t = DEFAULT_AGG_KEYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub agg_keys: u32,
    /// DNS messages a cgroup (a pod, a unit) may have captured per second;
    /// beyond its burst, the rest of its messages are counted, not captured
    /// (`egress_events_lost_total{stage="dns_budget"}`). 0: no budget.
    #[arg(long, default_value_t = 200)]
    pub dns_rate: u32,
    /// The budget's burst (messages).
    #[arg(long, default_value_t = 400)]
    pub dns_burst: u32,
    /// Retransmits at or above which a flow is `degraded` (0 disables).
    #[arg(long, default_value_t = 1)]
    pub degraded_retransmits: u32,
    /// cgroup v2 mount to resolve cgroup ids in (default: the one in
    /// /proc/self/mountinfo). In a container, mount the host's hierarchy.
    #[arg(long, env = "EGRESS_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,
    /// Comma-separated CIDRs classified `private` (cluster-external private
    /// destinations such as a proxy VM).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_PRIVATE)]
    pub private_ranges: Vec<Cidr>,
    /// Remote ports of HTTP proxies (comma-separated, at most 8): the first
    /// payload bytes of flows to them are read (CONNECT target, status).
    /// Added to the ports of the chain configuration's hops.
    #[arg(long, value_delimiter = ',')]
    pub proxy_ports: Vec<u16>,
    /// Agent configuration (YAML): the proxy chain, destination allow-list,
    /// bypass policy. See deploy/kubernetes/base/config.yaml.
    #[arg(long, env = "EGRESS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kubernetes metadata (pods of this node, services, endpointslices,
    /// nodes): auto = on in a cluster or with --kubeconfig.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub kube: Toggle,
    /// This node's name: only its pods are watched.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// kubeconfig for the API server (default: in-cluster, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Follow conntrack (NAT) over ctnetlink: auto = in the --conntrack-netns
    /// namespaces, else the agent's own if it may.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub conntrack: Toggle,
    /// Network namespace to follow conntrack in (repeatable), e.g.
    /// /run/netns/router or /proc/1/ns/net.
    #[arg(long)]
    pub conntrack_netns: Vec<PathBuf>,
    /// Optional kernel programs not to attach (comma-separated), trading
    /// what they add for their cost: e.g. `sys_enter_connect,sys_enter_getsockopt,sys_exit_getsockopt`
    /// (syscall tracepoints put every syscall of every task on the kernel's
    /// traced path). `check` lists each program's role; inet_sock_set_state
    /// is required.
    #[arg(long, value_delimiter = ',', value_parser = parse_optional)]
    pub disable_programs: Vec<String>,
    /// Read the destination the application passed to connect()
    /// (`sys_enter_connect`): true, false, or auto = only when a cgroup
    /// sock_addr program is loaded (socket-level load balancing such as
    /// Cilium's rewrites connect() before the socket sees it). A syscall
    /// tracepoint puts every syscall of every task on the kernel's traced path.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub connect_intent: Toggle,
    /// Test hook: leave the ring unread for this many milliseconds after start.
    #[arg(long, hide = true)]
    pub stall_reader_ms: Option<u64>,
    /// Test hook: the kernel programs act as if the kernel had skipped the
    /// set_state program's run for every ESTABLISHED (as it does for a
    /// softirq's state change nested in the program's run in a task), so
    /// that the paths taking such a skip up are tested deterministically.
    #[arg(long, hide = true)]
    pub skip_established: bool,
}

impl SessionArgs {
    /// The configuration from --config, if any (a bad file is an error, not ignored).
    pub fn load_config(&self) -> Result<Option<Arc<Config>>, ConfigError> {
        self.config.as_deref().map(|p| Config::load(p).map(Arc::new)).transpose()
    }

    /// The session these flags ask for, with the configuration loaded;
    /// `verbose`: every flow as an event (a log or a live view of all flows).
    pub fn options(&self, config: Option<Arc<Config>>, verbose: bool) -> SessionOptions {
        SessionOptions {
            ring_bytes: self.ring_bytes,
            max_flows: self.max_flows,
            agg_keys: self.agg_keys,
            degraded_retransmits: self.degraded_retransmits,
            verbose,
            dns_rate: self.dns_rate,
            dns_burst: self.dns_burst,
            cgroup_root: self.cgroup_root.clone(),
            private_ranges: self.private_ranges.clone(),
            proxy_ports: self.proxy_ports.clone(),
            config,
            kube: self.kube.into(),
            node_name: self.node_name.clone(),
            kubeconfig: self.kubeconfig.clone(),
            conntrack: self.conntrack.into(),
            conntrack_netns: self.conntrack_netns.clone(),
            disabled_programs: self.disable_programs.clone(),
            connect_intent: self.connect_intent.into(),
            stall_reader: self.stall_reader_ms.map(Duration::from_millis),
            skip_established: self.skip_established,
        }
    }
}

/// On, off, or decided from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    True,
    False,
}

impl From<Toggle> for Switch {
    fn from(t: Toggle) -> Self {
        match t {
            Toggle::Auto => Self::Auto,
            Toggle::True => Self::On,
            Toggle::False => Self::Off,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingBytesError {
    #[error("{0}")]
    NotANumber(std::num::ParseIntError),
    #[error("{0} is not a power of two ≥ 4096")]
    Size(u32),
}

pub(super) fn parse_ring_bytes(s: &str) -> Result<u32, RingBytesError> {
    let v: u32 = s.parse().map_err(RingBytesError::NotANumber)?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(RingBytesError::Size(v));
    }
    Ok(v)
}

/// Filters and format for record output.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub flows: filter::FlowFilter,
    /// Print stitched chain records (one per request through the proxy
    /// chain: who, target, VIA the hops, the hop that broke) instead of flows.
    #[arg(long)]
    pub chains: bool,
    /// Print DNS lookups (name, rcode, server, latency, the hop it concerns)
    /// instead of flows.
    #[arg(long, conflicts_with = "chains")]
    pub dns: bool,
    /// Output format. JSON field names are stable and snake_case; every
    /// object has `record`: `flow` or `chain`.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Colour the verdict column.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

impl FilterArgs {
    pub fn printer(&self, snapshot: bool) -> print::Printer {
        print::Printer::new(self.output, self.kind(), self.color.enabled(), snapshot)
    }

    /// Whether `r` is of the kind of records asked for.
    pub fn shows(&self, r: &Record) -> bool {
        print::Kind::of(r) == self.kind()
    }

    pub fn kind(&self) -> print::Kind {
        if self.chains {
            print::Kind::Chains
        } else if self.dns {
            print::Kind::Dns
        } else {
            print::Kind::Flows
        }
    }
}
