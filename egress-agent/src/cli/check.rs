//! `egress-agent check`: what this kernel offers and what really attaches.
use clap::Args;
use serde::Serialize;

use crate::{
    cli::ProbeArgs,
    offsets::{self, Btf, TraceFs},
    probes::{self, ProgramStatus},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = CheckFormat::Table)]
    pub output: CheckFormat,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Item {
    pub check: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub ok: bool,
    pub checks: Vec<Item>,
    pub programs: Vec<ProgramStatus>,
}

fn item(check: &str, status: Status, detail: impl Into<String>) -> Item {
    Item { check: check.to_string(), status, detail: detail.into() }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Kubernetes connectivity as `run` would use it (`--kube`).
async fn kube_item(args: &ProbeArgs) -> Option<Item> {
    use crate::cli::Toggle;
    let auto_on = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || args.kubeconfig.is_some();
    let wanted = match args.kube {
        Toggle::False => return Some(item("kubernetes", Status::Ok, "off (--kube=false)")),
        Toggle::Auto if !auto_on => return Some(item("kubernetes", Status::Ok, "off: not in a cluster and no --kubeconfig (pods named from cgroups only)")),
        Toggle::True => Status::Fail,
        Toggle::Auto => Status::Warn,
    };
    let opts = crate::kube::KubeOptions { node_name: args.node_name.clone(), kubeconfig: args.kubeconfig.clone() };
    Some(match crate::kube::KubeIndex::probe(&opts).await {
        Ok(detail) => item("kubernetes", Status::Ok, detail),
        Err(e) => item("kubernetes", wanted, format!("{e:#}")),
    })
}

pub async fn report(args: &CheckArgs) -> Report {
    let mut checks = Vec::new();
    let caps = probes::effective_caps();
    let missing = probes::missing_caps(caps);
    checks.push(if missing.is_empty() {
        item("privileges", Status::Ok, format!("CapEff {caps:#x}"))
    } else {
        item("privileges", Status::Fail, format!("missing {}", missing.join(", ")))
    });
    checks.push(if probes::object_present() {
        item("ebpf object", Status::Ok, "embedded")
    } else {
        item("ebpf object", Status::Fail, "built with AYA_BUILD_SKIP: no kernel programs")
    });
    let tracefs = TraceFs::locate();
    match &tracefs {
        Ok(t) => checks.push(item("tracefs", Status::Ok, t.root.display().to_string())),
        Err(e) => checks.push(item("tracefs", Status::Fail, e.to_string())),
    }
    let btf = Btf::from_sys_fs();
    // The optional conntrack kprobe: where its layout comes from (when it
    // does not resolve, its program line says why it is skipped).
    if let (Ok(t), Ok(b)) = (&tracefs, &btf)
        && let Ok(plan) = offsets::conntrack::plan(&t.root, Some(b))
    {
        checks.push(item("conntrack kprobe offsets", Status::Ok, plan.describe()));
    }
    match btf {
        Ok(btf) => {
            let (k, problems) = offsets::kernel_offsets(&btf);
            checks.push(if problems.is_empty() {
                item("btf", Status::Ok, format!("sock.sk_err@{} sock_common.skc_net@{} net.ns.inum@{}", k.sock_sk_err, k.sock_skc_net, k.net_ns_inum))
            } else {
                item("btf", Status::Warn, problems.join("; "))
            });
        }
        Err(e) => checks.push(item("btf", Status::Warn, format!("{e:#}: errno falls back on tracepoint evidence, netns unknown"))),
    }
    let mut programs = Vec::new();
    let chain = match args.probe.chain() {
        Ok(c) => {
            if let Some(c) = &c {
                checks.push(item("config", Status::Ok, format!("chain of {} hops: {}", c.hops.len(), c.hops.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(" -> "))));
            }
            c
        }
        Err(e) => {
            checks.push(item("config", Status::Fail, format!("{e:#}")));
            None
        }
    };
    match probes::load(&args.probe.probe_options(chain.as_deref())) {
        Ok(p) => {
            checks.push(item("load", Status::Ok, "object loaded; ring buffer created"));
            programs = p.programs;
        }
        Err(e) => checks.push(item("load", Status::Fail, e.to_string())),
    }
    checks.extend(kube_item(&args.probe).await);
    for p in &programs {
        if !p.attached && !p.required && !p.standby {
            checks.push(item(&format!("program {}", p.program), Status::Warn, format!("skipped: {}", p.error.as_deref().unwrap_or("?"))));
        }
    }
    let ok = !checks.iter().any(|c| c.status == Status::Fail);
    Report { kernel: kernel_release(), ok, checks, programs }
}

pub async fn check(args: CheckArgs) -> anyhow::Result<bool> {
    let r = report(&args).await;
    match args.output {
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        CheckFormat::Table => {
            println!("kernel {}", r.kernel);
            println!("{:<34} {:<6} DETAIL", "CHECK", "STATUS");
            for c in &r.checks {
                println!("{:<34} {:<6} {}", c.check, status(c.status), c.detail);
            }
            println!();
            println!("{:<22} {:<42} {:<9} {:<11} ROLE / WHY NOT", "PROGRAM", "HOOK", "ATTACHED", "INSNS");
            for p in &r.programs {
                let why = match p.error.as_deref() {
                    None => p.role.to_string(),
                    Some(e) if p.standby => format!("{e} (role: {})", p.role),
                    Some(e) => format!("{e} (lost: {})", p.role),
                };
                let attached = if p.attached { "yes" } else if p.standby { "standby" } else { "no" };
                println!("{:<22} {:<42} {:<9} {:<11} {}", p.program, p.hook, attached, insns(p), why);
            }
            println!();
            println!("{}", if r.ok { "minimum set OK: the agent can run here" } else { "FAIL: the agent cannot run here" });
        }
    }
    Ok(r.ok)
}

/// Verifier-processed instructions where the kernel reports them (5.16+),
/// else the translated length marked `x`; `-` when not loaded.
fn insns(p: &ProgramStatus) -> String {
    match (p.verified_insns, p.xlated_insns) {
        (Some(v), _) => v.to_string(),
        (None, Some(x)) => format!("{x}x"),
        (None, None) => "-".to_string(),
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
    }
}
